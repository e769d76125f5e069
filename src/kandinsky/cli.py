"""`kandinsky …` on the command line. Thin: parse → call the API → print.

Exit codes: 0 ok, 1 failure (one line on stderr; the traceback with --debug), 2 bad usage
(a malformed command line, or a value outside what the model accepts).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from kandinsky.errors import InvalidInput, KandinskyError

EXAMPLES = {
    "convert": (
        "examples:\n"
        "  kandinsky convert ~/Kandinsky_2.1 ./kandinsky-2-1-diffusers\n"
        "  kandinsky convert sberbank-ai/Kandinsky_2.1 ./k21 --dtype fp16\n"
        "  kandinsky convert ./original ./out --components unet movq --overwrite"
    ),
    "info": "examples:\n  kandinsky info\n  kandinsky info --model ./kandinsky-2-1-diffusers",
    "download": (
        "examples:\n"
        "  kandinsky download kandinsky-community/kandinsky-2-1\n"
        "  kandinsky download sberbank-ai/Kandinsky_2.1 --cache-dir /data/hf --components unet prior movq"
    ),
    "selftest": "example:\n  kandinsky selftest",
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "debug", False) is False:
        _quiet_libraries()
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except InvalidInput as e:  # a value the user gave is out of range: bad usage
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KandinskyError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (OSError, MemoryError) as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kandinsky", description="Kandinsky 2.1: load, convert, generate, serve, train."
    )
    parser.add_argument("--version", action="version", version=f"kandinsky {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help_text: str, examples: str | None = None) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=examples or EXAMPLES.get(name),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.add_argument("--debug", action="store_true", help="show tracebacks")
        return sub

    from kandinsky.cli_demo import add_commands as add_demo_commands
    from kandinsky.cli_generate import add_commands
    from kandinsky.cli_train import add_commands as add_train_commands

    add_commands(commands, command)
    add_train_commands(commands, command)
    add_demo_commands(commands, command)

    convert = command(
        "convert", "Convert weights (original or diffusers layout) to diffusers folders."
    )
    convert.add_argument(
        "sources", nargs="+", metavar="SRC", help="folder(s) or hub repo id(s), searched in order"
    )
    convert.add_argument("destination", metavar="DST", help="new folder to write")
    convert.add_argument("--dtype", default="fp32", help="fp32 (default), fp16 or bf16")
    convert.add_argument(
        "--components", nargs="+", help="only these components (default: all found)"
    )
    convert.add_argument(
        "--config",
        choices=["full", "tiny"],
        default="full",
        help="architecture of original-layout files",
    )
    convert.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    _hub_flags(convert)
    convert.set_defaults(run=_convert)

    info = command("info", "Versions, devices, and what a model folder or repo holds.")
    info.add_argument("--model", help="folder or hub repo id to inspect")
    info.add_argument("--config", choices=["full", "tiny"], default="full")
    _hub_flags(info)
    info.set_defaults(run=_info)

    download = command("download", "Fetch released weights into the hub cache (resumable).")
    download.add_argument("repo", nargs="?", default="kandinsky-community/kandinsky-2-1")
    download.add_argument("--components", nargs="+", help="only these components (default: all)")
    _hub_flags(download)
    download.set_defaults(run=_download)

    selftest = command(
        "selftest", "Offline check: tiny random model → convert → reload → every generation mode."
    )
    selftest.add_argument("--out", default="selftest-output", help="folder for the PNGs")
    selftest.set_defaults(run=_selftest)
    return parser


def _quiet_libraries() -> None:
    """Library chatter (transformers' config notes, hub warnings) is not for CLI users."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="transformers")
    for name in ("transformers", "huggingface_hub", "diffusers"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _hub_flags(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--cache-dir", help="hub cache folder (default: the huggingface_hub default)")
    sub.add_argument("--revision", help="hub branch, tag or commit")
    sub.add_argument("--offline", action="store_true", help="use only the local cache")


def _config(name: str):
    from kandinsky.config import KANDINSKY_2_1, TINY

    return TINY if name == "tiny" else KANDINSKY_2_1


def _convert(args: argparse.Namespace) -> int:
    from kandinsky.conversion import convert

    started = time.perf_counter()
    out = convert(
        args.sources,
        args.destination,
        config=_config(args.config),
        dtype=args.dtype,
        components=args.components,
        overwrite=args.overwrite,
        cache_dir=args.cache_dir,
        revision=args.revision,
        local_files_only=args.offline or None,
        progress=lambda step: print(f"  writing {step}", file=sys.stderr),
    )
    print(f"wrote {out} in {time.perf_counter() - started:.1f}s")
    for pipeline in sorted(p for p in out.iterdir() if p.is_dir()):
        print(
            f"  {pipeline.name}: {', '.join(sorted(p.name for p in pipeline.iterdir() if p.is_dir()))}"
        )
    return 0


def _info(args: argparse.Namespace) -> int:
    import platform

    import torch

    print(f"kandinsky {_version()}  torch {torch.__version__}  python {platform.python_version()}")
    devices = ["cpu"] + [
        f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())
    ]
    print(f"devices: {', '.join(devices)}")
    if not args.model:
        return 0
    loaded = _load_what_is_there(args)
    for name, module in loaded.networks().items():
        params = sum(p.numel() for p in module.parameters())
        print(
            f"  {name:13s} {params / 1e6:9.2f}M params  {loaded.layouts[name]:9s}  {loaded.sources[name]}"
        )
    for name in ("tokenizer", "clip_tokenizer"):
        if getattr(loaded, name) is not None:
            print(
                f"  {name:13s} {type(getattr(loaded, name)).__name__:>16s}  {loaded.sources[name]}"
            )
    d = loaded.defaults
    whose = "generation_defaults.json" if d.changed() else "the original's"
    print(
        f"sampling defaults ({whose}): guidance {d.guidance_scale:g}, {d.num_steps} steps "
        f"{d.sampler}; prior guidance {d.prior_guidance_scale:g}, {d.prior_steps} steps "
        f"{d.prior_sampler}"
    )
    return 0


def _load_what_is_there(args: argparse.Namespace):
    """Load every component the source has, without requiring all of them."""
    from kandinsky.hub import HubOptions
    from kandinsky.loading import COMPONENTS, find_components, load

    options = HubOptions(args.cache_dir, args.revision, args.offline or None)
    found, _ = find_components([args.model], COMPONENTS, options)
    return load(
        args.model,
        components=[c for c in COMPONENTS if c in found],
        config=_config(args.config),
        cache_dir=args.cache_dir,
        revision=args.revision,
        local_files_only=args.offline or None,
    )


def _download(args: argparse.Namespace) -> int:
    from kandinsky.hub import HubOptions, plan, resolve
    from kandinsky.loading import COMPONENTS, parse_components

    components = parse_components(args.components) if args.components else COMPONENTS
    options = HubOptions(args.cache_dir, args.revision, args.offline or None)
    for repo, patterns in plan(args.repo, components):
        print(f"{repo}: {', '.join(patterns) if patterns else 'all files'}", file=sys.stderr)
        print(resolve(repo, options, patterns))
    return 0


def _selftest(args: argparse.Namespace) -> int:
    import tempfile

    import numpy as np
    import torch
    from PIL import Image

    from kandinsky.config import TINY
    from kandinsky.conversion import convert
    from kandinsky.loading import NETWORKS, load
    from kandinsky.pipeline import Kandinsky21
    from kandinsky.testing import write_clip_tokenizer_folder, write_original_layout

    out = Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        original = Path(tmp) / "original"
        write_original_layout(original, TINY, seed=0)
        names = ", ".join(sorted(p.name for p in original.iterdir()))
        print(f"1. wrote a tiny random model in the original layout: {names}")
        converted = convert(
            [original, write_clip_tokenizer_folder(Path(tmp) / "clip")],
            Path(tmp) / "diffusers",
            config=TINY,
        )
        print(
            f"2. converted it to the diffusers layout: {', '.join(sorted(p.name for p in converted.iterdir()))}"
        )
        a = load(original, config=TINY, components=NETWORKS)
        b = load(converted, components=NETWORKS)
        print("3. loaded both; every network bit-identical:")
        failures = 0
        for name, module in a.networks().items():
            sa, sb = module.state_dict(), b.networks()[name].state_dict()
            same = sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
            failures += not same
            params = sum(v.numel() for v in sa.values())
            print(f"   {name:13s} {params:>9,d} params  {'identical' if same else 'DIFFERENT'}")
        print(
            f"4. every generation mode on the converted model (random weights: noise pictures) → {out}/"
        )
        pipe = Kandinsky21.from_pretrained(converted, inpainting=True)
        fast = {"num_steps": 4, "prior_steps": 4, "seed": 0}
        photo = Image.fromarray(
            np.linspace(0, 255, 128, dtype=np.uint8)[None, :, None].repeat(128, 0).repeat(3, 2)
        )
        mask = np.zeros((128, 128), dtype=np.float32)
        mask[32:96, 32:96] = 1.0
        runs = {
            "text2img": lambda: pipe.text2img(
                "a red circle on the left of a blue square", height=128, width=128, **fast
            ),
            "mix": lambda: pipe.mix(
                [photo, "in the style of van gogh"], [0.5, 0.5], height=128, width=128, **fast
            ),
            "variations": lambda: pipe.variations(photo, height=128, width=128, **fast),
            "img2img": lambda: pipe.img2img(photo, "a watercolor", strength=0.5, **fast),
            "inpaint": lambda: pipe.inpaint(photo, mask, "a yellow star", **fast),
            "outpaint": lambda: pipe.outpaint(photo, "a wide field", extend=(64, 0, 64, 0), **fast),
        }
        for mode, run in runs.items():
            result = run()
            path = result.save(out, prefix=mode)[0]
            print(f"   {mode:10s} {result.image.width}×{result.image.height}  {path}")
        print(f"done in {time.perf_counter() - started:.1f}s")
    return 1 if failures else 0


def _version() -> str:
    from kandinsky import __version__

    return __version__


if __name__ == "__main__":
    raise SystemExit(main())
