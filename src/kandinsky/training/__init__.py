"""Training and fine-tuning: config, data, the accelerate loop and checkpoints.

`import kandinsky.training` stays light; `train` (and accelerate) load on first use.
"""

from __future__ import annotations

from typing import Any

from kandinsky.training.config import DataConfig, OptimConfig, TrainConfig, load_config

__all__ = [
    "DataConfig",
    "OptimConfig",
    "TrainConfig",
    "load_config",
    "train",
    "TrainResult",
    "Task",
]


def __getattr__(name: str) -> Any:
    if name in ("train", "TrainResult", "Task"):
        from kandinsky.training import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'kandinsky.training' has no attribute {name!r}")
