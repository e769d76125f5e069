"""LoRA adapters (Hu et al. 2021) on the attention projections, via `peft`.

Decoder UNet: `to_q, to_k, to_v, to_out.0` (pixels) and `add_k_proj, add_v_proj` (the
image/text tokens); prior: `to_q, to_k, to_v, to_out.0`. An adapter file is one small
safetensors holding only the low-rank matrices (`<layer>.lora_A.weight`, `<layer>.lora_B.weight`)
and, in its header, JSON metadata: network, rank, alpha, targets, base model.

At inference `load_lora(module, path, scale)` wraps the targeted layers and sets
y = W x + scale · (alpha / rank) · B A x; scale 0 gives the base output exactly, and
`remove_lora` puts the original layers back.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kandinsky.checkpoints.io import write_safetensors
from kandinsky.errors import CorruptWeights, InvalidInput, MissingWeights

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_k_proj", "add_v_proj")
PRIOR_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
DEFAULT_TARGETS = {"unet": UNET_TARGETS, "inpaint_unet": UNET_TARGETS, "prior": PRIOR_TARGETS}
ADAPTER = "kandinsky"  # peft adapter name
FORMAT = "kandinsky-2.1-lora"
_METADATA_KEY = "kandinsky_lora"


@dataclass(frozen=True)
class LoRAInfo:
    """What an adapter file says about itself."""

    network: str  # "unet", "inpaint_unet" or "prior"
    rank: int = 4
    alpha: float = 4.0
    targets: tuple[str, ...] = field(default=UNET_TARGETS)
    base_model: str = ""

    def __post_init__(self) -> None:
        if self.network not in DEFAULT_TARGETS:
            raise InvalidInput(
                f"LoRA network {self.network!r} is unknown; choose one of {', '.join(DEFAULT_TARGETS)}"
            )
        if self.rank < 1:
            raise InvalidInput(f"LoRA rank must be at least 1, got {self.rank}")

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, **asdict(self), "targets": list(self.targets)})

    @classmethod
    def from_json(cls, text: str) -> LoRAInfo:
        data = json.loads(text)
        if data.pop("format", None) != FORMAT:
            raise CorruptWeights("the file's metadata does not describe a Kandinsky 2.1 LoRA")
        data["targets"] = tuple(data.get("targets", ()))
        return cls(**data)


def add_lora(
    module: nn.Module,
    *,
    rank: int = 4,
    alpha: float | None = None,
    targets: tuple[str, ...] = UNET_TARGETS,
) -> nn.Module:
    """Wrap the `targets` layers of `module` in place; only the new LoRA weights train.

    B starts at zero, so the wrapped network computes exactly what it did before.
    """
    from peft import LoraConfig, inject_adapter_in_model

    if has_lora(module):
        raise InvalidInput("this network already carries a LoRA adapter; remove_lora it first")
    config = LoraConfig(
        r=rank,
        lora_alpha=float(alpha if alpha is not None else rank),
        target_modules=list(targets),
        lora_dropout=0.0,
        bias="none",
    )
    try:
        inject_adapter_in_model(config, module, adapter_name=ADAPTER)
    except ValueError as e:  # peft's "target modules not found"
        raise InvalidInput(
            f"no layer of the network matches the LoRA targets {list(targets)}"
        ) from e
    if not lora_layers(module):
        raise InvalidInput(f"no layer of the network matches the LoRA targets {list(targets)}")
    for name, param in module.named_parameters():
        param.requires_grad_(".lora_" in name)
    return module


def lora_layers(module: nn.Module) -> dict[str, nn.Module]:
    """The peft-wrapped layers of `module`, by their path."""
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in module.named_modules() if isinstance(m, LoraLayer)}


def has_lora(module: nn.Module) -> bool:
    return any(type(m).__module__.startswith("peft.") for m in module.modules())


def lora_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter: `<layer>.lora_A.weight` (rank × in) and `<layer>.lora_B.weight` (out × rank)."""
    state = {}
    for name, layer in lora_layers(module).items():
        state[f"{name}.lora_A.weight"] = layer.lora_A[ADAPTER].weight.detach()
        state[f"{name}.lora_B.weight"] = layer.lora_B[ADAPTER].weight.detach()
    return state


def set_lora_scale(module: nn.Module, scale: float) -> None:
    """y = W x + scale · (alpha / rank) · B A x in every wrapped layer."""
    for layer in lora_layers(module).values():
        layer.set_scale(ADAPTER, float(scale))


def remove_lora(module: nn.Module) -> None:
    """Put the original (unmerged, untouched) layers back."""
    for name, layer in sorted(lora_layers(module).items(), key=lambda kv: -kv[0].count(".")):
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, layer.get_base_layer())
    if hasattr(module, "peft_config"):
        del module.peft_config


def adapter_from_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter's entries of a wrapped network's full state dict, in the file's names."""
    marks = (f".lora_A.{ADAPTER}.", f".lora_B.{ADAPTER}.")
    return {
        k.replace(f".{ADAPTER}.", "."): v for k, v in state.items() if any(m in k for m in marks)
    }


def save_lora(
    module: nn.Module,
    path: str | os.PathLike[str],
    info: LoRAInfo,
    state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the adapter of `module` (a safetensors with the metadata in its header).

    `state`: the adapter tensors when `module` holds only a shard (see `adapter_from_state`).
    """
    state = lora_state_dict(module) if state is None else state
    if not state:
        raise InvalidInput("the network carries no LoRA adapter to save")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(
        {k: v.float() for k, v in state.items()},
        path,
        metadata={"format": "pt", _METADATA_KEY: info.to_json()},
    )
    return path


def read_lora(path: str | os.PathLike[str]) -> tuple[LoRAInfo, dict[str, torch.Tensor]]:
    """The metadata and tensors of an adapter file."""
    from safetensors import SafetensorError, safe_open

    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingWeights(f"LoRA file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError) as e:
        raise CorruptWeights(f"{path} is not a readable safetensors file ({e})") from e
    if _METADATA_KEY not in metadata:
        raise CorruptWeights(
            f"{path} has no Kandinsky LoRA metadata; it is not an adapter saved by kandinsky"
        )
    try:
        info = LoRAInfo.from_json(metadata[_METADATA_KEY])
    except (json.JSONDecodeError, TypeError) as e:
        raise CorruptWeights(f"{path}: unreadable LoRA metadata ({e})") from e
    return info, tensors


def load_lora(module: nn.Module, path: str | os.PathLike[str], scale: float = 1.0) -> LoRAInfo:
    """Apply the adapter in `path` to `module` (replacing any adapter it had), scaled by `scale`."""
    info, tensors = read_lora(path)
    if has_lora(module):
        remove_lora(module)
    add_lora(module, rank=info.rank, alpha=info.alpha, targets=info.targets)
    layers = lora_layers(module)
    expected = {f"{n}.lora_{ab}.weight" for n in layers for ab in "AB"}
    if set(tensors) != expected:
        remove_lora(module)
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise CorruptWeights(
            f"{path} does not fit this {info.network}: missing {missing[:3]}, unexpected {extra[:3]}"
        )
    with torch.no_grad():
        for name, layer in layers.items():
            for ab, modules in (("A", layer.lora_A), ("B", layer.lora_B)):
                weight = modules[ADAPTER].weight
                source = tensors[f"{name}.lora_{ab}.weight"]
                if source.shape != weight.shape:
                    remove_lora(module)
                    raise CorruptWeights(
                        f"{path}: {name}.lora_{ab} has shape {list(source.shape)}, the network needs "
                        f"{list(weight.shape)} (an adapter for another model size)"
                    )
                weight.copy_(source)
    module.requires_grad_(False)
    set_lora_scale(module, scale)
    return info


# ---------------------------------------------------------------------------- pipelines


def apply_lora(parts: Any, path: str | os.PathLike[str], scale: float = 1.0) -> LoRAInfo:
    """`load_lora` on the network of loaded `Components` that the adapter was trained for."""
    info, _ = read_lora(path)
    network = getattr(parts, info.network, None)
    if network is None:
        raise MissingWeights(f"the LoRA in {path} is for the {info.network}, which is not loaded")
    return load_lora(network, path, scale)


def remove_all_lora(parts: Any) -> None:
    """Take every adapter off the networks of `parts`."""
    for network in parts.networks().values():
        if has_lora(network):
            remove_lora(network)


def parse_lora_argument(value: str) -> tuple[str, float]:
    """CLI `--lora PATH[:SCALE]` → (path, scale); a trailing `:number` is the scale."""
    path, sep, tail = value.rpartition(":")
    if sep and path:
        try:
            return path, float(tail)
        except ValueError:
            pass
    return value, 1.0
