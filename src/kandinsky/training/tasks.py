"""What each network brings to training: its networks, its loss, its samples, its export.

`make_task(name, cfg)` returns a `Task` (see `training.loop`) for "prior", "decoder",
"inpaint", "movq" or "lora". Each implements the original recipe by default (reference §7):

- decoder: image → frozen MoVQ → x0 latents; CLIP image embedding (dropped with p 0.1 to the
  zero-image embedding, by zeroing the normalized CLIP input as the original dataset does);
  M-CLIP text (dropped with p 0.5 to ""); t uniform over 1000; loss mse(eps) + vb; ResBlock
  weights frozen (freeze_resblocks, as `config_unclip_2_1.yaml`).
- inpaint: as decoder, plus a random mask per image at latent resolution; the 9-channel
  input is [x_t, x0 · keep, keep] with keep = 1 − repaint (the inference convention, see
  `training.masks` for the original's inverted polarity).
- prior: target = CLIP image embedding normalized with the prior's clip_mean/clip_std;
  CLIP text after ln_final (inference convention) dropped with p 0.1 to ""; cosine schedule;
  the prior predicts x0; MSE.
- movq: reconstruction through the codebook: L1 + VQ loss (+ optional perceptual term),
  and with disc_weight > 0 a PatchGAN adversary from disc_start on (hinge loss, VQGAN's
  adaptive weight); the loop trains it with its own optimizer (`adversary()`).
- lora: LoRA adapters on the decoder's (or the prior's) attention; everything else frozen.

Knobs come from `cfg.task_options` (see `TaskOptions`). `cfg.model` is a weights folder or
repo id, or "scratch:tiny" / "scratch:full" (the trained network randomly initialised; the
frozen encoders random too for tiny, loaded from task_options["encoders"] for full).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from kandinsky import engine
from kandinsky.config import KANDINSKY_2_1, TINY, ModelConfig
from kandinsky.diffusion.schedules import Schedule, decoder_schedule, prior_schedule
from kandinsky.errors import InvalidInput, KandinskyError
from kandinsky.loading import Components, build_network, load
from kandinsky.models.clip import zero_image_embedding
from kandinsky.training import lora as lora_lib
from kandinsky.training.data import EmbeddingCache
from kandinsky.training.discriminator import PatchDiscriminator
from kandinsky.training.frozen import FrozenOutputs
from kandinsky.training.losses import (
    clip_image_embeds,
    decoder_loss,
    diffuse,
    discriminator_hinge_loss,
    movq_loss,
    pixel_loss,
    prior_loss,
)
from kandinsky.training.masks import MaskKind, check_mask_kind, random_mask

if TYPE_CHECKING:
    from kandinsky.training.config import TrainConfig

TASK_NAMES = ("prior", "decoder", "inpaint", "movq", "lora")
_SCRATCH = {"tiny": TINY, "full": KANDINSKY_2_1}


@dataclass(frozen=True)
class TaskOptions:
    """`cfg.task_options`, checked. Defaults are the original recipe."""

    drop_text_prob: float | None = None  # caption → "": decoder 0.5, prior 0.1
    drop_image_prob: float = 0.1  # decoder: CLIP image → zero-image embedding
    freeze_resblocks: bool = True  # decoder: ResBlock norm/conv/emb weights frozen
    freeze_attention: bool = False  # decoder: attention q/k/v/out frozen
    snr_gamma: float | None = None  # decoder/inpaint: Min-SNR-γ mse weighting (None = original)
    pixel_weight: float = 0.0  # decoder/inpaint: weight of losses.pixel_loss (0 = the original)
    pixel_max_t: int = 250  # decoder/inpaint: pixel loss only on samples with t below this
    pixel_samples: int = 8  # decoder/inpaint: at most this many samples per batch decoded
    # decoder/inpaint: inside the pixel loss, + clip_weight · (1 − cosine) between the frozen
    # CLIP image embeddings of the decoded x0 and of the image (weighs kind, not pixels)
    clip_weight: float = 0.0
    mask_kind: MaskKind = "any"  # inpaint: a training.masks kind, or a table kind → weight
    init_from_unet: bool = (
        False  # inpaint: start from the text2img UNet (extra input channels zero)
    )
    quantize: bool = True  # movq: reconstruct through the codebook
    vq_weight: float = 1.0
    perceptual_weights: str | None = None  # movq: TorchScript LPIPS-like module (x, y) → distance
    perceptual_weight: float = 1.0
    disc_weight: float = 0.0  # movq: hinge-GAN term; 0 = no discriminator (VQGAN used 0.8)
    disc_start: int = 0  # movq: optimizer step at which the discriminator comes in
    disc_adaptive: bool = True  # movq: VQGAN's gradient-norm balance of the GAN term
    disc_layers: int = 3  # movq: PatchGAN depth
    disc_width: int = 64  # movq: PatchGAN base width
    lora_network: str = "unet"  # lora: "unet", "inpaint_unet" or "prior"
    lora_rank: int = 4
    lora_alpha: float | None = None  # default = rank
    lora_targets: tuple[str, ...] | None = None  # default: lora.DEFAULT_TARGETS[network]
    encoders: str | None = None  # scratch models: where the frozen networks come from
    sample_steps: int = 20
    sample_prior_steps: int = 10
    sample_guidance_scale: float = 4.0

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> TaskOptions:
        data = dict(data or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInput(
                f"unknown task option(s) {unknown}; known: {', '.join(sorted(known))}"
            )
        if isinstance(data.get("lora_targets"), list | str):
            targets = data["lora_targets"]
            data["lora_targets"] = tuple(
                targets.split(",") if isinstance(targets, str) else targets
            )
        options = cls(**data)
        for name in ("drop_text_prob", "drop_image_prob"):
            value = getattr(options, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise InvalidInput(f"task option {name} must be between 0 and 1, got {value}")
        if options.snr_gamma is not None and options.snr_gamma <= 0:
            raise InvalidInput(f"task option snr_gamma must be > 0, got {options.snr_gamma}")
        if options.clip_weight < 0:
            raise InvalidInput(f"task option clip_weight must be ≥ 0, got {options.clip_weight}")
        if options.clip_weight > 0 and options.pixel_weight == 0:
            raise InvalidInput(
                "task option clip_weight is a term of the pixel loss: set pixel_weight > 0 too"
            )
        if options.pixel_weight < 0 or options.pixel_max_t < 1 or options.pixel_samples < 1:
            raise InvalidInput(
                "task options pixel_weight must be ≥ 0, pixel_max_t and pixel_samples ≥ 1"
            )
        try:
            check_mask_kind(options.mask_kind)
        except InvalidInput as error:
            raise InvalidInput(f"task option mask_kind: {error}") from None
        if options.disc_weight < 0 or options.disc_start < 0 or options.disc_layers < 1:
            raise InvalidInput(
                "task options disc_weight and disc_start must be ≥ 0 and disc_layers ≥ 1"
            )
        if options.lora_network not in lora_lib.DEFAULT_TARGETS:
            raise InvalidInput(
                f"task option lora_network is {options.lora_network!r}; "
                f"choose one of {', '.join(lora_lib.DEFAULT_TARGETS)}"
            )
        return options


# ---------------------------------------------------------------------------- modules to train


class ConditionedUNet(nn.Module):
    """The UNet with its conditioning in one forward, so DDP and autocast see a single call."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self,
        sample: torch.Tensor,
        timesteps: torch.Tensor,
        image_embeds: torch.Tensor,
        text_states: torch.Tensor,
        pooled_text: torch.Tensor,
    ) -> torch.Tensor:
        return self.unet(
            sample, timesteps, self.unet.condition(image_embeds, text_states, pooled_text)
        )


class AutoencoderRoundTrip(nn.Module):
    """images → MoVQ encode → (quantize) → decode; returns (reconstruction, VQ loss)."""

    def __init__(self, movq: nn.Module, quantize: bool) -> None:
        super().__init__()
        self.movq = movq
        self.quantize = quantize

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.quantize:
            return self.movq(images)
        latents = self.movq.encode(images)
        return self.movq.decode(latents), latents.new_zeros(())


# ---------------------------------------------------------------------------- shared plumbing


def _option(cfg: Any, name: str, default: Any) -> Any:
    return getattr(cfg, name, default)


def _frozen_dtype(cfg: Any) -> torch.dtype:
    """Frozen encoders run in the mixed-precision dtype (the original encodes in fp16)."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
        _option(cfg, "mixed_precision", "no"), torch.float32
    )


def _freeze(module: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    return module.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _random_tiny_parts(seed: int) -> Components:
    """Every TINY network (random) and the tiny test tokenizers: a run that needs no files."""
    import tempfile

    from kandinsky.testing import clip_tokenizer, random_networks, xlmr_tokenizer

    parts = Components(config=TINY, **random_networks(TINY, seed))
    parts.tokenizer = xlmr_tokenizer(TINY.text_encoder.vocab_size)
    with tempfile.TemporaryDirectory() as tmp:
        parts.clip_tokenizer = clip_tokenizer(tmp)
    return parts


def _load_parts(cfg: Any, options: TaskOptions, frozen: list[str], trainable: str) -> Components:
    """The frozen networks (and tokenizers) plus the trainable one, in fp32, on the CPU."""
    source = str(cfg.model)
    if source.startswith("scratch:"):
        size = source.split(":", 1)[1]
        if size not in _SCRATCH:
            raise InvalidInput(f"model {source!r} is unknown; use scratch:tiny or scratch:full")
        config = _SCRATCH[size]
        if options.encoders:
            parts = load(options.encoders, components=frozen, config=config)
        elif size == "tiny":
            parts = _random_tiny_parts(int(_option(cfg, "seed", 0)))
        else:
            raise InvalidInput(
                "model scratch:full trains a new network against the released encoders: set "
                "task_options.encoders to a folder or repo that holds them "
                "(e.g. kandinsky-community/kandinsky-2-1)"
            )
        parts.config = replace(parts.config, **{trainable: getattr(config, trainable)})
        with torch.random.fork_rng(devices=[]):  # a seeded init that leaves the global RNG alone
            torch.manual_seed(int(_option(cfg, "seed", 0)))
            setattr(parts, trainable, build_network(trainable, parts.config))
        return parts
    return load(source, components=[*frozen, trainable])


def save_component(
    name: str,
    module: nn.Module | None,
    config: ModelConfig,
    folder: Path,
    *,
    state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """`folder` as a one-component diffusers pipeline folder that `kandinsky.load` reads back.

    `state`: the network's full state dict when `module` holds only a shard of it.
    """
    from kandinsky.checkpoints.io import write_json
    from kandinsky.conversion import DIFFUSERS_VERSION, PIPELINES, save_network

    pipeline, sub = {
        "prior": ("kandinsky-2-1-prior", "prior"),
        "unet": ("kandinsky-2-1", "unet"),
        "inpaint_unet": ("kandinsky-2-1-inpaint", "unet"),
        "movq": ("kandinsky-2-1", "movq"),
    }[name]
    class_name, subs = PIPELINES[pipeline]
    library, cls, _ = subs[sub]
    folder = Path(folder)
    save_network(name, module, config, folder / sub, state=state)
    index = {
        "_class_name": class_name,
        "_diffusers_version": DIFFUSERS_VERSION,
        sub: [library, cls],
    }
    write_json(index, folder / "model_index.json")
    return folder


def _unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (itself otherwise)."""
    return getattr(module, "module", module)


def module_prefix(root: nn.Module, part: nn.Module) -> str:
    """The state-dict prefix of `part` inside `root` ("" when it is `root`)."""
    for name, module in root.named_modules():
        if module is part:
            return f"{name}." if name else ""
    raise ValueError("the trained network is not inside the trainable module")


def substate(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of `state` under `prefix`, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _draw_rand(n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=generator.device).cpu()


def _timesteps(n: int, schedule: Schedule, generator: torch.Generator) -> torch.Tensor:
    """Uniform over all T steps (the original's UniformSampler)."""
    return torch.randint(
        0, schedule.num_timesteps, (n,), generator=generator, device=generator.device
    ).cpu()


def _noise_like(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=torch.float32)
    return noise.to(x)


def _drop_captions(captions: list[str], prob: float, generator: torch.Generator) -> list[str]:
    drop = _draw_rand(len(captions), generator) < prob
    return ["" if d else c for c, d in zip(captions, drop.tolist(), strict=True)]


def _sample_size(cfg: Any) -> int:
    size = int(getattr(getattr(cfg, "data", None), "image_size", 64))
    return max(64, -(-size // 8) * 8)


class _Task:
    """Common parts: loading, freezing, device placement, export."""

    name = ""
    network = ""  # the component trained
    frozen: tuple[str, ...] = ()  # components the loss needs
    for_sampling: tuple[str, ...] = ()  # more components `sample` needs, loaded on first use

    def __init__(self, options: TaskOptions) -> None:
        self.options = options
        self.parts: Components | None = None
        self.module: nn.Module | None = None
        self.last_images: torch.Tensor | None = None
        self._sampling_failed = False

    # ---- Task protocol

    def setup(self, cfg: TrainConfig, accelerator: Any) -> None:
        self.cfg = cfg
        self.device = torch.device(accelerator.device)
        self.dtype = _frozen_dtype(cfg)
        self.parts = self._load(cfg)
        for name, network in self.parts.networks().items():
            if name != self.network:
                setattr(self.parts, name, _freeze(network, self.device, self.dtype))
        net = self.net.to(self.device, torch.float32).train().requires_grad_(True)
        self.configure(net)
        if _option(cfg, "gradient_checkpointing", False):
            net.gradient_checkpointing = True
        self.module = self.wrap(net)
        self.prefix = module_prefix(self.module, net)
        data = getattr(cfg, "data", None)
        cache = None
        if data is not None and data.cache_dir:
            try:
                Path(data.cache_dir).mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise InvalidInput(
                    f"data.cache_dir {data.cache_dir!r} cannot be created ({e.strerror}); "
                    "choose a writable folder or leave it unset"
                ) from e
            cache = EmbeddingCache(data.cache_dir)
        self.frozen = FrozenOutputs(cache, data, self.device)
        self._zero_embeds: torch.Tensor | None = None  # the frozen tower's, computed once

    def trainable(self) -> nn.Module:
        return self.module

    def set_trainable(self, module: nn.Module) -> None:
        self.module = module

    def save_weights(self, folder: Path, state: dict[str, torch.Tensor]) -> None:
        net_state = substate(state, self.prefix)
        save_component(self.network, None, self.parts.config, Path(folder), state=net_state)

    def sample(self, step: int, folder: Path) -> list[Path]:
        return []

    # ---- per task

    def _load(self, cfg: Any) -> Components:
        return _load_parts(cfg, self.options, list(self.frozen), self.network)

    def configure(self, net: nn.Module) -> None:
        """Freeze what the recipe keeps fixed inside the trained network."""

    def wrap(self, net: nn.Module) -> nn.Module:
        return net

    @property
    def net(self) -> nn.Module:
        """The trained network itself (never DDP-wrapped)."""
        return getattr(self.parts, self.network)

    # ---- helpers

    def _images(self, batch: dict) -> torch.Tensor:
        images = batch["image"].to(self.device, torch.float32)
        self.last_images = images[:4].detach()  # for samples; no copy per step
        return images

    def _clip_embeds(
        self, images: torch.Tensor, batch: dict, drop: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Raw CLIP image embeddings; rows in `drop` get the zero-image embedding."""

        def compute(rows: list[int]) -> dict[str, torch.Tensor]:
            return {"embeds": clip_image_embeds(self.parts, images[rows])}

        vision = self.parts.clip_vision
        embeds = self.frozen.image(vision, "embeds", batch, compute, len(images))["embeds"].float()
        if drop is not None and bool(drop.any()):  # zero pixels, as the original dataset
            if self._zero_embeds is None:
                with torch.no_grad():
                    self._zero_embeds = zero_image_embedding(vision).float()[0]
            embeds[drop.to(embeds.device)] = self._zero_embeds.to(embeds.device)
        return embeds

    def _text(
        self, network: str, encode: Callable[[Components, list[str]], Any], captions: list[str]
    ) -> dict[str, torch.Tensor]:
        """The fields of `encode(parts, captions)` (states, pooled, …), cached per caption."""

        def compute(rows: list[int]) -> dict[str, torch.Tensor]:
            return vars(encode(self.parts, [captions[i] for i in rows]))

        return self.frozen.text(getattr(self.parts, network), network, captions, compute)

    def _latents(self, images: torch.Tensor, batch: dict) -> torch.Tensor:
        """MoVQ latents of the images (the diffusion's x0)."""

        def compute(rows: list[int]) -> dict[str, torch.Tensor]:
            return {"latents": self.parts.movq.encode(images[rows].to(self.dtype))}

        movq = self.parts.movq
        return self.frozen.image(movq, "latents", batch, compute, len(images))["latents"].float()

    def _sampling_parts(self) -> Components | None:
        """The components `sample` needs, loading missing ones once; None if unavailable."""
        missing = [n for n in self.for_sampling if getattr(self.parts, n) is None]
        if missing and not self._sampling_failed:
            source = self.options.encoders or str(self.cfg.model)
            try:
                extra = load(source, components=missing, dtype=self.dtype, device=self.device)
            except (KandinskyError, OSError) as e:
                warnings.warn(f"no samples: {e}", RuntimeWarning, stacklevel=3)
                self._sampling_failed = True
                return None
            for name in missing:
                setattr(self.parts, name, getattr(extra, name))
            self.parts.config = _merge_config(self.parts.config, extra.config, missing)
        if any(getattr(self.parts, n) is None for n in self.for_sampling):
            return None
        return self.parts

    def _sample_text2img(self, step: int, folder: Path, guidance: str) -> list[Path]:
        """Render the run's sample prompts; `guidance` names the scale this network is sampled with."""
        prompts = list(_option(self.cfg, "sample_prompts", []) or [])
        if not prompts:
            return []
        size, o = _sample_size(self.cfg), self.options
        return self._render(
            folder,
            step,
            lambda pipe: pipe.text2img(
                prompts,
                seed=int(self.cfg.seed),
                height=size,
                width=size,
                num_steps=o.sample_steps,
                prior_steps=o.sample_prior_steps,
                **{guidance: o.sample_guidance_scale},
            ),
        )

    def _render(self, folder: Path, step: int, make: Any) -> list[Path]:
        """Run `make(pipe)` → GenerationResult with the trained net in eval mode; save PNGs."""
        from kandinsky.pipeline import Kandinsky21

        parts = self._sampling_parts()
        if parts is None:
            return []
        net = self.net
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad():
                result = make(Kandinsky21(parts, model_id=str(self.cfg.model)))
        finally:
            net.train(was_training)
        return _save_images(result.images, folder, f"{self.name}-{step:07d}")


def _merge_config(config: ModelConfig, extra: ModelConfig, components: list[str]) -> ModelConfig:
    """`config` with the architecture of `components` taken from `extra` (a later load)."""
    updates: dict[str, Any] = {}
    for name in components:
        if name in ("prior", "unet", "inpaint_unet", "movq", "text_encoder"):
            updates[name] = getattr(extra, name)
        elif name in ("clip_text", "clip_vision"):
            tower = "text" if name == "clip_text" else "vision"
            clip = updates.get("clip", config.clip)
            updates["clip"] = replace(clip, **{tower: getattr(extra.clip, tower)})
    return replace(config, **updates)


def _save_images(images: list[Any], folder: Path, stem: str) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = folder / f"{stem}-{i}.png"
        image.save(path)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------- decoder


def freeze_decoder(unet: nn.Module, *, resblocks: bool = True, attention: bool = False) -> None:
    """The original's `freeze_decoder`: ResBlock in_layers/emb_layers/out_layers (our norm1,
    conv1, time_emb_proj, norm2, conv2; the 1×1 shortcut stays trainable) and, optionally,
    attention qkv/proj_out (to_q/to_k/to_v/to_out; the encoder projections stay trainable)."""
    from kandinsky.models.unet import AttentionBlock, ResBlock

    for module in unet.modules():
        if resblocks and isinstance(module, ResBlock):
            for part in (
                module.norm1,
                module.conv1,
                module.time_emb_proj,
                module.norm2,
                module.conv2,
            ):
                part.requires_grad_(False)
        if attention and isinstance(module, AttentionBlock):
            for part in (module.to_q, module.to_k, module.to_v, module.to_out):
                part.requires_grad_(False)


class DecoderTask(_Task):
    name = "decoder"
    network = "unet"
    frozen = ("movq", "text_encoder", "tokenizer", "clip_vision")
    for_sampling = ("prior", "clip_text", "clip_tokenizer")

    def __init__(self, options: TaskOptions) -> None:
        super().__init__(options)
        self.schedule = decoder_schedule()
        self.drop_text_prob = 0.5 if options.drop_text_prob is None else options.drop_text_prob

    def configure(self, net: nn.Module) -> None:
        freeze_decoder(
            net, resblocks=self.options.freeze_resblocks, attention=self.options.freeze_attention
        )

    def wrap(self, net: nn.Module) -> nn.Module:
        return ConditionedUNet(net)

    def extra_channels(self, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor | None:
        return None

    def loss(
        self, batch: dict, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        images = self._images(batch)
        n = images.shape[0]
        captions = _drop_captions(list(batch["caption"]), self.drop_text_prob, generator)
        drop_image = _draw_rand(n, generator) < self.options.drop_image_prob
        with torch.no_grad():
            x0 = self._latents(images, batch)
            image_embeds = self._clip_embeds(images, batch, drop_image)
            text = self._text("text_encoder", engine.encode_decoder_text, captions)
        t = _timesteps(n, self.schedule, generator)
        noise = _noise_like(x0, generator)
        x_t = diffuse(x0, t, noise, self.schedule)
        extra = self.extra_channels(x0, generator)
        model_in = x_t if extra is None else torch.cat([x_t, extra], dim=1)
        # rescale_timesteps: the UNet sees t · 1000/T as a float (= t here)
        out = self.module(
            model_in,
            t.to(self.device).float(),
            image_embeds,
            text["states"].float(),
            text["pooled"].float(),
        )
        loss, logs = decoder_loss(out, x_t, x0, noise, t, self.schedule, self.options.snr_gamma)
        o = self.options
        if o.pixel_weight > 0:
            movq = self.parts.movq
            pixels = pixel_loss(
                movq.decode,
                out,
                x_t,
                t,
                images,
                self.schedule,
                o.pixel_max_t,
                o.pixel_samples,
                embed=partial(clip_image_embeds, self.parts),
                embed_weight=o.clip_weight,
            )
            loss = loss + o.pixel_weight * pixels
            logs["pixel"] = float(pixels.detach())
        return loss, logs

    def sample(self, step: int, folder: Path) -> list[Path]:
        return self._sample_text2img(step, folder, guidance="guidance_scale")


class InpaintTask(DecoderTask):
    name = "inpaint"
    network = "inpaint_unet"

    def _load(self, cfg: Any) -> Components:
        if not self.options.init_from_unet:
            return super()._load(cfg)
        parts = _load_parts(cfg, self.options, list(self.frozen), "unet")
        config = replace(parts.config.unet, in_channels=9)
        parts.config = replace(parts.config, inpaint_unet=config)
        parts.inpaint_unet = inpaint_unet_from(parts.unet, parts.config)
        parts.unet = None
        return parts

    def extra_channels(self, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """[x0 · keep, keep] with keep = 1 − repaint, one random mask per image."""
        # masks draw many scalars: a CPU generator seeded from the step's keeps that cheap
        seed = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device))
        cpu = torch.Generator().manual_seed(seed)
        h, w = x0.shape[-2:]
        repaint = torch.stack(
            [random_mask(h, w, cpu, self.options.mask_kind) for _ in range(x0.shape[0])]
        )
        keep = (1 - repaint).to(x0)
        return torch.cat([x0 * keep, keep], dim=1)

    def sample(self, step: int, folder: Path) -> list[Path]:
        prompts = list(_option(self.cfg, "sample_prompts", []) or [])
        if not prompts or self.last_images is None:
            return []
        from kandinsky.imaging import tensor_to_pil

        size, o = _sample_size(self.cfg), self.options
        image = tensor_to_pil(self.last_images[:1].cpu())[0].resize((size, size))
        repaint = torch.zeros(size, size)
        repaint[size // 4 : size - size // 4, size // 4 : size - size // 4] = 1  # white = repaint
        return self._render(
            folder,
            step,
            lambda pipe: pipe.inpaint(
                image,
                repaint.numpy(),
                prompts,
                seed=int(self.cfg.seed),
                num_steps=o.sample_steps,
                prior_steps=o.sample_prior_steps,
                guidance_scale=o.sample_guidance_scale,
            ),
        )


def inpaint_unet_from(unet: nn.Module, config: ModelConfig) -> nn.Module:
    """A 9-channel UNet starting from a text2img UNet: its weights, conv_in's extra inputs zero."""
    inpaint = build_network("inpaint_unet", config)
    state = dict(unet.state_dict())
    weight = state["conv_in.weight"]
    grown = weight.new_zeros(weight.shape[0], config.inpaint_unet.in_channels, *weight.shape[2:])
    grown[:, : weight.shape[1]] = weight
    state["conv_in.weight"] = grown
    inpaint.load_state_dict(state)
    return inpaint


# ---------------------------------------------------------------------------- prior


class PriorTask(_Task):
    name = "prior"
    network = "prior"
    frozen = ("clip_text", "clip_tokenizer", "clip_vision")
    for_sampling = ("unet", "movq", "text_encoder", "tokenizer")

    def __init__(self, options: TaskOptions) -> None:
        super().__init__(options)
        self.schedule = prior_schedule()
        self.drop_text_prob = 0.1 if options.drop_text_prob is None else options.drop_text_prob

    def configure(self, net: nn.Module) -> None:
        # the CLIP statistics are data, not weights (parameters only for diffusers' layout)
        net.clip_mean.requires_grad_(False)
        net.clip_std.requires_grad_(False)

    def loss(
        self, batch: dict, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        images = self._images(batch)
        n = images.shape[0]
        captions = _drop_captions(list(batch["caption"]), self.drop_text_prob, generator)
        with torch.no_grad():
            text = self._text("clip_text", engine.encode_prior_text, captions)
            x0 = self.net.normalize(self._clip_embeds(images, batch)).float()
        t = _timesteps(n, self.schedule, generator)
        noise = _noise_like(x0, generator)
        x_t = diffuse(x0, t, noise, self.schedule)
        pred = self.module(
            x_t, t.to(self.device), text["pooled"].float(), text["states"].float(), text["mask"]
        )
        loss = prior_loss(pred, x0)
        return loss, {"mse": float(loss.detach())}

    def sample(self, step: int, folder: Path) -> list[Path]:
        return self._sample_text2img(step, folder, guidance="prior_guidance_scale")


# ---------------------------------------------------------------------------- MoVQ


class MoVQTask(_Task):
    """MoVQ autoencoder: L1 (+ perceptual) + VQ losses, and with `disc_weight` > 0 a
    PatchGAN adversary from step `disc_start` on (hinge loss, VQGAN's adaptive weight)."""

    name = "movq"
    network = "movq"

    def __init__(self, options: TaskOptions) -> None:
        super().__init__(options)
        self.perceptual: nn.Module | None = None
        self.discriminator: nn.Module | None = None  # as prepared by the loop (maybe DDP)
        self.step = 0
        self._pair: tuple[torch.Tensor, torch.Tensor] | None = None

    def setup(self, cfg: TrainConfig, accelerator: Any) -> None:
        super().setup(cfg, accelerator)
        if self.options.perceptual_weights:
            module = torch.jit.load(self.options.perceptual_weights, map_location=self.device)
            self.perceptual = module.eval().requires_grad_(False)
        if self.options.disc_weight > 0:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(_option(cfg, "seed", 0)) + 1)
                self.discriminator = PatchDiscriminator(
                    self.parts.config.movq.in_channels,
                    self.options.disc_width,
                    self.options.disc_layers,
                ).to(self.device)
            size = int(getattr(getattr(cfg, "data", None), "image_size", 0) or 0)
            if size and size < self.discriminator.min_size():
                raise InvalidInput(
                    f"a {self.options.disc_layers}-layer discriminator needs images of at least "
                    f"{self.discriminator.min_size()} px, data.image_size is {size}: lower "
                    "task_options.disc_layers or raise data.image_size"
                )

    def configure(self, net: nn.Module) -> None:
        if not self.options.quantize:  # unused without the codebook (DDP needs every grad)
            net.quantize.requires_grad_(False)

    def wrap(self, net: nn.Module) -> nn.Module:
        return AutoencoderRoundTrip(net, self.options.quantize)

    # ---- the adversary (the loop gives it its own optimizer and checkpoints it)

    def adversary(self) -> nn.Module | None:
        return self.discriminator

    def set_adversary(self, module: nn.Module) -> None:
        self.discriminator = module

    def set_step(self, step: int) -> None:
        self.step = step

    @property
    def _adversarial(self) -> bool:
        return self.discriminator is not None and self.step >= self.options.disc_start

    def loss(
        self, batch: dict, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        images = self._images(batch)
        recon, vq_loss = self.module(images)
        logits, last_layer = None, None
        if self._adversarial:
            # The discriminator's weights enter detached: this loss trains only the MoVQ.
            disc = _unwrap(self.discriminator)
            frozen = {k: v.detach() for k, v in disc.named_parameters()}
            logits = torch.func.functional_call(disc, frozen, (recon,))
            if self.options.disc_adaptive:
                last_layer = self.net.decoder.conv_out.weight
            self._pair = (images.detach(), recon.detach())
        return movq_loss(
            recon,
            images,
            self.options.vq_weight * vq_loss,
            logits,
            perceptual=self.perceptual,
            perceptual_weight=self.options.perceptual_weight,
            disc_weight=self.options.disc_weight,
            last_layer=last_layer,
        )

    def adversary_loss(self) -> tuple[torch.Tensor, dict[str, float]] | None:
        """Hinge loss of the discriminator on the last micro-batch (None before it starts)."""
        if not self._adversarial or self._pair is None:
            return None
        real, fake = self._pair
        self._pair = None
        logits = self.discriminator(torch.cat([real, fake]))
        real_logits, fake_logits = logits.float().chunk(2)
        loss = discriminator_hinge_loss(real_logits, fake_logits)
        return loss, {
            "disc": float(loss.detach()),
            "logits_real": float(real_logits.detach().mean()),
            "logits_fake": float(fake_logits.detach().mean()),
        }

    def sample(self, step: int, folder: Path) -> list[Path]:
        """Input | reconstruction pairs of the last batch (no Kandinsky21 needed)."""
        if self.last_images is None:
            return []
        from kandinsky.imaging import tensor_to_pil

        net = self.net
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad():
                images = self.last_images.to(self.device)
                latents = net.encode(images)
                recon = net.decode(latents, quantize=self.options.quantize).float().clamp(-1, 1)
        finally:
            net.train(was_training)
        pairs = torch.cat([images.float(), recon], dim=-1)
        return _save_images(tensor_to_pil(pairs), folder, f"{self.name}-{step:07d}")


# ---------------------------------------------------------------------------- LoRA


class LoRATask:
    """LoRA on a base task's network: only the adapters train and only they are saved."""

    name = "lora"

    def __init__(self, options: TaskOptions) -> None:
        self.options = options
        base = {"unet": DecoderTask, "inpaint_unet": InpaintTask, "prior": PriorTask}[
            options.lora_network
        ]
        self.base: _Task = base(options)
        self.info: lora_lib.LoRAInfo | None = None

    def setup(self, cfg: TrainConfig, accelerator: Any) -> None:
        self.base.setup(cfg, accelerator)
        o = self.options
        targets = o.lora_targets or lora_lib.DEFAULT_TARGETS[o.lora_network]
        alpha = float(o.lora_alpha if o.lora_alpha is not None else o.lora_rank)
        net = self.base.net.requires_grad_(False)
        lora_lib.add_lora(net, rank=o.lora_rank, alpha=alpha, targets=tuple(targets))
        self.info = lora_lib.LoRAInfo(
            network=o.lora_network,
            rank=o.lora_rank,
            alpha=alpha,
            targets=tuple(targets),
            base_model=str(cfg.model),
        )

    def trainable(self) -> nn.Module:
        return self.base.trainable()

    def set_trainable(self, module: nn.Module) -> None:
        self.base.set_trainable(module)

    def loss(
        self, batch: dict, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        return self.base.loss(batch, generator)

    def sample(self, step: int, folder: Path) -> list[Path]:
        return self.base.sample(step, folder)

    def save_weights(self, folder: Path, state: dict[str, torch.Tensor]) -> None:
        adapter = lora_lib.adapter_from_state(substate(state, self.base.prefix))
        lora_lib.save_lora(self.base.net, Path(folder) / "lora.safetensors", self.info, adapter)

    @property
    def net(self) -> nn.Module:
        return self.base.net


# ---------------------------------------------------------------------------- entry point


_TASKS: dict[str, type] = {
    "prior": PriorTask,
    "decoder": DecoderTask,
    "inpaint": InpaintTask,
    "movq": MoVQTask,
    "lora": LoRATask,
}


def make_task(name: str, cfg: Any) -> Any:
    """The `Task` for `name`, with `cfg.task_options` checked (call `setup` before use)."""
    if name not in _TASKS:
        raise InvalidInput(f"task {name!r} is unknown; choose one of {', '.join(TASK_NAMES)}")
    return _TASKS[name](TaskOptions.from_dict(_option(cfg, "task_options", None)))
