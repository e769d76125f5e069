"""The frozen networks' outputs for a training batch, cached on disk when `data.cache_dir` is set.

A decoder step spends most of its time in networks that never change: MoVQ encodes the
images, CLIP embeds them, the text encoder reads the captions. With a cache those outputs
are computed in the first epoch and read back afterwards. Text outputs are keyed by the
caption, image outputs by a digest of the pixels the network reads (so an image edited or
regenerated in place is never answered from the cache, and the same picture in another
folder is). Image outputs are cached only with deterministic crops: a random crop is a
different image every epoch.
Every key carries a digest of the network's weights, so other weights never read stale
values. Without a cache the same functions compute every row, every step.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from kandinsky.training.data import EmbeddingCache

Compute = Callable[[list[int]], dict[str, torch.Tensor]]


def weights_digest(module: nn.Module) -> str:
    """A short digest of a network's weights: every tensor's name, shape and 64 strided values
    (any training moves them), cheap even for a billion parameters."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        flat = tensor.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 64)][:64].float().cpu()
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


def pixels_digest(image: torch.Tensor) -> str:
    """A digest of one image tensor's shape and values (≈ 10 ms for a 768² image)."""
    pixels = image.detach().to("cpu", torch.float32).contiguous()
    digest = hashlib.blake2b(str(tuple(pixels.shape)).encode(), digest_size=16)
    digest.update(pixels.numpy().tobytes())
    return digest.hexdigest()


class FrozenOutputs:
    """Per-row outputs of frozen networks, through an `EmbeddingCache` when one is given."""

    def __init__(
        self, cache: EmbeddingCache | None, data: Any | None, device: torch.device
    ) -> None:
        """`data`: the run's DataConfig (its crop decides whether images are cached)."""
        self.cache = cache
        self.device = device
        self.cache_images = data is not None and data.crop == "center"
        self._digests: dict[int, str] = {}

    def text(
        self, module: nn.Module, what: str, captions: Sequence[str], compute: Compute
    ) -> dict[str, torch.Tensor]:
        """`compute` (named `what`) over the rows of `captions`, cached per caption."""
        return self._rows(module, what, list(captions), compute)

    def image(
        self, module: nn.Module, what: str, batch: dict, compute: Compute, n: int
    ) -> dict[str, torch.Tensor]:
        """`compute` (named `what`) over the batch's n images, cached per image (by its
        pixels) when the crop is deterministic."""
        if not self.cache_images or self.cache is None:
            return compute(list(range(n)))
        return self._rows(module, what, [pixels_digest(row) for row in batch["image"]], compute)

    def _rows(
        self, module: nn.Module, what: str, ids: list[str], compute: Compute
    ) -> dict[str, torch.Tensor]:
        if self.cache is None:
            return compute(list(range(len(ids))))
        digest = self._digests.get(id(module))
        if digest is None:
            digest = self._digests[id(module)] = weights_digest(module)
        keys = [f"{type(module).__name__}/{digest}/{what}/{i}" for i in ids]
        rows = self.cache.rows(keys, compute)
        return {name: value.to(self.device) for name, value in rows.items()}
