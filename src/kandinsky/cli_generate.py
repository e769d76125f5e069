"""The generation subcommands of `kandinsky` (generate, mix, vary, img2img, inpaint, outpaint, serve, ui).

Thin: flags → `Kandinsky21` call → numbered PNGs with their parameters. No model code here.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from kandinsky.errors import InvalidInput, KandinskyError

DEFAULT_MODEL = os.environ.get("KANDINSKY_MODEL", "kandinsky-community/kandinsky-2-1")

EXAMPLES = {
    "generate": (
        "examples:\n"
        '  kandinsky generate "a red cat, 4k photo" --seed 0 -n 4\n'
        '  kandinsky generate "красный кот" --height 768 --width 768 --sampler p_sampler --steps 100\n'
        "  kandinsky generate --prompts prompts.txt --out batch/\n"
        "  kandinsky generate --from outputs/kandinsky-00000.png      # same image again"
    ),
    "mix": (
        "examples:\n"
        '  kandinsky mix cat.png "in the style of van gogh" --weights 0.6 0.4\n'
        "  kandinsky mix a.jpg b.jpg --weights 0.5 0.5 -n 2"
    ),
    "vary": "example:\n  kandinsky vary photo.jpg -n 4 --seed 1",
    "img2img": (
        "examples:\n"
        '  kandinsky img2img photo.jpg "a watercolor painting" --strength 0.7         # original: 0.7 keeps a lot\n'
        '  kandinsky img2img photo.jpg "a watercolor painting" --strength 0.3 --strength-convention diffusers'
    ),
    "inpaint": (
        "examples:\n"
        '  kandinsky inpaint photo.png mask.png "a hat"                    # white in mask.png = repaint\n'
        '  kandinsky inpaint photo.png keep.png "a hat" --mask-polarity original'
    ),
    "outpaint": (
        "examples:\n"
        '  kandinsky outpaint photo.png "a wide beach" --extend 256 0 256 0\n'
        '  kandinsky outpaint photo.png "a wide beach" --size 1024 512'
    ),
    "serve": (
        "examples:\n"
        "  kandinsky serve --model ./kandinsky-2-1-diffusers --port 7860\n"
        "  KANDINSKY_API_KEY=secret kandinsky serve --host 0.0.0.0"
    ),
    "ui": "example:\n  kandinsky ui --model ./kandinsky-2-1-diffusers   # then open http://127.0.0.1:7860/",
}


def add_commands(commands: argparse._SubParsersAction, command_factory: Any) -> None:
    """Register the generation subcommands on the top-level parser."""
    generate = command_factory("generate", "Text to image.", EXAMPLES["generate"])
    generate.add_argument("prompt", nargs="?", help="what to draw (any language)")
    generate.add_argument("--prompts", metavar="FILE", help="one prompt per line (batch run)")
    generate.add_argument(
        "--from", dest="from_png", metavar="PNG", help="regenerate a PNG written by kandinsky"
    )
    _model_flags(generate)
    _generation_flags(generate)
    generate.set_defaults(run=run_generate)

    mix = command_factory("mix", "Mix texts and images with weights.", EXAMPLES["mix"])
    mix.add_argument("items", nargs="+", help="texts and image paths, in order")
    mix.add_argument("--weights", type=float, nargs="+", required=True, help="one weight per item")
    mix.add_argument("--prompt", default="", help="decoder prompt (default: none, as the original)")
    _model_flags(mix)
    _generation_flags(mix)
    mix.set_defaults(run=run_mix)

    vary = command_factory("vary", "Variations of an image.", EXAMPLES["vary"])
    vary.add_argument("image")
    vary.add_argument("--prompt", default="", help="optional decoder prompt to steer")
    _model_flags(vary)
    _generation_flags(vary)
    vary.set_defaults(run=run_vary)

    img2img = command_factory(
        "img2img", "Re-imagine an image towards a prompt.", EXAMPLES["img2img"]
    )
    img2img.add_argument("image")
    img2img.add_argument("prompt")
    img2img.add_argument("--strength", type=float, default=0.7)
    img2img.add_argument(
        "--strength-convention", choices=["original", "diffusers"], default="original"
    )
    _model_flags(img2img)
    _generation_flags(img2img, from_image=True)
    img2img.set_defaults(run=run_img2img)

    inpaint = command_factory(
        "inpaint", "Repaint the masked part of an image.", EXAMPLES["inpaint"]
    )
    inpaint.add_argument("image")
    inpaint.add_argument("mask", help="white = repaint (or see --mask-polarity)")
    inpaint.add_argument("prompt")
    inpaint.add_argument(
        "--mask-polarity", choices=["white_repaints", "original"], default="white_repaints"
    )
    inpaint.add_argument(
        "--no-paste-back", action="store_true", help="return the decoded image as is (original)"
    )
    _model_flags(inpaint)
    _generation_flags(inpaint, from_image=True)
    inpaint.set_defaults(run=run_inpaint)

    outpaint = command_factory(
        "outpaint", "Extend an image beyond its borders.", EXAMPLES["outpaint"]
    )
    outpaint.add_argument("image")
    outpaint.add_argument("prompt")
    grow = outpaint.add_mutually_exclusive_group(required=True)
    grow.add_argument("--extend", type=int, nargs=4, metavar=("LEFT", "TOP", "RIGHT", "BOTTOM"))
    grow.add_argument("--size", type=int, nargs=2, metavar=("WIDTH", "HEIGHT"))
    outpaint.add_argument(
        "--max-step", type=int, default=256, help="largest growth per pass, pixels"
    )
    outpaint.add_argument(
        "--overlap", type=int, default=16, help="seam band redrawn inside the old border"
    )
    _model_flags(outpaint)
    _generation_flags(outpaint, from_image=True, sizes=False)
    outpaint.set_defaults(run=run_outpaint)

    for name, help_text in (
        ("serve", "HTTP API (and the web page at /)."),
        ("ui", "The web page (and the HTTP API)."),
    ):
        server = command_factory(name, help_text, EXAMPLES[name])
        _model_flags(server)
        server.add_argument(
            "--host", default="127.0.0.1", help="bind address (default: loopback only)"
        )
        server.add_argument("--port", type=int, default=7860)
        server.add_argument(
            "--api-key",
            default=None,
            help="require 'Authorization: Bearer KEY' (or env KANDINSKY_API_KEY)",
        )
        server.add_argument("--max-queue", type=int, default=8)
        server.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
        if name == "serve":
            server.add_argument("--no-ui", action="store_true", help="API only, no web page")
        server.set_defaults(run=run_serve, ui_command=name == "ui")


def _model_flags(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="folder, hub repo id, or 'demo' (default: %(default)s)",
    )
    sub.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda if available)"
    )
    sub.add_argument(
        "--dtype", default=None, help="fp32, fp16, bf16 (default: fp16 on GPU, fp32 on CPU)"
    )
    sub.add_argument("--cache-dir", help="hub cache folder")
    sub.add_argument("--revision", help="hub branch, tag or commit")
    sub.add_argument("--offline", action="store_true", help="use only the local cache")
    sub.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="PATH[:SCALE]",
        help="apply a LoRA adapter (repeatable)",
    )


def _generation_flags(
    sub: argparse.ArgumentParser, from_image: bool = False, sizes: bool = True
) -> None:
    sub.add_argument("-n", "--num-images", type=int, default=1, help="images per prompt")
    sub.add_argument(
        "--seed", type=int, nargs="+", help="one seed, or one per image (default: random)"
    )
    sub.add_argument("--out", default="outputs", help="folder for the PNGs (never overwritten)")
    if sizes:
        hint = (
            "the input image's"
            if from_image
            else "the model's native size: 512, 64 for the demo model"
        )
        sub.add_argument("--height", type=int, help=f"pixels, multiple of 8 (default: {hint})")
        sub.add_argument("--width", type=int, help=f"pixels, multiple of 8 (default: {hint})")

    # None: the model's own (generation_defaults.json beside its weights), else the original's
    def own(released: str, demo: str | None = None) -> str:
        return f"default: the model's own; Kandinsky 2.1: {released}" + (
            f", demo: {demo}" if demo else ""
        )

    sub.add_argument("--steps", type=int, help=f"decoder steps ({own('50', '25')})")
    sub.add_argument("--guidance", type=float, help=f"decoder guidance scale ({own('4', '2.5')})")
    sub.add_argument("--sampler", help=f"p_sampler, ddim, plms, dpmpp_2m, euler_a ({own('ddim')})")
    sub.add_argument("--prior-steps", type=int, help=f"prior steps ({own('25')})")
    sub.add_argument("--prior-guidance", type=float, help=f"prior guidance scale ({own('4', '2')})")
    sub.add_argument("--prior-sampler", choices=["original", "unclip"], help=f"({own('original')})")
    sub.add_argument(
        "--negative", default="", help="what the image should not show (decoder negative)"
    )
    sub.add_argument("--negative-prior", default="", help="the prior's guidance negative")
    sub.add_argument("--no-progress", action="store_true", help="no progress bars")


# ---------------------------------------------------------------------------- runners


def load_pipeline(args: argparse.Namespace, inpainting: bool = False):
    import torch

    from kandinsky.pipeline import Kandinsky21

    if args.model == "demo":
        from pathlib import Path

        weights = Path(__file__).resolve().parent / "demo" / "weights"
        if not (weights / "kandinsky-2-1" / "model_index.json").is_file():
            raise KandinskyError(
                f"the demo weights are missing from {weights}; rebuild them with "
                "`kandinsky demo train`, or pass --model with a folder or a hub repo id"
            )
        args.model = str(weights)
        inpainting = True
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("fp16" if device.startswith("cuda") else "fp32")
    bar = None
    if not getattr(args, "no_progress", False):
        from tqdm.auto import tqdm

        def progress(name: str, index: int, total: int) -> None:
            nonlocal bar
            if bar is None:
                bar = tqdm(total=total, desc="loading", unit="part", file=sys.stderr)
            bar.set_postfix_str(name)
            bar.update(1)
    else:
        progress = None
    try:
        pipe = Kandinsky21.from_pretrained(
            args.model,
            device=device,
            dtype=dtype,
            inpainting=inpainting,
            progress=progress,
            cache_dir=args.cache_dir,
            revision=args.revision,
            local_files_only=args.offline or None,
        )
    finally:
        if bar is not None:
            bar.close()
    from kandinsky.training.lora import parse_lora_argument

    for value in args.lora:
        pipe.load_lora(*parse_lora_argument(value))
    return pipe


def common_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {
        "num_images": args.num_images,
        "num_steps": args.steps,
        "guidance_scale": args.guidance,
        "sampler": args.sampler,
        "prior_steps": args.prior_steps,
        "prior_guidance_scale": args.prior_guidance,
        "prior_sampler": args.prior_sampler,
        "progress": not args.no_progress,
    }
    if args.seed is not None:
        options["seed"] = args.seed[0] if len(args.seed) == 1 else args.seed
    for key in ("height", "width"):
        if getattr(args, key, None) is not None:
            options[key] = getattr(args, key)
    return options


def _save(result, args: argparse.Namespace, started: float) -> int:
    paths = result.save(args.out)
    for path, seed in zip(paths, result.seeds, strict=True):
        print(f"{path}  seed={seed}")
    print(f"{len(paths)} image(s) in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    return 0


def _open_image(path: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except FileNotFoundError as e:
        raise InvalidInput(f"image file not found: {path}") from e
    except (UnidentifiedImageError, OSError) as e:
        raise InvalidInput(f"{path} is not a readable image ({e})") from e


def run_generate(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    sources = sum(x is not None for x in (args.prompt, args.prompts, args.from_png))
    if sources != 1:
        raise InvalidInput("give exactly one of: a prompt, --prompts FILE, or --from PNG")
    if args.from_png:
        return _regenerate(args, started)
    if args.prompts:
        try:
            lines = Path(args.prompts).read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise InvalidInput(f"cannot read --prompts file {args.prompts}: {e.strerror}") from e
        prompts = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        if not prompts:
            raise InvalidInput(f"{args.prompts} holds no prompts (one per line)")
    else:
        prompts = [args.prompt]
    pipe = load_pipeline(args)
    options = common_options(args)
    code = 0
    for index, prompt in enumerate(
        prompts
    ):  # one call per prompt: a bad line doesn't lose the others
        if len(prompts) > 1:
            print(f"[{index + 1}/{len(prompts)}] {prompt}", file=sys.stderr)
        result = pipe.text2img(
            prompt,
            negative_prompt=args.negative,
            negative_prior_prompt=args.negative_prior,
            **options,
        )
        code |= _save(result, args, started)
    return code


_REPRODUCED = (
    "num_images",
    "negative_prompt",
    "negative_prior_prompt",
    "height",
    "width",
    "guidance_scale",
    "num_steps",
    "sampler",
    "prior_guidance_scale",
    "prior_steps",
    "prior_sampler",
)


def _regenerate(args: argparse.Namespace, started: float) -> int:
    from kandinsky.results import read_params

    params = read_params(args.from_png)
    if params.get("mode") != "text2img":
        raise InvalidInput(
            f"{args.from_png} was made by {params.get('mode')!r}; --from regenerates text-to-image "
            "PNGs (other modes need their input images)"
        )
    if args.model == DEFAULT_MODEL and params.get("model"):
        args.model = params["model"]
    if not args.lora and params.get("loras"):
        args.lora = [f"{path}:{scale}" for path, scale in params["loras"]]
    if "prompt" not in params or "seed" not in params:
        raise InvalidInput(f"{args.from_png}: its kandinsky parameters lack the prompt or the seed")
    # keys missing from an older or hand-edited PNG take the API's defaults
    options = {key: params[key] for key in _REPRODUCED if key in params}
    pipe = load_pipeline(args)
    try:
        result = pipe.text2img(
            params.get("batch_prompts", [params["prompt"]]),
            seed=params.get("batch_seeds", [params["seed"]]),
            progress=not args.no_progress,
            **options,
        )
    except TypeError as e:
        raise InvalidInput(f"{args.from_png}: its kandinsky parameters are malformed ({e})") from e
    index = params.get("batch_index", 0)  # the batch is rerun as it was; keep the asked image
    if not isinstance(index, int) or not 0 <= index < len(result.images):
        raise InvalidInput(
            f"{args.from_png}: batch_index {index!r} is not in the regenerated batch"
        )
    result.images, result.params, result.seeds = (
        [result.images[index]],
        [result.params[index]],
        [result.seeds[index]],
    )
    return _save(result, args, started)


def run_mix(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    items = [_mix_item(item) for item in args.items]
    pipe = load_pipeline(args)
    result = pipe.mix(
        items,
        args.weights,
        prompt=args.prompt,
        negative_prompt=args.negative,
        negative_prior_prompt=args.negative_prior,
        **common_options(args),
    )
    return _save(result, args, started)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def _mix_item(item: str):
    """An existing file is an image; a path-like word that is not there is a typo, not a text."""
    if Path(item).is_file():
        return _open_image(item)
    if item.lower().endswith(IMAGE_SUFFIXES) and " " not in item:
        raise InvalidInput(
            f"image file not found: {item} (to mix it as text, write it with a space or no file suffix)"
        )
    return item


def run_vary(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    image = _open_image(args.image)
    pipe = load_pipeline(args)
    result = pipe.variations(
        image, prompt=args.prompt, negative_prompt=args.negative, **common_options(args)
    )
    return _save(result, args, started)


def run_img2img(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    image = _open_image(args.image)
    pipe = load_pipeline(args)
    result = pipe.img2img(
        image,
        args.prompt,
        strength=args.strength,
        strength_convention=args.strength_convention,
        negative_prompt=args.negative,
        negative_prior_prompt=args.negative_prior,
        **common_options(args),
    )
    return _save(result, args, started)


def run_inpaint(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    image, mask = _open_image(args.image), _open_image(args.mask)
    pipe = load_pipeline(args, inpainting=True)
    result = pipe.inpaint(
        image,
        mask,
        args.prompt,
        mask_polarity=args.mask_polarity,
        paste_back=not args.no_paste_back,
        negative_prompt=args.negative,
        negative_prior_prompt=args.negative_prior,
        **common_options(args),
    )
    return _save(result, args, started)


def run_outpaint(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    image = _open_image(args.image)
    pipe = load_pipeline(args, inpainting=True)
    result = pipe.outpaint(
        image,
        args.prompt,
        extend=tuple(args.extend) if args.extend else None,
        size=tuple(args.size) if args.size else None,
        max_step=args.max_step,
        overlap=args.overlap,
        negative_prompt=args.negative,
        negative_prior_prompt=args.negative_prior,
        **common_options(args),
    )
    return _save(result, args, started)


def run_serve(args: argparse.Namespace) -> int:
    from kandinsky.server.app import ServerSettings, serve

    args.no_progress = False
    pipe = load_pipeline(args, inpainting=True)
    settings = ServerSettings(
        host=args.host,
        port=args.port,
        api_key=args.api_key or os.environ.get("KANDINSKY_API_KEY") or None,
        max_queue=args.max_queue,
        timeout_s=args.timeout,
        ui=args.ui_command or not getattr(args, "no_ui", False),
        model_id=args.model,
    )
    where = f"http://{args.host}:{args.port}"
    print(
        f"serving {args.model} on {where}  (API docs: {where}/docs"
        + (", web page: " + where + "/)" if settings.ui else ")"),
        file=sys.stderr,
    )
    serve(pipe, settings)
    return 0
