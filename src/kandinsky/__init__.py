"""Kandinsky 2.1 from scratch.

Importing the package is cheap: no weights are loaded, no heavy module is imported until
a name that needs it is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kandinsky.config import KANDINSKY_2_1, TINY, ModelConfig
from kandinsky.errors import (
    CorruptWeights,
    InvalidInput,
    KandinskyError,
    LayoutError,
    MissingWeights,
    ShapeMismatch,
    UnsafeWeights,
    WeightsError,
)

__version__ = "0.1.0"

__all__ = [
    "KANDINSKY_2_1",
    "TINY",
    "ModelConfig",
    "KandinskyError",
    "InvalidInput",
    "WeightsError",
    "MissingWeights",
    "CorruptWeights",
    "UnsafeWeights",
    "ShapeMismatch",
    "LayoutError",
    "Kandinsky21",
    "GenerationResult",
    "Components",
    "load",
    "from_pretrained",
    "convert",
    "__version__",
]

if TYPE_CHECKING:
    from kandinsky.conversion import convert
    from kandinsky.loading import Components, from_pretrained, load
    from kandinsky.pipeline import Kandinsky21
    from kandinsky.results import GenerationResult

_LAZY = {
    "Components": "kandinsky.loading",
    "load": "kandinsky.loading",
    "from_pretrained": "kandinsky.loading",
    "convert": "kandinsky.conversion",
    "Kandinsky21": "kandinsky.pipeline",
    "GenerationResult": "kandinsky.results",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kandinsky' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
