"""Atomic, resumable checkpoints on top of `accelerator.save_state`.

A checkpoint is `output_dir/checkpoints/step-XXXXXX/`: accelerate's files (model, optimizer,
scheduler, EMA, RNG states per process, grad scaler) plus `trainer_state.json` (step, each
rank's data positions and skip report, training seconds so far). It is written into
`.tmp-step-XXXXXX/` and renamed only when complete, so a run killed while saving leaves no
half checkpoint behind that `resume="latest"` could pick.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kandinsky.errors import InvalidInput

STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"step-(\d+)")


@dataclass
class CheckpointState:
    step: int
    ranks: list[dict[str, Any]] = field(default_factory=list)  # positions, num_workers, report
    ema: dict[str, Any] | None = (
        None  # decay and update count; the tensors are in accelerate's files
    )
    # wall-clock seconds of training that led to this checkpoint, summed over resumed runs
    # (time spent after the last checkpoint of a killed run is redone, so not counted)
    seconds: float = 0.0


def save_checkpoint(accelerator: Any, root: Path, state: CheckpointState) -> Path:
    """Every process calls this; the main process does the rename. Returns the folder."""
    final = root / f"step-{state.step:06d}"
    tmp = root / f".tmp-step-{state.step:06d}"
    main = accelerator.is_main_process
    if main:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if main:
            _write_json(tmp / STATE_FILE, asdict(state))
            old = root / f".old-step-{state.step:06d}"
            if final.exists():  # re-saving a step (resumed, then finished): swap, then drop
                os.replace(final, old)
            os.replace(tmp, final)
            _fsync_dir(root)
            if old.exists():
                shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    accelerator.wait_for_everyone()
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _NAME.fullmatch(path.name)
        if match and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return [p for _, p in sorted(found)]


def find_checkpoint(output_dir: Path, resume: str) -> Path | None:
    """`"latest"` → newest complete checkpoint of this run (None if none yet); else the path."""
    if resume == "latest":
        found = list_checkpoints(Path(output_dir) / "checkpoints")
        return found[-1] if found else None
    path = Path(resume).expanduser()
    if (path / STATE_FILE).is_file():
        return path
    found = list_checkpoints(path / "checkpoints") or list_checkpoints(path)
    if found:
        return found[-1]
    raise InvalidInput(f"resume: {resume} is not a checkpoint folder (no {STATE_FILE} in it)")


def read_state(folder: Path) -> CheckpointState:
    data = json.loads((Path(folder) / STATE_FILE).read_text())
    return CheckpointState(
        step=int(data["step"]),
        ranks=data.get("ranks", []),
        ema=data.get("ema"),
        seconds=float(data.get("seconds", 0.0)),
    )


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
