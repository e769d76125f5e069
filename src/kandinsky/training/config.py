"""One config per training run: a YAML or TOML file plus `key=value` overrides.

The defaults are the original's recipe (reference §7): Adafactor, lr 5e-6, no warm-up, no EMA,
no grad clipping, fp32. Everything else is a knob that is off until set.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import tomllib

from kandinsky.errors import InvalidInput

TASKS = ("prior", "decoder", "inpaint", "movq", "lora")


@dataclass
class DataConfig:
    """Where the images and captions come from and how they are cut to size."""

    source: str = ""  # folder | .csv | .parquet | glob or brace pattern of .tar shards
    image_size: int = 64
    crop: Literal["center", "random"] = "center"
    buckets: bool = False  # aspect-ratio buckets of about image_size² pixels
    min_side: int = 8  # smaller images are skipped
    caption_column: str = "caption"
    path_column: str = "path"  # CSV/parquet; relative paths resolve against the file's folder
    cache_dir: str | None = None  # embedding cache (see data.EmbeddingCache)
    num_workers: int = 0
    shuffle: bool = True


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule (default: the original's Adafactor, constant lr)."""

    name: Literal["adafactor", "adamw"] = "adafactor"
    lr: float = 5e-6
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = 0
    max_grad_norm: float | None = None


@dataclass
class TrainConfig:
    """Everything one run needs; `load_config` builds it from a file and overrides."""

    task: Literal["prior", "decoder", "inpaint", "movq", "lora"]
    model: str  # weights folder / hub repo id, or "scratch:tiny" / "scratch:full"
    output_dir: str
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    batch_size: int = 1
    grad_accum: int = 1
    max_steps: int = 1000
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    channels_last: bool = True  # conv weights/activations in NHWC order: 5–7 % faster on a CPU
    ema_decay: float | None = None
    seed: int = 0
    checkpoint_every: int = 1000
    sample_every: int | None = None
    log_every: int = 10
    sample_prompts: list[str] = field(default_factory=list)
    task_options: dict[str, Any] = field(default_factory=dict)  # per task: dropouts, rank, …
    resume: str | None = None  # "latest" or a checkpoint folder

    def __post_init__(self) -> None:
        _check_choice("task", self.task, TASKS)
        for name in ("batch_size", "grad_accum", "max_steps", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise InvalidInput(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise InvalidInput(f"ema_decay must be between 0 and 1, got {self.ema_decay}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_config(
    path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()
) -> TrainConfig:
    """Read a YAML (.yaml/.yml) or TOML (.toml) file, apply `a.b=value` overrides, validate.

    Override values are parsed as YAML scalars/lists and converted to the field's type
    (`optim.lr=1e-4`, `data.image_size=128`, `task_options.rank=8`, `sample_prompts=[a, b]`).
    Unknown keys raise `InvalidInput` naming the key.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_config_file(Path(path))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"override {item!r} is not KEY=VALUE (e.g. optim.lr=1e-4)")
        _set_dotted(raw, key.strip(), _parse_scalar(value))
    cfg = _build(TrainConfig, raw, prefix="")
    if not cfg.data.source:
        raise InvalidInput(
            "config key 'data.source' is required (folder, .csv, .parquet or .tar shards)"
        )
    return cfg


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The raw mapping in a .yaml/.yml/.toml file (no defaults, no checks)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"config file {path} does not exist")
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif suffix == ".toml":
            data = tomllib.loads(text)
        else:
            raise InvalidInput(f"config file {path} must end in .yaml, .yml or .toml")
    except InvalidInput:
        raise
    except Exception as e:  # the parser's own message names line and column
        raise InvalidInput(f"cannot parse {path}: {e}") from e
    if not isinstance(data, dict):
        raise InvalidInput(
            f"config file {path} must hold a mapping of keys, not {type(data).__name__}"
        )
    return data


def _parse_scalar(text: str) -> Any:
    import yaml

    try:
        value = yaml.safe_load(text)
    except Exception:
        return text
    if isinstance(value, str):  # YAML 1.1 reads "1e-4" as text; numbers win here
        try:
            return float(value) if any(c.isdigit() for c in value) else value
        except ValueError:
            return value
    return value


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise InvalidInput(f"override {key!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            known = ", ".join(fields)
            raise InvalidInput(f"unknown config key {prefix + key!r} (known: {known})")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        full = prefix + name
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise InvalidInput(f"config key {full!r} is required")
            continue
        kwargs[name] = _convert(raw[name], hints[name], full)
    return cls(**kwargs)


def _convert(value: Any, tp: Any, key: str) -> Any:
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise InvalidInput(f"config key {key!r} must be a section, got {value!r}")
        return _build(tp, value, prefix=key + ".")
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_none and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except InvalidInput as e:
                errors.append(str(e))
        raise InvalidInput(errors[0] if errors else f"config key {key!r} cannot be {value!r}")
    if origin is Literal:
        if isinstance(value, bool) and all(isinstance(a, str) for a in args):
            # YAML 1.1 reads a bare no/yes/off/on as a bool: take it back as the word
            words = ("yes", "true", "on") if value else ("no", "false", "off")
            value = next((w for w in words if w in args), value)
        _check_choice(key, value, args)
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",")] if value else []
        if not isinstance(value, (list, tuple)):
            value = [value]
        if origin is tuple:
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_convert(v, args[0], key) for v in value)
            if len(value) != len(args):
                raise InvalidInput(f"config key {key!r} needs {len(args)} values, got {value!r}")
            return tuple(_convert(v, a, key) for v, a in zip(value, args, strict=True))
        return [_convert(v, args[0], key) for v in value] if args else list(value)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise InvalidInput(f"config key {key!r} must be a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in (
            "true",
            "yes",
            "on",
            "1",
            "false",
            "no",
            "off",
            "0",
        ):
            return value.lower() in ("true", "yes", "on", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise InvalidInput(f"config key {key!r} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise InvalidInput(f"config key {key!r} must be an integer, got {value!r}")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(value)
        except (TypeError, ValueError):
            raise InvalidInput(f"config key {key!r} must be an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise InvalidInput(f"config key {key!r} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise InvalidInput(f"config key {key!r} must be a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise InvalidInput(f"config key {key!r} must be text, got {value!r}")
        return str(value)
    return value


def _check_choice(key: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        options = ", ".join(str(c) for c in choices)
        raise InvalidInput(f"config key {key!r} is {value!r}; choose one of: {options}")
