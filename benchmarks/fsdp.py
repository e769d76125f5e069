"""Sharded training of the full-size decoder: FSDP through `accelerate launch`, end to end.

    python benchmarks/fsdp.py --random-weights /tmp/k21          # every GPU of this machine
    python benchmarks/fsdp.py --model kandinsky-community/kandinsky-2-1 --gpus 8 --steps 10

Runs `kandinsky train decoder` (768², bf16, gradient checkpointing, AdamW) under
`accelerate launch --use_fsdp` (FULL_SHARD, size-based wrapping) for `--steps` steps (the run
checkpoints at its last step), then launches again with `--resume latest` for two more steps, and
finally reads the exported UNet back with `kandinsky.load`. It checks that the resumed run
continued from the checkpoint's step, that the export holds every weight of the released
UNet, and that training changed them; it reports images/s and each phase's peak memory
(log.csv). `--random-weights DIR`: the released structure with random weights, as in
benchmarks/train.py. Results go to benchmarks/results/fsdp.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train import log_rows, random_weights  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SRC = Path(__file__).resolve().parents[1] / "src"
SIZE = 768
PRECISION = "bf16"
SHARDING = [
    "--use_fsdp",
    *("--fsdp_sharding_strategy", "FULL_SHARD", "--fsdp_auto_wrap_policy", "SIZE_BASED_WRAP"),
    *("--fsdp_min_num_params", "20000000", "--fsdp_use_orig_params", "true"),
    *("--fsdp_state_dict_type", "SHARDED_STATE_DICT"),
]


def launch(gpus: int, args: list[str], log: Path) -> float:
    """One `accelerate launch` of the CLI; its output goes to `log`. Returns the seconds it took."""
    command = [sys.executable, "-m", "accelerate.commands.launch", *SHARDING]
    command += ["--num_processes", str(gpus), "--num_machines", "1", "--mixed_precision", PRECISION]
    command += ["--dynamo_backend", "no", "--main_process_port", "0"]
    command += ["-m", "kandinsky.cli", "train", "decoder", *args]
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    started = time.perf_counter()
    with log.open("w") as f:
        done = subprocess.run(command, env=env, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = log.read_text()[-4000:]
        raise SystemExit(f"accelerate launch failed ({done.returncode}):\n{tail}")
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gpus", type=int, default=torch.cuda.device_count())
    parser.add_argument("--steps", type=int, default=2, help="steps of the first launch")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--model", default="kandinsky-community/kandinsky-2-1")
    parser.add_argument(
        "--random-weights", metavar="DIR", help="the released structure, random weights in DIR"
    )
    parser.add_argument("--work", metavar="DIR", help="run folder (default: a temporary one)")
    args = parser.parse_args()
    if args.gpus < 1:
        raise SystemExit("FSDP through accelerate needs CUDA GPUs; none found")
    model = str(random_weights(Path(args.random_weights))) if args.random_weights else args.model

    from kandinsky import load
    from kandinsky.demo.data import write_folder

    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        tmp_path = Path(tmp)
        data = write_folder(tmp_path / "data", 16, seed=0, size=SIZE)
        out = tmp_path / "run"
        common = [f"--output-dir={out}"] + [
            f"--set={kv}"
            for kv in (
                f"model={model}",
                f"data.source={data}",
                f"data.image_size={SIZE}",
                f"batch_size={args.batch_size}",
                "gradient_checkpointing=true",
                f"mixed_precision={PRECISION}",
                "optim.name=adamw",
                "optim.lr=1e-4",
                "optim.max_grad_norm=1.0",
                "log_every=1",
                f"checkpoint_every={args.steps}",  # one checkpoint per launch (each: GBs)
            )
        ]
        first = launch(
            args.gpus, [*common, f"--set=max_steps={args.steps}"], tmp_path / "first.log"
        )
        rows_first = log_rows(out)
        checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
        resumed = launch(
            args.gpus,
            [*common, f"--set=max_steps={args.steps + 2}", "--resume"],
            tmp_path / "resume.log",
        )
        rows_all = log_rows(out)
        rows_resumed = rows_all[len(rows_first) :]
        steps_resumed = [int(r["step"]) for r in rows_resumed]

        trained = load(out / "final", components=["unet"]).unet.state_dict()
        initial = load(model, components=["unet"]).unet.state_dict()
        missing = sorted(set(initial) - set(trained))
        changed = sum(not torch.equal(trained[k], initial[k]) for k in initial if k in trained)
        warm = rows_first[1:] + rows_resumed[1:]  # each launch's first step compiles and warms up
        rates = [float(r["images_per_s"]) for r in warm if r["images_per_s"]]
        result = {
            "gpus": args.gpus,
            "batch_size_per_gpu": args.batch_size,
            "weights": "random, released structure" if args.random_weights else model,
            "checkpoints": checkpoints,
            "steps_after_resume": steps_resumed,
            "resumed_from_checkpoint": steps_resumed == [args.steps + 1, args.steps + 2],
            "export_missing_keys": len(missing),
            "export_tensors_changed": f"{changed}/{len(initial)}",
            "images_per_s": sum(rates) / len(rates) if rates else None,
            "peak_memory_mb_first": max(float(r["max_memory_mb"]) for r in rows_first),
            "peak_memory_mb_resumed": max(float(r["max_memory_mb"]) for r in rows_resumed),
            "seconds_first_launch": round(first),
            "seconds_resumed_launch": round(resumed),
            "final_loss": float(rows_all[-1]["loss"]),
        }
    print(json.dumps(result, indent=2))
    ok = result["resumed_from_checkpoint"] and not missing and changed > 0
    machine = f"{platform.platform()} · torch {torch.__version__} · {args.gpus} × {torch.cuda.get_device_name(0)}"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fsdp.json").write_text(
        json.dumps({"machine": machine, "ok": ok, **result}, indent=2) + "\n"
    )
    lines = [
        "# FSDP training check (decoder, full size)",
        "",
        f"{time.strftime('%Y-%m-%d')} · {machine} · `python {' '.join(sys.argv)}`",
        "",
        "`accelerate launch --use_fsdp` (FULL_SHARD, size-based wrap ≥ 20 M parameters, sharded",
        "checkpoints), `kandinsky train decoder` at 768², bf16, gradient checkpointing, AdamW;",
        f"{args.steps} steps (checkpointed at the last), then `--resume` for 2 more, then",
        "the export read back with `kandinsky.load`.",
        "",
        "| check | result |",
        "|---|---|",
    ]
    for key, value in result.items():
        lines.append(f"| {key} | {value} |")
    lines.append(f"| **all checks passed** | {'yes' if ok else 'NO'} |")
    (RESULTS / "fsdp.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
