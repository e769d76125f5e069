"""Write Kandinsky 2.1 networks in the diffusers layout (which is also our own layout).

`convert(src, dst)` reads any layout we load (the original release, diffusers folders, a
mix), and writes three diffusers pipeline folders under `dst`:

    dst/kandinsky-2-1-prior/    prior, CLIP text + vision towers, CLIP tokenizer, UnCLIP scheduler
    dst/kandinsky-2-1/          text2img UNet, MoVQ, M-CLIP + tokenizer, DDIM scheduler
    dst/kandinsky-2-1-inpaint/  inpainting UNet, MoVQ, M-CLIP + tokenizer, DDIM scheduler

Each loads with diffusers' `KandinskyPriorPipeline` / `KandinskyPipeline` /
`KandinskyInpaintPipeline.from_pretrained` and with our `load(dst)`. Networks are converted
one at a time (peak memory ≈ one network), everything is written into a temporary folder
beside `dst`, and that folder is renamed to `dst` only when all of it succeeded.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from kandinsky.checkpoints import diffusers_movq, diffusers_prior, diffusers_unet
from kandinsky.checkpoints.diffusers_text import (
    clip_text_to_json,
    clip_vision_to_json,
    mclip_to_json,
)
from kandinsky.checkpoints.io import write_json, write_safetensors
from kandinsky.checkpoints.layouts import NETWORKS, TOKENIZERS
from kandinsky.config import ModelConfig
from kandinsky.defaults import GenerationDefaults, pipeline_settings, read_defaults, write_defaults
from kandinsky.errors import InvalidInput, MissingWeights

DIFFUSERS_VERSION = "0.42.1"

DECODER_SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "_diffusers_version": DIFFUSERS_VERSION,
    "num_train_timesteps": 1000,
    "beta_schedule": "linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "thresholding": False,
}
PRIOR_SCHEDULER = {
    "_class_name": "UnCLIPScheduler",
    "_diffusers_version": DIFFUSERS_VERSION,
    "clip_sample": True,
    "clip_sample_range": 10.0,
    "num_train_timesteps": 1000,
    "prediction_type": "sample",
    "variance_type": "fixed_small_log",
}

# Pipeline folder → (pipeline class, {sub-folder: (library, class, our component or None)}).
PIPELINES: dict[str, tuple[str, dict[str, tuple[str, str, str | None]]]] = {
    "kandinsky-2-1-prior": (
        "KandinskyPriorPipeline",
        {
            "prior": ("diffusers", "PriorTransformer", "prior"),
            "text_encoder": ("transformers", "CLIPTextModelWithProjection", "clip_text"),
            "tokenizer": ("transformers", "CLIPTokenizer", "clip_tokenizer"),
            "scheduler": ("diffusers", "UnCLIPScheduler", None),
            "image_encoder": ("transformers", "CLIPVisionModelWithProjection", "clip_vision"),
            "image_processor": ("transformers", "CLIPImageProcessor", None),
        },
    ),
    "kandinsky-2-1": (
        "KandinskyPipeline",
        {
            "text_encoder": ("kandinsky", "MultilingualCLIP", "text_encoder"),
            "tokenizer": ("transformers", "XLMRobertaTokenizerFast", "tokenizer"),
            "scheduler": ("diffusers", "DDIMScheduler", None),
            "unet": ("diffusers", "UNet2DConditionModel", "unet"),
            "movq": ("diffusers", "VQModel", "movq"),
        },
    ),
    "kandinsky-2-1-inpaint": (
        "KandinskyInpaintPipeline",
        {
            "text_encoder": ("kandinsky", "MultilingualCLIP", "text_encoder"),
            "tokenizer": ("transformers", "XLMRobertaTokenizerFast", "tokenizer"),
            "scheduler": ("diffusers", "DDIMScheduler", None),
            "unet": ("diffusers", "UNet2DConditionModel", "inpaint_unet"),
            "movq": ("diffusers", "VQModel", "movq"),
        },
    ),
}

# The pipeline is only written when its main network is there.
_MAIN = {
    "kandinsky-2-1-prior": "prior",
    "kandinsky-2-1": "unet",
    "kandinsky-2-1-inpaint": "inpaint_unet",
}

# transformers models are saved as model.safetensors, diffusers models as diffusion_pytorch_model.
_TRANSFORMERS = {"text_encoder", "clip_text", "clip_vision"}


def component_config(name: str, config: ModelConfig) -> dict[str, Any]:
    """The config.json a diffusers / transformers loader expects for our component."""
    makers: dict[str, Callable[[], dict[str, Any]]] = {
        "prior": lambda: diffusers_prior.to_diffusers_config(config.prior),
        "unet": lambda: diffusers_unet.to_diffusers_config(config.unet),
        "inpaint_unet": lambda: diffusers_unet.to_diffusers_config(config.inpaint_unet),
        "movq": lambda: diffusers_movq.to_diffusers_config(config.movq),
        "text_encoder": lambda: mclip_to_json(config.text_encoder),
        "clip_text": lambda: clip_text_to_json(config.clip),
        "clip_vision": lambda: clip_vision_to_json(config.clip),
    }
    data = makers[name]()
    if name not in _TRANSFORMERS:
        data.setdefault("_diffusers_version", DIFFUSERS_VERSION)
    return data


def save_network(
    name: str,
    module: torch.nn.Module | None,
    config: ModelConfig,
    folder: Path,
    *,
    state: dict[str, torch.Tensor] | None = None,
) -> None:
    """One component folder: config.json + weights (safetensors), written atomically.

    `state` (a full state dict, e.g. gathered from sharded training) replaces `module`'s own.
    """
    if state is None:
        if module is None:
            raise ValueError("save_network needs a module or a state dict")
        state = module.state_dict()
    folder.mkdir(parents=True, exist_ok=True)
    weights = (
        "model.safetensors" if name in _TRANSFORMERS else "diffusion_pytorch_model.safetensors"
    )
    write_json(component_config(name, config), folder / "config.json")
    write_safetensors(state, folder / weights, metadata={"format": "pt"})


def image_processor_config(config: ModelConfig) -> dict[str, Any]:
    size = config.clip.vision.image_size
    return {
        "crop_size": size,
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": list(config.clip.image_mean),
        "image_std": list(config.clip.image_std),
        "resample": 3,
        "size": size,
    }


def convert(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    destination: str | os.PathLike[str],
    *,
    config: ModelConfig | None = None,
    dtype: str | torch.dtype = torch.float32,
    components: Iterable[str] | None = None,
    overwrite: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    revision: str | None = None,
    local_files_only: bool | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Convert whatever `source` holds into diffusers pipeline folders under `destination`."""
    from kandinsky.hub import HubOptions
    from kandinsky.loading import find_components, parse_components, parse_dtype, resolve_config

    dtype = parse_dtype(dtype)
    dst = Path(destination).expanduser()
    if dst.exists() and not overwrite:
        raise InvalidInput(
            f"{dst} already exists; choose a new destination or pass overwrite=True (--overwrite)."
        )
    wanted = parse_components(components)
    sources = [source] if isinstance(source, str | os.PathLike) else list(source)

    found, searched = find_components(
        sources, wanted, HubOptions(cache_dir, revision, local_files_only)
    )
    present = [c for c in wanted if c in found]
    if not any(c in present for c in NETWORKS):
        raise MissingWeights(f"no Kandinsky 2.1 network found in {', '.join(map(str, sources))}.")
    if not any(main in present for main in _MAIN.values()):
        raise InvalidInput(
            f"nothing to write: the diffusers layout stores pipelines, each around one of "
            f"{', '.join(_MAIN.values())}; include at least one of them in components "
            f"(found: {', '.join(present)})"
        )
    model_config = resolve_config(config or _default_config(), {c: found[c] for c in present})

    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".partial", dir=dst.parent))
    try:
        write_pipelines(
            staging,
            present,
            model_config,
            lambda name, folder: _write_component(
                name, sources, found, model_config, dtype, folder
            ),
            progress,
            defaults=read_defaults(searched),
        )
        _publish(staging, dst, overwrite)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return dst


def write_pipelines(
    folder: Path,
    present: Collection[str],
    config: ModelConfig,
    write_component: Callable[[str, Path], None],
    progress: Callable[[str], None] | None = None,
    defaults: GenerationDefaults | None = None,
) -> None:
    """The diffusers pipeline folders under `folder` whose main network is in `present`.

    `write_component(name, sub_folder)` writes each of our components there (networks and
    tokenizers); schedulers and the image processor's config are written here, and each
    pipeline's share of `defaults` (the model's sampling settings) where they differ from
    the original's.
    """
    for pipeline, (class_name, parts) in PIPELINES.items():
        if _MAIN[pipeline] not in present:
            continue
        root = folder / pipeline
        index: dict[str, Any] = {
            "_class_name": class_name,
            "_diffusers_version": DIFFUSERS_VERSION,
        }
        for sub, (library, cls, component) in parts.items():
            index[sub] = [library, cls]
            if component is None:
                _write_static(sub, config, root / sub)
            elif component in present:
                if progress:
                    progress(f"{pipeline}/{sub}")
                write_component(component, root / sub)
        write_json(index, root / "model_index.json")
        if defaults is not None:
            write_defaults(root, defaults, pipeline_settings(pipeline))


def _default_config() -> ModelConfig:
    from kandinsky.config import KANDINSKY_2_1

    return KANDINSKY_2_1


def _write_static(sub: str, config: ModelConfig, folder: Path) -> None:
    if sub == "scheduler":
        is_prior = folder.parent.name.endswith("prior")
        write_json(
            PRIOR_SCHEDULER if is_prior else DECODER_SCHEDULER, folder / "scheduler_config.json"
        )
    elif sub == "image_processor":
        write_json(image_processor_config(config), folder / "preprocessor_config.json")


def _write_component(
    name: str,
    sources: list[Any],
    found: dict[str, Any],
    config: ModelConfig,
    dtype: torch.dtype,
    folder: Path,
) -> None:
    from kandinsky.loading import load_network, load_tokenizer

    if name in TOKENIZERS:
        folder.mkdir(parents=True, exist_ok=True)
        load_tokenizer(found[name]).save_pretrained(str(folder))
        return
    module = load_network(name, config, found[name], dtype, torch.device("cpu"))
    save_network(name, module, config, folder)
    del module


def _publish(staging: Path, dst: Path, overwrite: bool) -> None:
    """Move the finished folder into place; an existing destination is replaced only at the end."""
    if dst.exists() and overwrite:
        old = dst.with_name(f".{dst.name}.old")
        os.replace(dst, old)
        os.replace(staging, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, dst)
