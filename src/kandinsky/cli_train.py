"""`kandinsky train prior|decoder|inpaint|movq|lora --config run.yaml [--set KEY=VALUE …]`.

Thin: config file + overrides → `make_task` → `train`. Multi-GPU runs go through
`accelerate launch -m kandinsky.cli train …`; this file does not know about processes.
"""

from __future__ import annotations

import argparse
from typing import Any

from kandinsky.training.config import TASKS

EXAMPLES = (
    "examples:\n"
    "  kandinsky train decoder --config decoder.yaml\n"
    "  kandinsky train prior --config prior.toml --set optim.lr=1e-5 --set batch_size=8\n"
    "  kandinsky train lora --config lora.yaml --set task_options.rank=8 --output-dir runs/lora\n"
    "  kandinsky train decoder --config decoder.yaml --resume            # newest checkpoint\n"
    "  accelerate launch --num_processes 8 -m kandinsky.cli train decoder --config decoder.yaml"
)


def add_commands(commands: argparse._SubParsersAction, command_factory: Any) -> None:
    """Register `train` on the top-level parser."""
    train = command_factory(
        "train",
        "Fine-tune or train from scratch (prior, decoder, inpaint, movq, lora).",
        EXAMPLES,
    )
    train.add_argument("task", choices=TASKS, help="which network to train")
    train.add_argument("--config", metavar="FILE", help="run config (.yaml, .yml or .toml)")
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. optim.lr=1e-4 or data.image_size=128 (repeatable)",
    )
    train.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        metavar="latest|PATH",
        help="continue from the newest checkpoint (default) or from PATH",
    )
    train.add_argument("--output-dir", metavar="DIR", help="where checkpoints, logs and weights go")
    train.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    from kandinsky.errors import InvalidInput
    from kandinsky.training.config import load_config, read_config_file
    from kandinsky.training.loop import train

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    if args.resume:
        overrides.append(f"resume={args.resume}")
    if args.config is None and not overrides:
        raise InvalidInput("give --config FILE (and/or --set KEY=VALUE for every required key)")
    file_task = read_config_file(args.config).get("task") if args.config else None
    if file_task not in (None, args.task):
        raise InvalidInput(
            f"{args.config} is a {file_task!r} config but the command says {args.task!r}"
        )
    cfg = load_config(args.config, [*overrides, f"task={args.task}"])

    from kandinsky.training.tasks import make_task  # lazy: pulls in the models

    result = train(cfg, make_task(args.task, cfg))
    print(f"trained {result.steps} steps; weights in {result.output_dir / 'final'}")
    return 0
