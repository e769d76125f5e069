"""`Kandinsky21`: the public facade. Each method checks its arguments and runs one mode."""

from __future__ import annotations

import numbers
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch

from kandinsky import validation as check
from kandinsky.defaults import SETTINGS, GenerationDefaults, checked
from kandinsky.engine import ImageNoise, warn_fp32_fallback
from kandinsky.errors import InvalidInput
from kandinsky.imaging import MaskInput, check_generation_size, mask_to_keep, to_rgb_pil
from kandinsky.loading import Components, load
from kandinsky.modes import img2img as img2img_mode
from kandinsky.modes import inpaint as inpaint_mode
from kandinsky.modes import mix as mix_mode
from kandinsky.modes import outpaint as outpaint_mode
from kandinsky.modes import text2img as text2img_mode
from kandinsky.modes import variations as variations_mode
from kandinsky.modes.common import (
    DecoderOptions,
    Job,
    ModeOutput,
    PriorOptions,
    negative_embeds,
    prior_embeds,
)
from kandinsky.results import GenerationResult

ProgressCallback = Callable[[str, int, int], None]  # (stage "prior" | "decoder", step, total)
OUTPUT_TYPES = ("pil", "np", "pt", "latent")
DECODER_COMPONENTS = ("unet", "movq", "text_encoder", "tokenizer")
PRIOR_COMPONENTS = ("prior", "clip_text", "clip_tokenizer", "clip_vision")


class Kandinsky21:
    """Every mode of Kandinsky 2.1 over loaded components.

    >>> pipe = Kandinsky21.from_pretrained("kandinsky-community/kandinsky-2-1", device="cuda", dtype="fp16")
    >>> pipe.text2img("a red cat, 4k photo", seed=0).image.save("cat.png")
    """

    def __init__(
        self, parts: Components, model_id: str = "", load_options: dict[str, Any] | None = None
    ):
        self.parts = parts
        self.model_id = model_id
        self._load_options = load_options or {}
        self._warned_fp32 = False
        self._loras: dict[
            str, float
        ] = {}  # adapter path → scale, recorded in every image's parameters

    @classmethod
    def from_pretrained(
        cls,
        source: str
        | os.PathLike[str]
        | Sequence[str | os.PathLike[str]] = "kandinsky-community/kandinsky-2-1",
        *,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "fp32",
        inpainting: bool = False,
        progress: Callable[[str, int, int], None] | None = None,
        **load_options: Any,
    ) -> Kandinsky21:
        """Load the networks every mode needs; the inpainting UNet loads on first use unless `inpainting`."""
        components = [*PRIOR_COMPONENTS, *DECODER_COMPONENTS] + (
            ["inpaint_unet"] if inpainting else []
        )
        options = {"device": device, "dtype": dtype, **load_options}
        parts = load(source, components=components, progress=progress, **options)
        model_id = (
            str(source) if isinstance(source, str | os.PathLike) else ",".join(map(str, source))
        )
        return cls(parts, model_id, {"source": source, **options})

    @classmethod
    def demo(
        cls, device: str | torch.device = "cpu", dtype: str | torch.dtype = "fp32"
    ) -> Kandinsky21:
        """The small demo model shipped in the package (64×64 scenes of shapes; offline)."""
        from pathlib import Path

        weights = Path(__file__).resolve().parent / "demo" / "weights"
        return cls.from_pretrained(weights, device=device, dtype=dtype, inpainting=True)

    # ------------------------------------------------------------------ modes

    def text2img(
        self,
        prompt: str | Sequence[str],
        *,
        negative_prompt: str | Sequence[str] = "",
        negative_prior_prompt: str = "",
        num_images: int = 1,
        seed: int | Sequence[int] | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        height: int | None = None,
        width: int | None = None,
        guidance_scale: float | None = None,
        num_steps: int | None = None,
        sampler: str | None = None,
        prior_guidance_scale: float | None = None,
        prior_steps: int | None = None,
        prior_sampler: str | None = None,
        image_embeds: torch.Tensor | None = None,
        negative_image_embeds: torch.Tensor | None = None,
        latents: torch.Tensor | None = None,
        prior_latents: torch.Tensor | None = None,
        callback: ProgressCallback | None = None,
        progress: bool = False,
        output_type: str = "pil",
    ) -> GenerationResult:
        """Images from text (any language M-CLIP knows)."""
        prompts = check.prompts(prompt)
        height, width = self._size(height, width)
        job, seeds, params = self._job(locals(), prompts, num_images)
        out = text2img_mode.text2img(
            job,
            _repeat(prompts, num_images),
            image_embeds=_optional(image_embeds, self._clip_dim, "image_embeds"),
            negative_image_embeds=_optional(
                negative_image_embeds, self._clip_dim, "negative_image_embeds"
            ),
            latents=latents,
            prior_latents=self._check_prior_latents(prior_latents, len(seeds)),
        )
        return self._result("text2img", out, seeds, params, output_type)

    def mix(
        self,
        items: Sequence[Any],
        weights: Sequence[float],
        *,
        prompt: str = "",
        negative_prompt: str = "",
        negative_prior_prompt: str = "",
        num_images: int = 1,
        seed: int | Sequence[int] | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        height: int | None = None,
        width: int | None = None,
        guidance_scale: float | None = None,
        num_steps: int | None = None,
        sampler: str | None = None,
        prior_guidance_scale: float | None = None,
        prior_steps: int | None = None,
        prior_sampler: str | None = None,
        latents: torch.Tensor | None = None,
        callback: ProgressCallback | None = None,
        progress: bool = False,
        output_type: str = "pil",
    ) -> GenerationResult:
        """A weighted mixture of texts and images, e.g. ([photo, "in the style of Van Gogh"], [0.6, 0.4])."""
        if isinstance(items, str) or not isinstance(items, Sequence) or not items:
            raise InvalidInput("items must be a non-empty list of texts and images")
        checked = [item if isinstance(item, str) else _input_image(item, "items") for item in items]
        mix_weights = check.weights(weights, len(checked))
        height, width = self._size(height, width)
        job, seeds, params = self._job(locals(), [prompt], num_images)
        params["items"] = [
            item if isinstance(item, str) else f"<image {item.width}x{item.height}>"
            for item in checked
        ]
        params["weights"] = mix_weights
        out = mix_mode.mix(job, checked, mix_weights, prompt=prompt, latents=latents)
        return self._result("mix", out, seeds, params, output_type)

    def variations(
        self,
        image: Any,
        *,
        prompt: str = "",
        negative_prompt: str = "",
        negative_prior_prompt: str = "",
        num_images: int = 1,
        seed: int | Sequence[int] | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        height: int | None = None,
        width: int | None = None,
        guidance_scale: float | None = None,
        num_steps: int | None = None,
        sampler: str | None = None,
        prior_guidance_scale: float | None = None,
        prior_steps: int | None = None,
        prior_sampler: str | None = None,
        latents: torch.Tensor | None = None,
        callback: ProgressCallback | None = None,
        progress: bool = False,
        output_type: str = "pil",
    ) -> GenerationResult:
        """New images with the content and style of `image` (its exact CLIP embedding)."""
        source = _input_image(image)
        height, width = self._size(height, width)
        job, seeds, params = self._job(locals(), [prompt], num_images)
        out = variations_mode.variations(job, source, prompt=prompt, latents=latents)
        return self._result("variations", out, seeds, params, output_type)

    def img2img(
        self,
        image: Any,
        prompt: str | Sequence[str],
        *,
        strength: float = 0.7,
        strength_convention: str = "original",
        negative_prompt: str | Sequence[str] = "",
        negative_prior_prompt: str = "",
        num_images: int = 1,
        seed: int | Sequence[int] | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        height: int | None = None,
        width: int | None = None,
        guidance_scale: float | None = None,
        num_steps: int | None = None,
        sampler: str | None = None,
        prior_guidance_scale: float | None = None,
        prior_steps: int | None = None,
        prior_sampler: str | None = None,
        image_embeds: torch.Tensor | None = None,
        negative_image_embeds: torch.Tensor | None = None,
        callback: ProgressCallback | None = None,
        progress: bool = False,
        output_type: str = "pil",
    ) -> GenerationResult:
        """Re-imagine `image` towards `prompt`.

        strength_convention="original" (default): strength is the share of the schedule that
        is SKIPPED — 0.7 keeps a lot of the input, 0.2 changes much. "diffusers": the share
        that is RUN — 0.3 changes a little, 0.8 much.
        """
        source = _input_image(image)
        height, width = _default_size(source, height, width)
        check.unit_interval(strength, "strength")
        check.choice(strength_convention, "strength_convention", ("original", "diffusers"))
        prompts = check.prompts(prompt)
        job, seeds, params = self._job(locals(), prompts, num_images)
        out = img2img_mode.img2img(
            job,
            source,
            _repeat(prompts, num_images),
            strength,
            strength_convention,
            image_embeds=_optional(image_embeds, self._clip_dim, "image_embeds"),
            negative_image_embeds=_optional(
                negative_image_embeds, self._clip_dim, "negative_image_embeds"
            ),
        )
        return self._result("img2img", out, seeds, params, output_type)

    def edit(
        self,
        image: Any,
        instruction: str,
        *,
        text_weight: float = 0.5,
        strength: float = 0.5,
        seed: int | Sequence[int] | None = None,
        num_images: int = 1,
        prior_steps: int | None = None,
        prior_guidance_scale: float | None = None,
        prior_sampler: str | None = None,
        **options: Any,
    ) -> GenerationResult:
        """Text-guided editing: the image's CLIP embedding mixed with the prior's embedding of
        `instruction` (weights 1 − text_weight and text_weight), then img2img from the image
        towards that mixture (strength as in `img2img`, original convention by default)."""
        check.unit_interval(text_weight, "text_weight")
        source = _input_image(image)
        instruction = check.prompts(instruction, "instruction")[0]
        seeds = check.seeds(seed, num_images)
        job, _, _ = self._job(
            {
                "prior_steps": prior_steps,
                "prior_guidance_scale": prior_guidance_scale,
                "prior_sampler": prior_sampler,
                "seed": seeds,
            },
            [instruction],
            num_images,
        )
        mixed = mix_mode.mixed_embeds(job, [source, instruction], [1.0 - text_weight, text_weight])
        result = self.img2img(
            source,
            instruction,
            strength=strength,
            seed=seeds,
            num_images=num_images,
            image_embeds=mixed,
            negative_image_embeds=negative_embeds(job),
            prior_steps=prior_steps,
            prior_guidance_scale=prior_guidance_scale,
            prior_sampler=prior_sampler,
            **options,
        )
        for params in result.params:
            params.update(mode="edit", text_weight=text_weight)
        return result

    def inpaint(
        self,
        image: Any,
        mask: MaskInput,
        prompt: str | Sequence[str],
        *,
        mask_polarity: str = "white_repaints",
        paste_back: bool = True,
        negative_prompt: str | Sequence[str] = "",
        negative_prior_prompt: str = "",
        num_images: int = 1,
        seed: int | Sequence[int] | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        height: int | None = None,
        width: int | None = None,
        guidance_scale: float | None = None,
        num_steps: int | None = None,
        sampler: str | None = None,
        prior_guidance_scale: float | None = None,
        prior_steps: int | None = None,
        prior_sampler: str | None = None,
        image_embeds: torch.Tensor | None = None,
        negative_image_embeds: torch.Tensor | None = None,
        latents: torch.Tensor | None = None,
        callback: ProgressCallback | None = None,
        progress: bool = False,
        output_type: str = "pil",
    ) -> GenerationResult:
        """Repaint the white part of `mask` (or, with mask_polarity="original", its 0 part)."""
        source = _input_image(image)
        height, width = _default_size(source, height, width)
        prompts = check.prompts(prompt)
        keep = self._keep_mask(mask, source, height, width, mask_polarity)
        self._ensure_inpainting()
        job, seeds, params = self._job(locals(), prompts, num_images)
        params["mask_polarity"] = mask_polarity
        out = inpaint_mode.inpaint(
            job,
            source,
            keep,
            _repeat(prompts, num_images),
            paste_back=paste_back,
            image_embeds=_optional(image_embeds, self._clip_dim, "image_embeds"),
            negative_image_embeds=_optional(
                negative_image_embeds, self._clip_dim, "negative_image_embeds"
            ),
            latents=latents,
        )
        return self._result("inpaint", out, seeds, params, output_type)

    def outpaint(
        self,
        image: Any,
        prompt: str | Sequence[str],
        *,
        extend: tuple[int, int, int, int] | None = None,
        size: tuple[int, int] | None = None,
        max_step: int = 256,
        overlap: int = 16,
        negative_prompt: str | Sequence[str] = "",
        negative_prior_prompt: str = "",
        num_images: int = 1,
        seed: int | Sequence[int] | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        guidance_scale: float | None = None,
        num_steps: int | None = None,
        sampler: str | None = None,
        prior_guidance_scale: float | None = None,
        prior_steps: int | None = None,
        prior_sampler: str | None = None,
        callback: ProgressCallback | None = None,
        progress: bool = False,
        output_type: str = "pil",
    ) -> GenerationResult:
        """Grow the canvas by `extend=(left, top, right, bottom)` pixels, or to `size=(width, height)`
        around the centred image; large extensions run in passes of at most `max_step` pixels."""
        source = _input_image(image)
        grow = canvas_extension(source, extend, size)
        check.positive_int(max_step, "max_step", 4096)
        if (
            isinstance(overlap, bool)
            or not isinstance(overlap, numbers.Integral)
            or not 0 <= overlap <= 64
        ):
            raise InvalidInput(
                f"overlap must be an integer between 0 and 64 pixels, got {overlap!r}"
            )
        prompts = check.prompts(prompt)
        height, width = source.height + grow[1] + grow[3], source.width + grow[0] + grow[2]
        self._ensure_inpainting()
        job, seeds, params = self._job(locals(), prompts, num_images)
        params["extend"] = list(grow)
        out = outpaint_mode.outpaint(
            job, source, _repeat(prompts, num_images), grow, max_step=max_step, overlap=overlap
        )
        return self._result("outpaint", out, seeds, params, output_type)

    def prior(
        self,
        prompt: str | Sequence[str],
        *,
        negative_prompt: str | Sequence[str] = "",
        negative_prior_prompt: str = "",
        num_images: int = 1,
        seed: int | Sequence[int] | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        prior_guidance_scale: float | None = None,
        prior_steps: int | None = None,
        prior_sampler: str | None = None,
        prior_latents: torch.Tensor | None = None,
        callback: ProgressCallback | None = None,
        progress: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(image_embeds, negative_image_embeds), each (B, 768): reuse them in any decoder mode."""
        prompts = check.prompts(prompt)
        job, _, _ = self._job(locals(), prompts, num_images)
        positive = prior_embeds(
            job,
            _repeat(prompts, num_images),
            self._check_prior_latents(prior_latents, len(prompts) * num_images),
        )
        return positive, negative_embeds(job)

    # ------------------------------------------------------------------ LoRA

    def load_lora(self, path: str | os.PathLike[str], scale: float = 1.0) -> None:
        """Apply a LoRA adapter (from `kandinsky train lora`) to the network it was trained for;
        `scale` weighs it (0 = the base model exactly). A second call replaces that network's adapter."""
        from kandinsky.training.lora import apply_lora

        check.scale(scale, "scale", -10.0, 10.0)
        try:
            apply_lora(self.parts, path, float(scale))
        except ImportError as e:
            raise InvalidInput(
                f"LoRA adapters need peft ({e.name} is missing): pip install 'kandinsky[train]'"
            ) from e
        self._loras[str(path)] = float(scale)

    def unload_lora(self) -> None:
        """Take every LoRA adapter off: the networks compute exactly what they did before."""
        from kandinsky.training.lora import remove_all_lora

        remove_all_lora(self.parts)
        self._loras.clear()

    # ------------------------------------------------------------------ plumbing

    @property
    def native_size(self) -> tuple[int, int]:
        """(height, width) the decoder was trained at: the default output size (512×512 for
        Kandinsky 2.1, 64×64 for the demo model)."""
        config = self.parts.config
        side = config.unet.sample_size * config.movq.downscale
        return side, side

    @property
    def defaults(self) -> GenerationDefaults:
        """The sampling settings a mode uses where its argument is None: the model folder's
        `generation_defaults.json` over the original's (`kandinsky.defaults`)."""
        return self.parts.defaults

    def _size(self, height: int | None, width: int | None) -> tuple[int, int]:
        """Missing sides from `native_size`."""
        native_h, native_w = self.native_size
        return (native_h if height is None else height), (native_w if width is None else width)

    def _job(
        self, args: dict[str, Any], prompts: list[str], num_images: int
    ) -> tuple[Job, list[int], dict[str, Any]]:
        """Check the options every mode shares and build the per-call job and parameter record."""
        check.positive_int(num_images, "num_images", check.MAX_IMAGES)
        count = len(prompts) * num_images
        if count > check.MAX_IMAGES:
            raise InvalidInput(f"{count} images asked in one call; at most {check.MAX_IMAGES}")
        height, width = args.get("height", 512), args.get("width", 512)
        if "height" in args:
            check_generation_size(height, width)
        # each sampling setting the call left None is the model's own; all checked alike
        setting = checked(
            {
                name: getattr(self.defaults, name) if args.get(name) is None else args[name]
                for name in SETTINGS
            }
        )
        prior = PriorOptions(
            guidance_scale=setting["prior_guidance_scale"],
            num_steps=setting["prior_steps"],
            sampler=setting["prior_sampler"],
            negative_prompt=_text(args.get("negative_prior_prompt", ""), "negative_prior_prompt"),
        )
        decoder = DecoderOptions(
            guidance_scale=setting["guidance_scale"],
            num_steps=setting["num_steps"],
            sampler=setting["sampler"],
            height=height,
            width=width,
        )
        negatives = _repeat(
            check.broadcast(args.get("negative_prompt", ""), len(prompts), "negative_prompt"),
            num_images,
        )
        if args.get("output_type", "pil") not in OUTPUT_TYPES:
            raise InvalidInput(
                f"output_type {args['output_type']!r} is unknown; choose one of {', '.join(OUTPUT_TYPES)}"
            )
        device, dtype = self._device_dtype()
        generator = args.get("generator")
        if generator is not None:
            gens = check.generators(generator, count)
            seeds = [g.initial_seed() for g in gens]
        else:
            seeds = check.seeds(args.get("seed"), count)
            gens = [torch.Generator().manual_seed(s) for s in seeds]
        job = Job(
            parts=self.parts,
            noise=ImageNoise(gens, device, torch.float32 if dtype != torch.float64 else dtype),
            prior=prior,
            decoder=decoder,
            negative_prompts=negatives,
            prior_callback=_stage_callback(
                "prior", args.get("callback"), args.get("progress", False)
            ),
            decoder_callback=_stage_callback(
                "decoder", args.get("callback"), args.get("progress", False)
            ),
        )
        params: dict[str, Any] = {
            "prompt": prompts[0],
            "batch_prompts": prompts,
            "num_images": num_images,
            "negative_prompt": args.get("negative_prompt", ""),
            "negative_prior_prompt": prior.negative_prompt,
            "height": decoder.height,
            "width": decoder.width,
            "guidance_scale": decoder.guidance_scale,
            "num_steps": decoder.num_steps,
            "sampler": decoder.sampler,
            "prior_guidance_scale": prior.guidance_scale,
            "prior_steps": prior.num_steps,
            "prior_sampler": prior.sampler,
            "model": self.model_id,
        }
        if self._loras:
            params["loras"] = [[path, scale] for path, scale in self._loras.items()]
        for key in ("strength", "strength_convention"):
            if key in args:
                params[key] = args[key]
        return job, seeds, params

    def _result(
        self, mode: str, out: ModeOutput, seeds: list[int], params: dict[str, Any], output_type: str
    ) -> GenerationResult:
        if out.redone_in_fp32 and not self._warned_fp32:
            warn_fp32_fallback()
            self._warned_fp32 = True
        from kandinsky import __version__
        from kandinsky.imaging import tensor_to_pil

        pixels = ((out.images.clamp(-1, 1) + 1) / 2).float().cpu()
        images = tensor_to_pil(out.images) if output_type != "latent" else []
        # Each image records its own prompt and seed, and the batch it was made in: batched math
        # rounds differently from a batch of one, so exact reproduction reruns the same batch.
        images_per_prompt = params["num_images"]
        per_image = [
            {
                **params,
                "prompt": params["batch_prompts"][i // images_per_prompt],
                "mode": mode,
                "seed": s,
                "batch_seeds": seeds,
                "batch_index": i,
                "version": __version__,
            }
            for i, s in enumerate(seeds)
        ]
        return GenerationResult(
            images=images,
            seeds=seeds,
            params=per_image,
            pixels=pixels,
            latents=out.latents,
            image_embeds=out.image_embeds,
            negative_image_embeds=out.negative_image_embeds,
            extras=out.extras,
        )

    @property
    def _clip_dim(self) -> int:
        return self.parts.config.prior.clip_dim

    def _check_prior_latents(self, latents: torch.Tensor | None, count: int) -> torch.Tensor | None:
        shape = (count, self._clip_dim)
        if latents is not None and (
            not isinstance(latents, torch.Tensor) or tuple(latents.shape) != shape
        ):
            got = (
                tuple(latents.shape)
                if isinstance(latents, torch.Tensor)
                else type(latents).__name__
            )
            raise InvalidInput(f"prior_latents must be a tensor of shape {shape}; got {got}")
        return latents

    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        param = (
            next(self.parts.unet.parameters()) if self.parts.unet is not None else torch.empty(0)
        )
        return param.device, param.dtype

    def _keep_mask(
        self, mask: MaskInput, source: Any, height: int, width: int, polarity: str
    ) -> torch.Tensor:
        """The mask must match the image: PIL masks of another size are refused, not stretched."""
        from PIL import Image

        if isinstance(mask, Image.Image) and mask.size != source.size:
            raise InvalidInput(
                f"mask is {mask.width}×{mask.height} but the image is {source.width}×{source.height}; "
                "they must have the same size"
            )
        if not isinstance(mask, Image.Image):
            keep = mask_to_keep(mask, source.height, source.width, polarity=polarity)
            if (source.height, source.width) == (height, width):
                return keep
            return torch.nn.functional.interpolate(keep, size=(height, width), mode="nearest")
        return mask_to_keep(mask, height, width, polarity=polarity)

    def _ensure_inpainting(self) -> None:
        if self.parts.inpaint_unet is not None:
            return
        if not self._load_options:
            from kandinsky.errors import MissingWeights

            raise MissingWeights(
                "inpainting needs the inpainting UNet; load it with components including 'inpaint_unet'"
            )
        extra = load(
            self._load_options["source"],
            components=["inpaint_unet"],
            **{k: v for k, v in self._load_options.items() if k != "source"},
        )
        self.parts.inpaint_unet = extra.inpaint_unet
        self.parts.config = replace(self.parts.config, inpaint_unet=extra.config.inpaint_unet)


MIN_INPUT_SIDE = 8


def _input_image(image: Any, name: str = "image") -> Any:
    """Any accepted image as RGB PIL; tiny images (thumbnails, 1×1 placeholders) are refused."""
    pil = to_rgb_pil(image)
    if min(pil.size) < MIN_INPUT_SIDE:
        raise InvalidInput(
            f"{name} is {pil.width}×{pil.height} pixels; it must be at least {MIN_INPUT_SIDE}×{MIN_INPUT_SIDE}"
        )
    return pil


def _repeat(items: list[str], times: int) -> list[str]:
    """Prompt i repeated for each of its images: [a, a, b, b] for times=2."""
    return [item for item in items for _ in range(times)]


def _optional(
    embeds: torch.Tensor | None, width: int | None = None, name: str = "image_embeds"
) -> torch.Tensor | None:
    """Given embeddings: a tensor (D,) or (N, D) whose D is the model's CLIP width."""
    if embeds is None:
        return None
    if not isinstance(embeds, torch.Tensor):
        raise InvalidInput(f"{name} must be a torch tensor, got {type(embeds).__name__}")
    if width is not None and (embeds.ndim not in (1, 2) or embeds.shape[-1] != width):
        raise InvalidInput(
            f"{name} has shape {tuple(embeds.shape)}; this model's embeddings are (N, {width})"
        )
    if not torch.isfinite(embeds).all():
        raise InvalidInput(f"{name} contains NaN or infinite values")
    return embeds


def _text(value: str, name: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string, got {type(value).__name__}")
    return value


def _default_size(image: Any, height: int | None, width: int | None) -> tuple[int, int]:
    """Default to the input image's size rounded down to a multiple of 8."""
    height = height if height is not None else max(64, image.height // 8 * 8)
    width = width if width is not None else max(64, image.width // 8 * 8)
    check_generation_size(height, width)
    return height, width


def canvas_extension(
    image: Any, extend: Sequence[int] | None, size: Sequence[int] | None
) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) growth for outpainting, the canvas rounded up to multiples of 8."""
    if (extend is None) == (size is None):
        raise InvalidInput(
            "give exactly one of extend=(left, top, right, bottom) or size=(width, height)"
        )
    if size is not None:
        size = _pixel_counts(size, 2, "size", "(width, height)")
        if size[0] < image.width or size[1] < image.height:
            raise InvalidInput(
                f"size {size} must be (width, height) at least the image's {image.width}×{image.height}"
            )
        dx, dy = size[0] - image.width, size[1] - image.height
        extend = (dx // 2, dy // 2, dx - dx // 2, dy - dy // 2)
    extend = _pixel_counts(extend, 4, "extend", "(left, top, right, bottom)")
    if not any(extend):
        raise InvalidInput("extend is all zeros; nothing to outpaint")
    left, top, right, bottom = extend
    # round the canvas up to a multiple of 8 on the right/bottom
    right += (-(image.width + left + right)) % 8
    bottom += (-(image.height + top + bottom)) % 8
    check_generation_size(image.height + top + bottom, image.width + left + right)
    return left, top, right, bottom


def _pixel_counts(values: Any, count: int, name: str, layout: str) -> tuple[int, ...]:
    """`count` non-negative integers (numpy integers welcome)."""
    if isinstance(values, str) or not isinstance(values, Sequence) or len(values) != count:
        raise InvalidInput(
            f"{name} must be {count} non-negative pixel counts {layout}, got {values!r}"
        )
    if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0 for v in values):
        raise InvalidInput(
            f"{name} must be {count} non-negative pixel counts {layout}, got {values!r}"
        )
    return tuple(int(v) for v in values)


def _stage_callback(stage: str, callback: ProgressCallback | None, progress: bool):
    """One per-step hook per stage: the user's callback and/or a tqdm bar."""
    if callback is None and not progress:
        return None
    bar = None

    def hook(step: int, total: int, _x: torch.Tensor) -> None:
        nonlocal bar
        if progress:
            if bar is None:
                from tqdm.auto import tqdm

                bar = tqdm(total=total, desc=stage, leave=False)
            bar.update(1)
            if step + 1 >= total:
                bar.close()
        if callback is not None:
            callback(stage, step, total)

    return hook
