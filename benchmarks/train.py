"""Training throughput and peak memory per trainer.

    python benchmarks/train.py                  # tiny configs on this machine (CPU or GPU)
    python benchmarks/train.py --full           # the released sizes too (needs a GPU and the weights)
    python benchmarks/train.py --steps 20 --tasks prior decoder

Each trainer runs `kandinsky.training.train` for a few steps on synthetic captioned shapes
(kandinsky.demo.data) and reports images/s after the first (warm-up) step and the peak
memory (CUDA max allocated on a GPU, peak RSS on the CPU). Full size needs the real weights
(`--model`, default kandinsky-community/kandinsky-2-1) and is the configuration of the goal:
decoder full fine-tune at 768² with gradient checkpointing + bf16, LoRA at 768².
Results go to benchmarks/results/train.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
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


def run(task_name: str, model: str, data: Path, size: int, steps: int, full: bool, out: Path) -> dict:
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
        "checkpoint_every=100000",
        "log_every=1",
        "optim.name=adamw",
        "optim.lr=1e-5",
    ]
    if full:
        overrides += ["gradient_checkpointing=true", "mixed_precision=bf16"]
    cfg = load_config(None, overrides)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    task = make_task(task_name, cfg)
    started = time.perf_counter()
    result = train(cfg, task)
    elapsed = time.perf_counter() - started
    log = (out / task_name / "log.csv").read_text().splitlines()
    header, rows = log[0].split(","), [dict(zip(log[0].split(","), line.split(","), strict=False)) for line in log[1:]]
    rates = [float(r["images_per_s"]) for r in rows[1:] if r.get("images_per_s")]
    return {
        "task": task_name,
        "size": size,
        "device": device,
        "steps": result.steps,
        "images_per_s": sum(rates) / len(rates) if rates else None,
        "peak_memory_mb": peak_memory_mb(device),
        "seconds": elapsed,
        "final_loss": result.losses[-1] if result.losses else None,
        "log_columns": header,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--full", action="store_true", help="also the released sizes (GPU + weights)")
    parser.add_argument("--model", default="kandinsky-community/kandinsky-2-1")
    args = parser.parse_args()

    from kandinsky.demo.data import write_folder
    from kandinsky.testing import write_tiny_model

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        tiny = write_tiny_model(tmp_path / "tiny")
        data64 = write_folder(tmp_path / "data64", 16, seed=0, size=64)
        for name in args.tasks:
            rows.append(run(name, str(tiny), data64, 64, args.steps, False, tmp_path / "runs-tiny"))
            print(json.dumps(rows[-1]), file=sys.stderr)
        if args.full:
            if not torch.cuda.is_available():
                print("--full needs a CUDA GPU; skipped the released sizes", file=sys.stderr)
            else:
                data768 = write_folder(tmp_path / "data768", 16, seed=0, size=768)
                for name in args.tasks:
                    size = 224 if name == "prior" else 768
                    rows.append(run(name, args.model, data768, size, args.steps, True, tmp_path / "runs-full"))
                    print(json.dumps(rows[-1]), file=sys.stderr)
    RESULTS.mkdir(exist_ok=True)
    machine = f"{platform.platform()} · torch {torch.__version__} · " + (
        torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    )
    (RESULTS / "train.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    lines = [
        "# Training benchmark",
        "",
        f"{time.strftime('%Y-%m-%d')} · {machine} · `python benchmarks/train.py --steps {args.steps}`",
        "",
        "| trainer | size | device | images/s | peak memory (MB) |",
        "|---|---:|---|---:|---:|",
    ]
    for r in rows:
        rate = f"{r['images_per_s']:.2f}" if r["images_per_s"] else "—"
        lines.append(f"| {r['task']} | {r['size']} | {r['device']} | {rate} | {r['peak_memory_mb']:.0f} |")
    (RESULTS / "train.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
