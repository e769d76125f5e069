"""Which files of a folder hold which network, in either released layout.

- original (`sberbank-ai/Kandinsky_2.1`): `decoder_fp16.ckpt`, `inpainting_fp16.ckpt`,
  `prior_fp16.ckpt` + `ViT-L-14_stats.th`, `movq_final.ckpt`, `text_encoder/` (M-CLIP weights
  and tokenizer); CLIP ViT-L/14 is not part of it (a plain OpenAI state dict `ViT-L-14.pt`
  is used when present).
- diffusers (`kandinsky-community/kandinsky-2-1`, `-prior`, `-inpaint`): one sub-folder per
  component with a config.json; `model_index.json` names their classes. A folder holding
  several such pipeline folders (what `kandinsky convert` writes) is scanned as a whole.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kandinsky.errors import CorruptWeights, LayoutError

NETWORKS = ("prior", "unet", "inpaint_unet", "movq", "text_encoder", "clip_text", "clip_vision")
TOKENIZERS = ("tokenizer", "clip_tokenizer")
COMPONENTS = NETWORKS + TOKENIZERS

Layout = Literal["original", "diffusers"]


@dataclass(frozen=True)
class Found:
    """Where one component lives."""

    component: str
    layout: Layout
    files: tuple[Path, ...]  # weight files; for a tokenizer, its folder
    config: dict[str, Any] | None = None  # the component's config.json, when it has one
    stats: Path | None = None  # prior only, original layout: ViT-L-14_stats.th


ORIGINAL_FILES: dict[str, tuple[str, ...]] = {
    "unet": ("decoder_fp16.ckpt", "decoder.ckpt"),
    "inpaint_unet": ("inpainting_fp16.ckpt", "inpainting.ckpt"),
    "prior": ("prior_fp16.ckpt", "prior.ckpt"),
    "movq": ("movq_final.ckpt",),
    "text_encoder": ("text_encoder/pytorch_model.bin", "text_encoder/model.safetensors"),
    "clip": ("ViT-L-14.pt", "openai_clip/ViT-L-14.pt"),
}
STATS_FILE = "ViT-L-14_stats.th"
TOKENIZER_FILES = (
    "tokenizer.json",
    "sentencepiece.bpe.model",
    "vocab.json",
    "tokenizer_config.json",
)

# diffusers / transformers class name of a sub-folder → our component name.
_DIFFUSERS_CLASSES: dict[str, str] = {
    "PriorTransformer": "prior",
    "UNet2DConditionModel": "unet",  # or inpaint_unet, by in_channels
    "VQModel": "movq",
    "MultilingualCLIP": "text_encoder",
    "CLIPTextModelWithProjection": "clip_text",
    "CLIPVisionModelWithProjection": "clip_vision",
    "XLMRobertaTokenizer": "tokenizer",
    "XLMRobertaTokenizerFast": "tokenizer",
    "CLIPTokenizer": "clip_tokenizer",
    "CLIPTokenizerFast": "clip_tokenizer",
}

_WEIGHT_NAMES = ("diffusion_pytorch_model", "model", "pytorch_model")


def scan(folder: Path) -> dict[str, Found]:
    """Every component found in `folder` (first layout that matches wins per component)."""
    if not folder.is_dir():
        raise LayoutError(f"{folder} is not a folder.")
    found: dict[str, Found] = {}
    pipelines = (
        [folder]
        if (folder / "model_index.json").is_file()
        else sorted(
            p for p in folder.iterdir() if p.is_dir() and (p / "model_index.json").is_file()
        )
    )
    for pipeline in pipelines:
        for component, item in _scan_diffusers(pipeline).items():
            found.setdefault(component, item)
    for component, item in _scan_original(folder).items():
        found.setdefault(component, item)
    return found


def describe_expected() -> str:
    return (
        "a diffusers folder (model_index.json + unet/, movq/, text_encoder/, tokenizer/ or prior/, "
        "image_encoder/ …), a folder of such folders (as `kandinsky convert` writes), or the "
        "original release (decoder_fp16.ckpt, prior_fp16.ckpt, ViT-L-14_stats.th, movq_final.ckpt, "
        "text_encoder/)"
    )


def _scan_diffusers(pipeline: Path) -> dict[str, Found]:
    index = read_json(pipeline / "model_index.json")
    found: dict[str, Found] = {}
    for sub, spec in index.items():
        if sub.startswith("_") or not isinstance(spec, list) or len(spec) != 2:
            continue
        component = _DIFFUSERS_CLASSES.get(str(spec[1]))
        folder = pipeline / sub
        if component is None or not folder.is_dir():
            continue
        if component in TOKENIZERS:
            found[component] = Found(component, "diffusers", (folder,))
            continue
        config = read_json(folder / "config.json")
        if component == "unet" and config.get("in_channels") == 9:
            component = "inpaint_unet"
        found[component] = Found(component, "diffusers", weight_files(folder), config)
    return found


def _scan_original(folder: Path) -> dict[str, Found]:
    found: dict[str, Found] = {}
    for component, names in ORIGINAL_FILES.items():
        path = next((folder / n for n in names if (folder / n).is_file()), None)
        if path is None:
            continue
        if component == "clip":
            for tower in ("clip_text", "clip_vision"):
                found[tower] = Found(tower, "original", (path,))
            continue
        config = None
        if component == "text_encoder" and (path.parent / "config.json").is_file():
            config = read_json(path.parent / "config.json")
        stats = None
        if component == "prior":
            stats = folder / STATS_FILE
            if not stats.is_file():
                raise LayoutError(
                    f"{folder} has {path.name} but not {STATS_FILE}: the prior needs the CLIP "
                    f"embedding statistics that ship beside it. Download {STATS_FILE} into {folder}."
                )
        found[component] = Found(component, "original", (path,), config, stats)
    text_dir = folder / "text_encoder"
    if text_dir.is_dir() and any((text_dir / n).is_file() for n in TOKENIZER_FILES):
        found["tokenizer"] = Found("tokenizer", "original", (text_dir,))
    return found


def weight_files(folder: Path) -> tuple[Path, ...]:
    """The weights of one diffusers component: safetensors preferred, sharded files allowed."""
    for suffix in (".safetensors", ".bin"):
        for name in _WEIGHT_NAMES:
            single = folder / f"{name}{suffix}"
            if single.is_file():
                return (single,)
            index = folder / f"{name}{suffix}.index.json"
            if index.is_file():
                shards = sorted(set(read_json(index).get("weight_map", {}).values()))
                return tuple(folder / s for s in shards)
    variants = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if variants:
        return (variants[0],)
    raise LayoutError(
        f"{folder} has a config.json but no weights (looked for "
        f"{', '.join(n + '.safetensors' for n in _WEIGHT_NAMES)} and .bin). The download may be incomplete."
    )


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise LayoutError(
            f"{path} is missing; the folder is not a complete diffusers component."
        ) from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptWeights(f"{path} is not valid JSON ({e}).") from e
    if not isinstance(data, dict):
        raise CorruptWeights(f"{path} should hold a JSON object.")
    return data
