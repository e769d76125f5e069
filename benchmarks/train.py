"""Training throughput and peak memory per trainer.

    python benchmarks/train.py                  # tiny configs on this machine (CPU or GPU)
    python benchmarks/train.py --full           # the released sizes too (needs a GPU and the weights)
    python benchmarks/train.py --full --random-weights /tmp/k21   # ... or their structure, random
    python benchmarks/train.py --steps 20 --tasks prior decoder --batch-size 4

Each trainer runs `kandinsky.training.train` for a few steps on synthetic captioned shapes
(kandinsky.demo.data) and reports images/s after the first (warm-up) step and the peak
memory (CUDA max allocated on a GPU, peak RSS on the CPU). Full size needs the real weights
(`--model`, default kandinsky-community/kandinsky-2-1) and is the configuration of the goal:
decoder full fine-tune at 768² with gradient checkpointing + bf16, LoRA at 768².
Speed and memory do not depend on the weights' values: `--random-weights DIR` writes the
released structure with random weights (`kandinsky.testing.write_random_model`, about 17 GB,
built on the GPU) to DIR, or reuses what an earlier run wrote there, and benchmarks that.
Results go to benchmarks/results/train.{json,md}.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
TASKS = ("prior", "decoder", "inpaint", "movq", "lora")


def peak_memory_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def log_rows(output_dir: Path) -> list[dict[str, str]]:
    """A training run's log.csv, one dict per logged step."""
    with (output_dir / "log.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def run(
    task_name: str, model: str, data: Path, size: int, steps: int, full: bool, out: Path, batch: int
) -> dict:
    from accelerate.state import AcceleratorState

    from kandinsky.training.config import load_config
    from kandinsky.training.loop import train
    from kandinsky.training.tasks import make_task

    device = "cuda" if torch.cuda.is_available() else "cpu"
    overrides = [
        f"task={task_name}",
        f"model={model}",
        f"output_dir={out / task_name}",
        f"data.source={data}",
        f"data.image_size={size}",
        f"max_steps={steps}",
        f"batch_size={batch}",
        "checkpoint_every=100000",
        "log_every=1",
        "optim.name=adamw",
        "optim.lr=1e-5",
    ]
    if full:
        overrides += ["gradient_checkpointing=true", "mixed_precision=bf16"]
        if task_name in ("decoder", "inpaint"):  # the goal is a full fine-tune: nothing frozen
            overrides.append("task_options.freeze_resblocks=false")
    cfg = load_config(None, overrides)
    AcceleratorState._reset_state(reset_partial_state=True)  # each run its own mixed precision
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    task = make_task(task_name, cfg)
    started = time.perf_counter()
    result = train(cfg, task)
    elapsed = time.perf_counter() - started
    trainable = sum(p.numel() for p in task.trainable().parameters() if p.requires_grad)
    rows = log_rows(out / task_name)
    rates = [float(r["images_per_s"]) for r in rows[1:] if r.get("images_per_s")]
    return {
        "task": task_name,
        "size": size,
        "batch_size": batch,
        "trainable_params_m": round(trainable / 1e6, 1),
        "device": device,
        "steps": result.steps,
        "images_per_s": sum(rates) / len(rates) if rates else None,
        "peak_memory_mb": peak_memory_mb(device),
        "seconds": elapsed,
        "final_loss": result.losses[-1] if result.losses else None,
        "log_columns": list(rows[0]) if rows else [],
    }


def random_weights(folder: Path) -> Path:
    """The released structure with random weights in `folder` (written once, then reused)."""
    from kandinsky.config import KANDINSKY_2_1
    from kandinsky.testing import write_random_model

    done = folder / ".complete"
    if not done.is_file():
        started = time.perf_counter()
        device = "cuda" if torch.cuda.is_available() else "cpu"
        write_random_model(folder, KANDINSKY_2_1, device=device)
        done.write_text("")
        print(
            f"wrote random weights to {folder} in {time.perf_counter() - started:.0f} s",
            file=sys.stderr,
        )
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument(
        "--full", action="store_true", help="also the released sizes (GPU + weights)"
    )
    parser.add_argument("--no-tiny", action="store_true", help="only the released sizes")
    parser.add_argument("--model", default="kandinsky-community/kandinsky-2-1")
    parser.add_argument(
        "--random-weights",
        metavar="DIR",
        help="benchmark the released structure, random weights in DIR",
    )
    args = parser.parse_args()

    from kandinsky.demo.data import write_folder
    from kandinsky.testing import write_tiny_model

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        if not args.no_tiny:
            tiny = write_tiny_model(tmp_path / "tiny")
            data64 = write_folder(tmp_path / "data64", 16, seed=0, size=64)
            for name in args.tasks:
                rows.append(
                    run(
                        name,
                        str(tiny),
                        data64,
                        64,
                        args.steps,
                        False,
                        tmp_path / "runs-tiny",
                        args.batch_size,
                    )
                    | {"weights": "tiny random"}
                )
                print(json.dumps(rows[-1]), file=sys.stderr)
        if args.full:
            if not torch.cuda.is_available():
                print("--full needs a CUDA GPU; skipped the released sizes", file=sys.stderr)
            else:
                model = (
                    str(random_weights(Path(args.random_weights)))
                    if args.random_weights
                    else args.model
                )
                weights = "random, released structure" if args.random_weights else args.model
                data768 = write_folder(tmp_path / "data768", 16, seed=0, size=768)
                for name in args.tasks:
                    size = 224 if name == "prior" else 768
                    out = tmp_path / "runs-full"
                    rows.append(
                        run(name, model, data768, size, args.steps, True, out, args.batch_size)
                        | {"weights": weights}
                    )
                    print(json.dumps(rows[-1]), file=sys.stderr)
                    shutil.rmtree(out, ignore_errors=True)  # the exported network: GBs
    RESULTS.mkdir(exist_ok=True)
    machine = f"{platform.platform()} · torch {torch.__version__} · " + (
        torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    (RESULTS / "train.json").write_text(
        json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n"
    )
    lines = [
        "# Training benchmark",
        "",
        f"{time.strftime('%Y-%m-%d')} · {machine} · `python {' '.join(sys.argv)}`",
        "",
        "Full size (768², 224² for the prior): gradient checkpointing + bf16 autocast, AdamW, fp32 master",
        "weights, decoder/inpaint with every weight trainable (the original recipe freezes the ResBlocks);",
        "peak memory is CUDA's max allocated on a GPU, peak RSS on a CPU.",
        "",
        "| trainer | size | batch | trainable (M params) | weights | device | images/s | peak memory (MB) |",
        "|---|---:|---:|---:|---|---|---:|---:|",
    ]
    for r in rows:
        rate = f"{r['images_per_s']:.2f}" if r["images_per_s"] else "—"
        lines.append(
            f"| {r['task']} | {r['size']} | {r['batch_size']} | {r['trainable_params_m']} | {r['weights']} "
            f"| {r['device']} | {rate} "
            f"| {r['peak_memory_mb']:.0f} |"
        )
    (RESULTS / "train.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
