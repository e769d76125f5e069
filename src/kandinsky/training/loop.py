"""The training loop: accelerate owns devices, processes, precision and checkpoint state;
the `Task` owns the networks and the loss; the data stream owns order and skipping.

One optimizer step = `grad_accum` micro-batches. The task's randomness comes from a
generator seeded by (seed, step, micro-batch, rank), and the data stream resumes at the
saved per-worker positions, so "N steps straight" and "k steps, kill, resume, N-k steps"
give the same weights in fp32.
"""

from __future__ import annotations

import csv
import json
import math
import resource
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, IterableDataset

from kandinsky.errors import InvalidInput
from kandinsky.training.checkpoint import (
    CheckpointState,
    find_checkpoint,
    read_state,
    save_checkpoint,
)
from kandinsky.training.config import TrainConfig
from kandinsky.training.data import SampleStream, SkipReport, _mix, build_dataset, collate


class Task(Protocol):
    """What a network brings to training; the loop brings everything else."""

    name: str

    def setup(self, cfg: TrainConfig, accelerator: Any) -> None:
        """Load or build the networks; frozen ones go to `accelerator.device`."""

    def trainable(self) -> torch.nn.Module:
        """The module to optimize (its parameters with requires_grad are trained)."""

    def set_trainable(self, module: torch.nn.Module) -> None:
        """Receive the module back from `accelerator.prepare` (maybe DDP-wrapped)."""

    def loss(
        self, batch: dict, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss for one micro-batch, plus extra numbers to log."""

    def sample(self, step: int, folder: Path) -> list[Path]:
        """Images for the log, on the main process only (use the unwrapped model)."""

    # Optional, for a task with a second network trained against the first (MoVQ's GAN):
    # adversary() -> nn.Module | None; set_adversary(module); set_step(step) before each
    # optimizer step; adversary_loss() -> (loss, logs) | None after each micro-batch.

    def save_weights(self, folder: Path, state: dict[str, torch.Tensor]) -> None:
        """Export the trained weights (a component folder, LoRA safetensors, …).

        `state` is the full state dict of `trainable()` gathered from every process (the
        live module may hold only a shard under FSDP/ZeRO-3); main process only.
        """


@dataclass
class TrainResult:
    steps: int
    losses: list[float] = field(default_factory=list)  # one per optimizer step of this run
    report: SkipReport = field(default_factory=SkipReport)
    output_dir: Path = Path(".")
    # wall-clock seconds of training to reach `steps`; of those, in the earlier runs resumed
    seconds: float = 0.0
    resumed_seconds: float = 0.0


class EMA:
    """Exponential moving average of the trainable parameters (fp32 shadow copies)."""

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.num_updates = 0
        self.shadow = {
            name: p.detach().float().clone()
            for name, p in module.named_parameters()
            if p.requires_grad
        }

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        self.num_updates += 1
        pairs = [
            (self.shadow[n], p.detach()) for n, p in module.named_parameters() if n in self.shadow
        ]
        if not pairs:
            return
        shadows, params = zip(*pairs, strict=True)
        # one multi-tensor lerp instead of a Python loop over ~400 tensors
        torch._foreach_lerp_(list(shadows), [p.float() for p in params], 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        """Put the averages into `module`; returns the previous values for `restore`."""
        saved = {}
        for name, p in module.named_parameters():
            if name in self.shadow:
                saved[name] = p.detach().clone()
                p.copy_(self.shadow[name].to(p.dtype))
        return saved

    @torch.no_grad()
    def restore(self, module: torch.nn.Module, saved: dict[str, torch.Tensor]) -> None:
        for name, p in module.named_parameters():
            if name in saved:
                p.copy_(saved[name])

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = state["decay"]
        self.num_updates = state["num_updates"]
        for name, value in state["shadow"].items():
            self.shadow[name].copy_(value)


def lr_lambda(cfg: TrainConfig):
    """Multiplier of the base lr at a step: linear warm-up, then constant or cosine to 0."""
    warmup, total, schedule = cfg.optim.warmup_steps, cfg.max_steps, cfg.optim.schedule

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return factor


def make_optimizer(cfg: TrainConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.name == "adafactor":  # the original recipe (reference §7)
        from transformers.optimization import Adafactor

        return Adafactor(
            params,
            lr=o.lr,
            weight_decay=o.weight_decay,
            scale_parameter=False,
            relative_step=False,
            warmup_init=False,
        )
    if o.name == "adamw":
        return torch.optim.AdamW(
            params,
            lr=o.lr,
            betas=tuple(o.betas),
            weight_decay=o.weight_decay,
            fused=_fused_adam_supported(params) or None,
        )
    raise InvalidInput(f"optim.name is {o.name!r}; choose adafactor or adamw")


def _fused_adam_supported(params: list[torch.nn.Parameter]) -> bool:
    """The fused AdamW kernel (one pass over every tensor) for float parameters on CPU or CUDA:
    on a CPU it takes a third of the per-tensor loop's time (≈ 4 % of a demo decoder step).
    The update is the same up to float rounding (≈ 1e-8 on the weights)."""
    return all(
        p.device.type in ("cpu", "cuda")
        and p.dtype in (torch.float32, torch.float16, torch.bfloat16)
        for p in params
    )


def train(cfg: TrainConfig, task: Task, *, dataset: Any = None) -> TrainResult:
    """Run (or resume) training to `cfg.max_steps`; returns losses and the skip report."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    output_dir = Path(cfg.output_dir)
    trackers = ["tensorboard"] if _has_tensorboard() else None
    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.grad_accum,
        mixed_precision=cfg.mixed_precision,
        log_with=trackers,
        project_dir=str(output_dir),
    )
    main = accelerator.is_main_process
    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
    set_seed(cfg.seed)

    task.setup(cfg, accelerator)
    module = task.trainable()
    if cfg.gradient_checkpointing:
        _enable_gradient_checkpointing(module)
    if cfg.channels_last:  # only 4-D (conv) weights change order; checkpoints stay NCHW
        module.to(memory_format=torch.channels_last)
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise InvalidInput(f"task {task.name!r} has no trainable parameters (all frozen)")
    optimizer = make_optimizer(cfg, params)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    module, optimizer = accelerator.prepare(module, optimizer)
    task.set_trainable(module)
    adversary, adversary_optimizer = _prepare_adversary(cfg, task, accelerator)
    models = (module, adversary) if adversary is not None else (module,)
    checkpoint = find_checkpoint(output_dir, cfg.resume) if cfg.resume else None
    state = read_state(checkpoint) if checkpoint is not None else None
    ema = EMA(accelerator.unwrap_model(module), cfg.ema_decay) if cfg.ema_decay else None
    # Not prepared: accelerate would step it once per process; we step it once per update.
    accelerator.register_for_checkpointing(scheduler)
    # accelerate loads registered objects by position, so register what the checkpoint holds.
    registered_ema = ema
    if state is not None and (state.ema is not None) != (ema is not None):
        if ema is None:  # EMA switched off since: carried along unused, so files stay aligned
            registered_ema = EMA(accelerator.unwrap_model(module), state.ema["decay"])
        else:  # EMA switched on since: it starts from the resumed weights
            registered_ema = None
            warnings.warn("ema_decay is new since the checkpoint; the EMA starts now", stacklevel=2)
    if registered_ema is not None:
        accelerator.register_for_checkpointing(registered_ema)

    stream = _as_stream(dataset, cfg, accelerator)
    report = SkipReport()
    start_step, positions, batches, seconds_before = 0, {}, 0, 0.0
    if checkpoint is not None and state is not None:
        accelerator.load_state(str(checkpoint))
        if ema is not None and registered_ema is None:
            ema = registered_ema = EMA(accelerator.unwrap_model(module), cfg.ema_decay)
            accelerator.register_for_checkpointing(ema)
        elif ema is not None:
            ema.decay = cfg.ema_decay  # a changed decay applies from here on
        start_step, seconds_before = state.step, state.seconds
        rank_state = state.ranks[accelerator.process_index] if state.ranks else {}
        positions = {int(k): v for k, v in rank_state.get("positions", {}).items()}
        batches = int(rank_state.get("batches", 0))
        if rank_state.get("num_workers", cfg.data.num_workers) != cfg.data.num_workers:
            warnings.warn(
                "data.num_workers changed since the checkpoint; data order will differ",
                stacklevel=2,
            )
        report = SkipReport.from_dict(rank_state.get("report", {}))
        accelerator.print(f"resumed from {checkpoint} at step {start_step}")
    elif cfg.resume:
        accelerator.print(f"no checkpoint in {output_dir / 'checkpoints'} yet; starting at step 0")
    if isinstance(stream, SampleStream):
        stream.set_seed(cfg.seed)
        stream.set_batch_size(cfg.batch_size)
        stream.set_positions(positions, batches)

    loader = DataLoader(
        stream,
        batch_size=cfg.batch_size,
        collate_fn=collate,
        num_workers=cfg.data.num_workers,
        pin_memory=accelerator.device.type == "cuda",
    )
    if trackers:
        accelerator.init_trackers("tensorboard", config=_flat_hparams(cfg))

    log = _CsvLog(output_dir / "log.csv") if main else None
    progress = _progress(cfg.max_steps, start_step, disable=not main)
    losses: list[float] = []
    interval_losses: list[float] = []
    interval_images, interval_start = 0, time.perf_counter()
    rank = accelerator.process_index
    run_start = time.perf_counter()
    data = iter(loader)
    step = start_step
    module.train()
    while step < cfg.max_steps:
        if adversary is not None:
            task.set_step(step)
        step_loss = 0.0
        extra: dict[str, float] = {}
        for micro in range(cfg.grad_accum):
            try:
                batch = next(data)
            except StopIteration:
                raise InvalidInput(f"the data ran out on rank {rank}: {report.summary()}") from None
            batches += 1
            for reason, key in batch.pop("skipped", []):
                report.add(reason, key)
            positions.update(batch.pop("position", {}))
            batch = _to_device(batch, accelerator.device)
            interval_images += _batch_len(batch)
            generator = torch.Generator(device=accelerator.device)
            generator.manual_seed(_mix(cfg.seed, step, micro, rank))
            with accelerator.accumulate(*models):
                with accelerator.autocast():
                    loss, logs = task.loss(batch, generator)
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.optim.max_grad_norm:
                    accelerator.clip_grad_norm_(params, cfg.optim.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if adversary is not None:
                    logs = {**logs, **_adversary_step(cfg, task, accelerator, adversary_optimizer)}
            step_loss += loss.detach().float().item() / cfg.grad_accum
            for k, v in logs.items():
                extra[k] = extra.get(k, 0.0) + float(v) / cfg.grad_accum
        if not accelerator.optimizer_step_was_skipped:
            scheduler.step()
        if ema is not None:
            ema.update(accelerator.unwrap_model(module))
        step += 1
        losses.append(step_loss)
        interval_losses.append(step_loss)
        progress.update(1)
        progress.set_postfix(loss=f"{step_loss:.4f}")

        if step % cfg.log_every == 0 or step == cfg.max_steps:
            elapsed = max(time.perf_counter() - interval_start, 1e-9)
            values = {
                "loss": sum(interval_losses) / len(interval_losses),
                "lr": scheduler.get_last_lr()[0],
                "images_per_s": interval_images * accelerator.num_processes / elapsed,
                "max_memory_mb": _max_memory_mb(accelerator.device),
                **extra,
            }
            if trackers:
                accelerator.log(values, step=step)
            if log is not None:
                log.write(step, values)
            interval_losses, interval_images, interval_start = [], 0, time.perf_counter()
        if cfg.sample_every and step % cfg.sample_every == 0 and main:
            _sample(task, step, output_dir / "samples", accelerator, module, ema)
        if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
            data_state = {"positions": positions, "batches": batches}
            seconds = seconds_before + time.perf_counter() - run_start
            _checkpoint(
                accelerator, output_dir, step, data_state, report, cfg, registered_ema, seconds
            )
    progress.close()

    accelerator.wait_for_everyone()
    reports = _gather(accelerator, report.to_dict())
    total = SkipReport()
    for r in reports:
        total.merge(SkipReport.from_dict(r))
    _export(accelerator, module, ema, task, output_dir / "final")
    if main:
        (output_dir / "skip_report.json").write_text(json.dumps(total.to_dict(), indent=1))
        print(f"[{task.name}] {total.summary()}", file=sys.stderr)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(
        steps=step,
        losses=losses,
        report=total,
        output_dir=output_dir,
        seconds=seconds_before + time.perf_counter() - run_start,
        resumed_seconds=seconds_before,
    )


def _prepare_adversary(cfg: TrainConfig, task: Task, accelerator: Any) -> tuple[Any, Any]:
    """A task's second network (the MoVQ discriminator), with its own optimizer.

    Same optimizer settings as the main one, constant learning rate (VQGAN's recipe).
    Prepared after the main module, so checkpoints hold it as the second model/optimizer.
    """
    adversary = task.adversary() if hasattr(task, "adversary") else None
    if adversary is None:
        return None, None
    optimizer = make_optimizer(cfg, [p for p in adversary.parameters() if p.requires_grad])
    adversary, optimizer = accelerator.prepare(adversary, optimizer)
    task.set_adversary(adversary)
    adversary.train()
    return adversary, optimizer


def _adversary_step(
    cfg: TrainConfig, task: Task, accelerator: Any, optimizer: Any
) -> dict[str, float]:
    """One micro-batch of the adversary's loss (inside the loop's `accumulate`)."""
    with accelerator.autocast():
        result = task.adversary_loss()
    if result is None:  # before its start step
        return {}
    loss, logs = result
    accelerator.backward(loss)
    if accelerator.sync_gradients and cfg.optim.max_grad_norm:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        accelerator.clip_grad_norm_(params, cfg.optim.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return logs


def _export(
    accelerator: Any, module: torch.nn.Module, ema: EMA | None, task: Task, folder: Path
) -> None:
    """`task.save_weights` with the full trained state (EMA weights when on).

    Every process takes part: under FSDP or DeepSpeed ZeRO-3 each holds only a shard, and
    `get_state_dict` gathers them (rank 0 alone would deadlock or export a shard). The EMA
    shadows are per-process too, so every process swaps them in around the gather, and
    swaps back only after the save (the gathered tensors may be the live ones).
    """
    unwrapped = accelerator.unwrap_model(module)
    saved = ema.copy_to(unwrapped) if ema is not None else None
    try:
        try:
            state = accelerator.get_state_dict(module)
        except ValueError as e:  # ZeRO-3 without gathering on save
            raise InvalidInput(
                "DeepSpeed ZeRO-3 cannot export the trained weights: set zero3_save_16bit_model: "
                f"true (stage3_gather_16bit_weights_on_model_save) in its config ({e})"
            ) from e
        if accelerator.is_main_process:
            task.save_weights(folder, state or {})
    finally:
        if saved is not None:
            ema.restore(unwrapped, saved)


def _checkpoint(
    accelerator: Any,
    output_dir: Path,
    step: int,
    data_state: dict[str, Any],
    report: SkipReport,
    cfg: TrainConfig,
    ema: EMA | None,
    seconds: float,
) -> None:
    rank_state = {
        "positions": {str(k): v for k, v in data_state["positions"].items()},
        "batches": data_state["batches"],
        "num_workers": cfg.data.num_workers,
        "report": report.to_dict(),
    }
    ranks = _gather(accelerator, rank_state)
    state = CheckpointState(
        step=step,
        ranks=ranks,
        ema={"decay": ema.decay, "num_updates": ema.num_updates} if ema is not None else None,
        seconds=seconds,
    )
    save_checkpoint(accelerator, output_dir / "checkpoints", state)


def _gather(accelerator: Any, obj: Any) -> list[Any]:
    if accelerator.num_processes == 1:
        return [obj]
    from accelerate.utils import gather_object

    return gather_object([obj])


def _sample(
    task: Task, step: int, folder: Path, accelerator: Any, module: Any, ema: EMA | None
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    unwrapped = accelerator.unwrap_model(module)
    saved = ema.copy_to(unwrapped) if ema is not None else None
    try:
        with torch.no_grad():
            paths = task.sample(step, folder) or []
    finally:
        if saved is not None:
            ema.restore(unwrapped, saved)
    _log_images(accelerator, paths, step)


def _log_images(accelerator: Any, paths: list[Path], step: int) -> None:
    if not paths:
        return
    try:
        import numpy as np
        from PIL import Image

        tracker = accelerator.get_tracker("tensorboard", unwrap=True)
        for i, path in enumerate(paths):
            image = np.asarray(Image.open(path).convert("RGB"))
            tracker.add_image(f"samples/{i}", image, step, dataformats="HWC")
    except Exception:  # samples on disk are what matters; the tracker view is a bonus
        pass


def _as_stream(dataset: Any, cfg: TrainConfig, accelerator: Any) -> Any:
    rank, world = accelerator.process_index, accelerator.num_processes
    if dataset is None:
        return build_dataset(cfg.data, rank, world, seed=cfg.seed)
    if isinstance(dataset, SampleStream):
        dataset.rank, dataset.world_size = rank, world
        return dataset
    if isinstance(dataset, IterableDataset):
        warnings.warn(
            "a plain IterableDataset cannot resume at its position; use build_dataset or a "
            "map-style dataset",
            stacklevel=3,
        )
        return dataset
    if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
        return SampleStream.from_items(dataset, cfg.data, rank, world)
    raise InvalidInput(f"dataset must be a torch Dataset or IterableDataset, got {type(dataset)}")


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }


def _batch_len(batch: dict[str, Any]) -> int:
    for value in batch.values():
        if isinstance(value, torch.Tensor):
            return int(value.shape[0])
        if isinstance(value, list):
            return len(value)
    return 0


def _max_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def _enable_gradient_checkpointing(module: torch.nn.Module) -> None:
    found = False
    for sub in module.modules():  # our models carry a `gradient_checkpointing` flag
        if isinstance(getattr(sub, "gradient_checkpointing", None), bool):
            sub.gradient_checkpointing = True
            found = True
    if not found:
        warnings.warn(
            f"{type(module).__name__} has no gradient_checkpointing switch; training without it",
            stacklevel=3,
        )


def _has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def _flat_hparams(cfg: TrainConfig) -> dict[str, Any]:
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}{k}.", v)
        elif isinstance(value, (bool, int, float, str)):
            flat[prefix[:-1]] = value
        else:
            flat[prefix[:-1]] = str(value)

    walk("", cfg.to_dict())
    return flat


class _CsvLog:
    """log.csv: the fixed columns, then any task numbers (gan, disc, …) as they appear.

    A column that first shows up mid-run (the GAN terms after disc_start) rewrites the
    small file once with the wider header; earlier rows leave it blank.
    """

    COLUMNS = ("step", "loss", "lr", "images_per_s", "max_memory_mb")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.columns = list(self.COLUMNS)
        if path.exists():
            with open(path, newline="") as f:
                header = next(csv.reader(f), None)
            self.columns = header or self.columns

    def write(self, step: int, values: dict[str, float]) -> None:
        new = [k for k in values if k not in self.columns]
        if new:
            self._widen(new)
        new_file = not self.path.exists()
        with open(self.path, "a", newline="") as f:
            writer = csv.writer(f)
            if new_file:
                writer.writerow(self.columns)
            row = {"step": step, **values}
            writer.writerow([_cell(row.get(c)) for c in self.columns])

    def _widen(self, extra: list[str]) -> None:
        rows: list[list[str]] = []
        if self.path.exists():
            with open(self.path, newline="") as f:
                rows = list(csv.reader(f))[1:]
        self.columns += extra
        if rows:
            tmp = self.path.with_suffix(".tmp")
            with open(tmp, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(self.columns)
                writer.writerows(r + [""] * (len(self.columns) - len(r)) for r in rows)
            tmp.replace(self.path)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return str(value) if isinstance(value, int) else f"{value:.6g}"


def _progress(total: int, initial: int, disable: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=disable, desc="train", dynamic_ncols=True)
