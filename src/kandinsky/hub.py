"""A local folder or a model-hub repo id → local folders. The only module that touches the network.

Known repo ids expand to the repos that complete them: the diffusers release is split in
three (`-prior`, the decoder, `-inpaint`), and the original release lacks CLIP, which the
diffusers prior repo carries.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kandinsky.errors import MissingWeights, WeightsError

DIFFUSERS_DECODER = "kandinsky-community/kandinsky-2-1"
DIFFUSERS_PRIOR = "kandinsky-community/kandinsky-2-1-prior"
DIFFUSERS_INPAINT = "kandinsky-community/kandinsky-2-1-inpaint"
ORIGINAL_REPOS = ("sberbank-ai/Kandinsky_2.1", "ai-forever/Kandinsky_2.1")
DEFAULT_REPO = DIFFUSERS_DECODER


# What each known repo holds: component → the files it needs there (.bin twins are skipped).
def _diffusers(sub: str) -> list[str]:
    return ["model_index.json", f"{sub}/*.json", f"{sub}/*.safetensors"]


def _tokenizer(sub: str) -> list[str]:
    return ["model_index.json", f"{sub}/*"]


_DECODER_PARTS = {
    "movq": _diffusers("movq"),
    "text_encoder": _diffusers("text_encoder"),
    "tokenizer": _tokenizer("tokenizer"),
}
_ORIGINAL_PARTS = {
    "unet": ["decoder_fp16.ckpt"],
    "inpaint_unet": ["inpainting_fp16.ckpt"],
    "prior": ["prior_fp16.ckpt", "ViT-L-14_stats.th"],
    "movq": ["movq_final.ckpt"],
    "text_encoder": ["text_encoder/*"],
    "tokenizer": ["text_encoder/*"],
}
REPO_CONTENTS: dict[str, dict[str, list[str]]] = {
    DIFFUSERS_PRIOR: {
        "prior": _diffusers("prior"),
        "clip_text": _diffusers("text_encoder"),
        "clip_vision": _diffusers("image_encoder"),
        "clip_tokenizer": _tokenizer("tokenizer"),
    },
    DIFFUSERS_DECODER: {"unet": _diffusers("unet"), **_DECODER_PARTS},
    DIFFUSERS_INPAINT: {"inpaint_unet": _diffusers("unet"), **_DECODER_PARTS},
    **{repo: _ORIGINAL_PARTS for repo in ORIGINAL_REPOS},
}
_COMPANIONS: dict[str, tuple[str, ...]] = {
    DIFFUSERS_DECODER: (DIFFUSERS_PRIOR, DIFFUSERS_INPAINT),
    DIFFUSERS_PRIOR: (DIFFUSERS_DECODER, DIFFUSERS_INPAINT),
    DIFFUSERS_INPAINT: (DIFFUSERS_DECODER, DIFFUSERS_PRIOR),
    **{repo: (DIFFUSERS_PRIOR,) for repo in ORIGINAL_REPOS},
}


@dataclass(frozen=True)
class HubOptions:
    cache_dir: str | os.PathLike[str] | None = None
    revision: str | None = None
    local_files_only: bool | None = None  # None: follow HF_HUB_OFFLINE
    token: str | bool | None = None


def is_local(source: str | os.PathLike[str]) -> bool:
    return Path(source).expanduser().exists()


def looks_like_repo_id(source: str) -> bool:
    parts = str(source).split("/")
    return len(parts) == 2 and all(parts) and not str(source).startswith((".", "~"))


def resolve(
    source: str | os.PathLike[str],
    options: HubOptions = HubOptions(),
    allow_patterns: list[str] | None = None,
) -> Path:
    """A local folder as is; a repo id through the hub cache (downloading unless offline)."""
    if is_local(source):
        return Path(source).expanduser().resolve()
    source = str(source)
    if not looks_like_repo_id(source):
        raise MissingWeights(
            f"{source!r} is neither an existing folder nor a model-hub repo id (owner/name). "
            "Check the path, or pass a repo id such as kandinsky-community/kandinsky-2-1."
        )
    return _snapshot(source, options, allow_patterns)


def plan(
    source: str | os.PathLike[str], components: tuple[str, ...]
) -> list[tuple[str, list[str] | None]]:
    """Which repos to fetch, with which file patterns, to cover `components`.

    A local folder or an unknown repo is taken whole; a known release adds only the companions
    that hold a still-missing component, and only those components' files.
    """
    source = str(source)
    if source not in REPO_CONTENTS:
        return [(source, None)]
    needed = list(components)
    steps: list[tuple[str, list[str] | None]] = []
    for repo in (source, *_COMPANIONS[source]):
        parts = [c for c in needed if c in REPO_CONTENTS[repo]]
        if not parts:
            continue
        patterns = sorted({p for c in parts for p in REPO_CONTENTS[repo][c]})
        steps.append((repo, patterns))
        needed = [c for c in needed if c not in parts]
    return steps


def _snapshot(repo_id: str, options: HubOptions, allow_patterns: list[str] | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = options.local_files_only
    if offline is None:
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
    try:
        path = snapshot_download(
            repo_id,
            revision=options.revision,
            cache_dir=options.cache_dir,
            local_files_only=offline,
            allow_patterns=allow_patterns,
            token=options.token,
        )
    except LocalEntryNotFoundError as e:
        where = options.cache_dir or "the default cache"
        raise MissingWeights(
            f"{repo_id} (revision {options.revision or 'main'}) is not in {where} and downloads are off "
            f"(offline mode). Run `kandinsky download {repo_id}` on a machine with network access, "
            "or unset HF_HUB_OFFLINE."
        ) from e
    except (RepositoryNotFoundError, GatedRepoError) as e:
        raise MissingWeights(
            f"{repo_id}: no such repo on the hub, or it needs a token you do not have."
        ) from e
    except RevisionNotFoundError as e:
        raise MissingWeights(f"{repo_id}: revision {options.revision!r} does not exist.") from e
    except OSError as e:
        raise WeightsError(
            f"{repo_id}: download failed ({e}). Check the network and try again."
        ) from e
    return Path(path)


def resolve_all(
    source: str | os.PathLike[str], components: tuple[str, ...], options: HubOptions = HubOptions()
) -> list[Path]:
    """Folders that together hold `components` (as far as they can be had).

    The source itself must resolve; a companion repo that is missing offline is skipped and
    the loader then names the component that is still missing.
    """
    steps = plan(source, components)
    folders = [resolve(steps[0][0], options, steps[0][1])] if steps else [resolve(source, options)]
    for repo, patterns in steps[1:]:
        try:
            folders.append(resolve(repo, options, patterns))
        except MissingWeights:
            continue
    return folders
