"""`load` / `from_pretrained`: one entry point from files to ready networks.

Each network is built on the meta device (no memory, no random init), its tensors are read
one by one, converted (key rules for the original layout, dtype, device) and assigned in
place, and the source tensor is dropped as soon as it is used: loading never holds two
copies of the weights.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kandinsky import hub
from kandinsky.checkpoints import diffusers_movq, diffusers_prior, diffusers_unet
from kandinsky.checkpoints.diffusers_text import clip_from_json, mclip_from_json
from kandinsky.checkpoints.io import StateDictReader, TensorInfo, load_pickle, open_state_dict
from kandinsky.checkpoints.layouts import COMPONENTS, NETWORKS, Found, describe_expected, scan
from kandinsky.checkpoints.original import (
    IGNORED_ORIGINAL_KEYS,
    STATS_MEAN,
    STATS_STD,
    KeyMap,
    Source,
    build_key_map,
    clip_text_rules,
    clip_vision_rules,
    movq_rules,
    prior_rules,
    unet_rules,
)
from kandinsky.config import KANDINSKY_2_1, ModelConfig
from kandinsky.defaults import GenerationDefaults, read_defaults
from kandinsky.errors import (
    CorruptWeights,
    InvalidInput,
    KandinskyError,
    LayoutError,
    MissingWeights,
    ShapeMismatch,
    WeightsError,
)

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}

# Buffers transformers recomputes at init; on the meta device we rebuild them ourselves.
_DERIVED_BUFFERS: dict[str, Callable[[torch.Size], torch.Tensor]] = {
    "position_ids": lambda shape: torch.arange(shape[-1]).expand(shape).clone(),
    "token_type_ids": lambda shape: torch.zeros(shape, dtype=torch.long),
}


# OpenAI's CLIP file holds both towers; each tower leaves the other's tensors alone.
_OTHER_TOWER: dict[str, Callable[[str], bool]] = {
    "clip_text": lambda key: key.startswith("visual."),
    "clip_vision": lambda key: not key.startswith("visual."),
}


@dataclass
class Components:
    """The loaded networks (None where not requested or not found) and where each came from."""

    config: ModelConfig
    prior: nn.Module | None = None
    unet: nn.Module | None = None
    inpaint_unet: nn.Module | None = None
    movq: nn.Module | None = None
    text_encoder: nn.Module | None = None
    tokenizer: Any = None
    clip_text: nn.Module | None = None
    clip_tokenizer: Any = None
    clip_vision: nn.Module | None = None
    sources: dict[str, str] = field(default_factory=dict)
    layouts: dict[str, str] = field(default_factory=dict)
    # the sampling settings the folders recommend (generation_defaults.json), else the original's
    defaults: GenerationDefaults = field(default_factory=GenerationDefaults)

    def networks(self) -> dict[str, nn.Module]:
        return {name: getattr(self, name) for name in NETWORKS if getattr(self, name) is not None}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPES.values():
            return dtype
    elif isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.lower().removeprefix("torch.")]
    raise InvalidInput(f"dtype {dtype!r} is not supported; use one of fp32, fp16, bf16.")


def parse_device(device: str | torch.device) -> torch.device:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InvalidInput(
            f"device {device!r} is not a device name (try 'cpu', 'cuda', 'cuda:1', 'mps')."
        ) from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInput(
            f"device {device} asked for, but this machine has no CUDA GPU; use device='cpu'."
        )
    return device


def load(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] = hub.DEFAULT_REPO,
    *,
    components: Iterable[str] | None = None,
    config: ModelConfig | None = None,
    dtype: str | torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike[str] | None = None,
    revision: str | None = None,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> Components:
    """Load Kandinsky 2.1 networks from folders or hub repos, in the original or diffusers layout.

    `source` is a folder, a repo id (known releases pull in their companion repos: the
    diffusers prior/decoder/inpaint trio; CLIP for the original release), or a list of these,
    searched in order. `components` picks networks (default: all of them); a requested
    component that is nowhere raises `MissingWeights`. `config` gives the architecture of
    original-layout files (default: the released one); diffusers folders carry their own.
    `progress(component, index, total)` is called before each component loads.
    """
    wanted = parse_components(components)
    dtype = parse_dtype(dtype)
    device = parse_device(device)
    options = hub.HubOptions(cache_dir, revision, local_files_only, token)
    sources = [source] if isinstance(source, str | os.PathLike) else list(source)
    if not sources:
        raise InvalidInput("source is empty; pass a folder or a repo id.")

    found, searched = find_components(sources, wanted, options)
    missing = [c for c in wanted if c not in found]
    if missing:
        raise MissingWeights(
            f"could not find {', '.join(missing)} in {', '.join(str(s) for s in searched)}. "
            f"Expected {describe_expected()}."
        )
    model_config = resolve_config(config or KANDINSKY_2_1, {c: found[c] for c in wanted})
    result = Components(config=model_config, defaults=read_defaults(searched))
    for index, name in enumerate(wanted):
        if progress is not None:
            progress(name, index, len(wanted))
        where = found[name]
        result.sources[name] = str(where.files[0])
        result.layouts[name] = where.layout
        if name in NETWORKS:
            setattr(result, name, load_network(name, model_config, where, dtype, device))
        else:
            setattr(result, name, load_tokenizer(where))
    return result


from_pretrained = load


def find_components(
    sources: Sequence[str | os.PathLike[str]], wanted: tuple[str, ...], options: hub.HubOptions
) -> tuple[dict[str, Found], list[Path]]:
    """Where each component is (first source wins), and the folders that were searched."""
    found: dict[str, Found] = {}
    searched: list[Path] = []
    for item in sources:
        for folder in hub.resolve_all(item, wanted, options):
            searched.append(folder)
            for name, where in scan(folder).items():
                found.setdefault(name, where)
    return found, searched


def parse_components(components: Iterable[str] | None) -> tuple[str, ...]:
    if components is None:
        return COMPONENTS
    wanted = tuple(dict.fromkeys([components] if isinstance(components, str) else components))
    unknown = [c for c in wanted if c not in COMPONENTS]
    if unknown:
        raise InvalidInput(f"unknown component(s) {unknown}; choose from {', '.join(COMPONENTS)}.")
    return wanted


def resolve_config(base: ModelConfig, found: dict[str, Found]) -> ModelConfig:
    """Diffusers folders describe themselves; original files take `base`'s architecture."""
    updates: dict[str, Any] = {}
    translators = {
        "unet": diffusers_unet.from_diffusers_config,
        "inpaint_unet": diffusers_unet.from_diffusers_config,
        "prior": diffusers_prior.from_diffusers_config,
        "movq": diffusers_movq.from_diffusers_config,
    }
    for name, where in found.items():
        if where.config is None:
            continue
        if name in translators and where.layout == "diffusers":
            updates[name] = translators[name](where.config)
        elif name == "text_encoder":
            updates[name] = mclip_from_json(where.config, base.text_encoder)
    text = found.get("clip_text")
    vision = found.get("clip_vision")
    text_json = text.config if text and text.layout == "diffusers" else None
    vision_json = vision.config if vision and vision.layout == "diffusers" else None
    if text_json or vision_json:
        updates["clip"] = clip_from_json(text_json, vision_json, base.clip)
    return replace(base, **updates)


# ---------------------------------------------------------------------------- networks


def build_network(name: str, config: ModelConfig) -> nn.Module:
    """An uninitialised network of the given config (call under `torch.device('meta')`).

    Imports are per network: building a UNet never imports transformers.
    """
    if name == "prior":
        from kandinsky.models.prior import Prior

        return Prior(config.prior)
    if name in ("unet", "inpaint_unet"):
        from kandinsky.models.unet import UNet

        return UNet(config.unet if name == "unet" else config.inpaint_unet)
    if name == "movq":
        from kandinsky.models.movq import MoVQ

        return MoVQ(config.movq)
    if name == "text_encoder":
        from kandinsky.models.text_encoder import MultilingualCLIP

        return MultilingualCLIP(config.text_encoder)
    from kandinsky.models.clip import build_text_tower, build_vision_tower

    if name == "clip_text":
        return build_text_tower(config.clip)
    if name == "clip_vision":
        return build_vision_tower(config.clip)
    raise KandinskyError(f"internal: no network called {name!r}")


def original_key_map(name: str, config: ModelConfig, our_keys: Iterable[str]) -> KeyMap:
    rules = {
        "prior": lambda: prior_rules(config.prior),
        "unet": lambda: unet_rules(config.unet),
        "inpaint_unet": lambda: unet_rules(config.inpaint_unet),
        "movq": lambda: movq_rules(config.movq),
        "text_encoder": lambda: [],
        "clip_text": lambda: clip_text_rules(config.clip.text.num_layers),
        "clip_vision": lambda: clip_vision_rules(config.clip.vision.num_layers),
    }[name]()
    return build_key_map(our_keys, rules)


def load_network(
    name: str, config: ModelConfig, where: Found, dtype: torch.dtype, device: torch.device
) -> nn.Module:
    """Build `name` on meta and fill it from `where`, strictly: every key used, every shape right."""
    with torch.device("meta"), _no_init():
        module = build_network(name, config)
    state = module.state_dict()
    expected = {k: tuple(v.shape) for k, v in state.items()}
    floating = {k for k, v in state.items() if v.is_floating_point()}
    if where.layout == "original":
        key_map = original_key_map(name, config, expected)
    else:
        key_map = {k: Source(k) for k in expected}
    reader = _open_readers(where)
    try:
        tensors = _convert(name, where, reader, key_map, expected, floating, dtype, device)
    finally:
        reader.close()
    module.load_state_dict(tensors, strict=True, assign=True)
    _rebuild_meta_buffers(module, device)
    _return_freed_memory()
    return module.eval().requires_grad_(False)


@contextmanager
def _no_init() -> Iterator[None]:
    """Skip weight initialisation while building on meta: it is discarded anyway, and on meta
    tensors it drags in torch's reference implementations (slow, ~0.1 GB of imports)."""
    names = [n for n in dir(nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(nn.init, n) for n in names}
    try:
        for n in names:
            setattr(nn.init, n, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for n, fn in saved.items():
            setattr(nn.init, n, fn)


def _return_freed_memory() -> None:
    """glibc keeps freed pickle buffers; hand them back so RSS reflects the model only."""
    if sys.platform.startswith("linux"):
        with suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def _open_readers(where: Found) -> StateDictReader:
    readers = [open_state_dict(path) for path in where.files]
    if where.stats is not None:
        readers.append(_StatsReader(where.stats))
    return readers[0] if len(readers) == 1 else _ChainReader(readers)


def _convert(
    name: str,
    where: Found,
    reader: StateDictReader,
    key_map: KeyMap,
    expected: dict[str, tuple[int, ...]],
    floating: set[str],
    dtype: torch.dtype,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    files = ", ".join(str(p) for p in where.files)
    missing = [
        f"{src.key} (for {key})" for key, src in key_map.items() if src.key not in reader.info
    ]
    if missing:
        raise WeightsError(
            f"{files} lacks {len(missing)} of the {len(key_map)} tensors the {name} needs, e.g. "
            f"{'; '.join(missing[:3])}. The file is incomplete, or holds another network or layout."
        )
    for key, src in key_map.items():
        have = src.op.out_shape(reader.info[src.key].shape)
        if have != expected[key]:
            raise ShapeMismatch(
                f"{files}: tensor {src.key!r} has shape {list(reader.info[src.key].shape)}, but the "
                f"configured {name} needs {list(expected[key])} for {key!r}. The weights belong to "
                "another model size: pass the matching config, or the matching file."
            )
    for key in floating:
        stored = reader.info[key_map[key].key].dtype
        if not stored.is_floating_point:
            raise WeightsError(
                f"{files}: tensor {key_map[key].key!r} is stored as {stored}, but {key!r} of the {name} "
                "is a floating-point weight. The file is damaged or not a weight file of this layout."
            )
    used = {src.key for src in key_map.values()}
    other_tower = (
        _OTHER_TOWER.get(name, lambda key: False)
        if where.layout == "original"
        else (lambda key: False)
    )
    unexpected = sorted(
        k
        for k in set(reader.info) - used - IGNORED_ORIGINAL_KEYS
        if not k.endswith("position_ids") and not other_tower(k)
    )
    if unexpected:
        raise WeightsError(
            f"{files} holds {len(unexpected)} tensor(s) the {name} does not have, e.g. "
            f"{', '.join(unexpected[:3])}. It is not a Kandinsky 2.1 {name} file of this layout."
        )
    users = Counter(src.key for src in key_map.values())
    held: dict[str, torch.Tensor] = {}
    out: dict[str, torch.Tensor] = {}
    for key, src in key_map.items():
        if src.key not in held:
            held[src.key] = reader.pop(src.key)
        tensor = src.op.apply(held[src.key])
        users[src.key] -= 1
        if users[src.key] == 0:
            del held[src.key]
        target = dtype if tensor.is_floating_point() else tensor.dtype
        tensor = tensor.to(device=device, dtype=target)
        if tensor.untyped_storage().nbytes() > tensor.numel() * tensor.element_size():
            tensor = tensor.clone()  # a slice of a fused tensor: keep only our part alive
        out[key] = tensor
    return out


def _rebuild_meta_buffers(module: nn.Module, device: torch.device) -> None:
    for owner in module.modules():
        for name, buffer in list(owner._buffers.items()):
            if buffer is None or not buffer.is_meta:
                continue
            make = _DERIVED_BUFFERS.get(name)
            if make is None:
                raise KandinskyError(
                    f"internal: buffer {name!r} of {type(owner).__name__} has no recipe."
                )
            owner._buffers[name] = make(buffer.shape).to(device)


class _StatsReader(StateDictReader):
    """`ViT-L-14_stats.th`: a (mean, std) pair or a [2, D] tensor, offered as two tensors."""

    def __init__(self, path: Path):
        obj = load_pickle(path)
        if isinstance(obj, torch.Tensor) and obj.ndim == 2 and obj.shape[0] == 2:
            obj = (obj[0], obj[1])
        if not (
            isinstance(obj, list | tuple)
            and len(obj) == 2
            and all(isinstance(t, torch.Tensor) for t in obj)
        ):
            raise CorruptWeights(f"{path}: expected a (clip_mean, clip_std) pair of tensors.")
        self._tensors = {STATS_MEAN: obj[0].reshape(-1), STATS_STD: obj[1].reshape(-1)}
        super().__init__(
            path, {k: TensorInfo(v.dtype, tuple(v.shape)) for k, v in self._tensors.items()}
        )

    def pop(self, name: str) -> torch.Tensor:
        return self._tensors.pop(name)

    def close(self) -> None:
        self._tensors.clear()


class _ChainReader(StateDictReader):
    """Several files (shards, or ckpt + stats) read as one state dict."""

    def __init__(self, readers: list[StateDictReader]):
        self._owner: dict[str, StateDictReader] = {}
        info = {}
        for reader in readers:
            for key, meta in reader.info.items():
                if key in self._owner:
                    raise CorruptWeights(
                        f"tensor {key!r} is in both {self._owner[key].path} and {reader.path}."
                    )
                self._owner[key] = reader
                info[key] = meta
        self._readers = readers
        super().__init__(readers[0].path, info)

    def pop(self, name: str) -> torch.Tensor:
        return self._owner[name].pop(name)

    def close(self) -> None:
        for reader in self._readers:
            reader.close()


# ---------------------------------------------------------------------------- tokenizers


def load_tokenizer(where: Found) -> Any:
    from transformers import AutoTokenizer

    folder = where.files[0]
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError) as e:
        raise LayoutError(
            f"cannot read the tokenizer in {folder} ({str(e).splitlines()[0][:200]})."
        ) from e
