"""One exception family for everything the user can get wrong.

Each error is raised where the user's input enters the package and says, in the user's
words, what was wrong and what to do about it.
"""

from __future__ import annotations


class KandinskyError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidInput(KandinskyError, ValueError):
    """An argument is outside what the model accepts (size, range, type, choice)."""


class WeightsError(KandinskyError):
    """Weights or configs cannot be found, read or matched to the model."""


class MissingWeights(WeightsError, FileNotFoundError):
    """A file the chosen layout needs is not there."""


class CorruptWeights(WeightsError):
    """A weight file exists but cannot be read (truncated, damaged, wrong format)."""


class UnsafeWeights(WeightsError):
    """A pickle file tried to run code while being loaded; it was refused."""


class ShapeMismatch(WeightsError):
    """A tensor in the file has a shape the configured model does not have."""


class LayoutError(WeightsError):
    """A folder is not laid out as any checkpoint layout we know."""
