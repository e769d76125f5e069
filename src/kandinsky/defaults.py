"""The sampling settings a model recommends: `generation_defaults.json` beside its weights.

The released Kandinsky 2.1 carries no such file and gets the original's settings (decoder
guidance 4 with 50 DDIM steps, prior guidance 4 with 25 steps). A model trained with other
settings in mind (the demo model: prior guidance 2, decoder guidance 2.5) ships the file in a
pipeline folder (next to `model_index.json`) or at the root of the folder it is loaded from.
Every mode, the CLI, the server and the web page start from these values; an explicit
argument always wins, and every image's parameters record the values it was made with.

    {"prior_guidance_scale": 2.0, "guidance_scale": 2.5}
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from kandinsky import validation as check
from kandinsky.diffusion.samplers import resolve_sampler
from kandinsky.errors import InvalidInput, WeightsError

FILENAME = "generation_defaults.json"
PRIOR_SAMPLERS = ("original", "unclip")


@dataclass(frozen=True)
class GenerationDefaults:
    guidance_scale: float = 4.0
    num_steps: int = 50
    sampler: str = "ddim"
    prior_guidance_scale: float = 4.0
    prior_steps: int = 25
    prior_sampler: str = "original"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def changed(self) -> dict[str, Any]:
        """The settings that differ from the built-in ones (what a defaults file needs)."""
        builtin = GenerationDefaults()
        return {k: v for k, v in self.to_dict().items() if getattr(builtin, k) != v}


SETTINGS = tuple(f.name for f in fields(GenerationDefaults))


def checked(values: Mapping[str, Any]) -> dict[str, Any]:
    """`values` validated and normalised; raises InvalidInput naming the bad setting."""
    unknown = sorted(set(values) - set(SETTINGS))
    if unknown:
        raise InvalidInput(f"unknown setting(s) {unknown}; known: {', '.join(SETTINGS)}")
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name.endswith("guidance_scale"):
            out[name] = check.scale(value, name, 0.0, 100.0)
        elif name.endswith("steps"):
            out[name] = check.steps(value, name)
        elif name == "sampler":
            out[name] = resolve_sampler(value)
        else:
            out[name] = check.choice(value, name, PRIOR_SAMPLERS)
    return out


def read_defaults(folders: Iterable[Path]) -> GenerationDefaults:
    """The defaults files in `folders` (each folder's own, then its pipeline subfolders'),
    merged: the first file that names a setting wins. No file: the built-in settings."""
    values: dict[str, Any] = {}
    for path in _candidates(folders):
        for name, value in _read(path).items():
            values.setdefault(name, value)
    return replace(GenerationDefaults(), **values)


def pipeline_settings(pipeline: str) -> tuple[str, ...]:
    """The settings a diffusers pipeline folder speaks for: the prior's, or the decoder's."""
    prior = pipeline.endswith("-prior")
    return tuple(name for name in SETTINGS if name.startswith("prior_") == prior)


def write_defaults(
    folder: Path, defaults: GenerationDefaults, settings: Iterable[str] = SETTINGS
) -> Path | None:
    """Write `folder/generation_defaults.json` with those of `settings` that differ from the
    built-in ones; removes a stale file and writes none when nothing differs."""
    path = Path(folder) / FILENAME
    keep = set(settings)
    changed = {k: v for k, v in defaults.changed().items() if k in keep}
    if not changed:
        path.unlink(missing_ok=True)
        return None
    path.write_text(json.dumps(changed, indent=1) + "\n")
    return path


def _candidates(folders: Iterable[Path]) -> list[Path]:
    paths: list[Path] = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        subfolders = sorted(p for p in folder.iterdir() if (p / "model_index.json").is_file())
        for candidate in (folder, *subfolders):
            if (candidate / FILENAME).is_file() and candidate / FILENAME not in paths:
                paths.append(candidate / FILENAME)
    return paths


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f"{path} is not readable JSON ({e}); fix or delete it.") from e
    if not isinstance(data, dict):
        raise WeightsError(
            f'{path} must hold a JSON object of settings, e.g. {{"guidance_scale": 3}}; '
            "fix or delete it."
        )
    try:
        return checked(data)
    except InvalidInput as e:
        raise WeightsError(f"{path}: {e}; fix or delete it.") from e
