"""Argument checks at the public boundary: each names the argument and the allowed range."""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence

import torch

from kandinsky.errors import InvalidInput

MAX_STEPS = 1000
MAX_IMAGES = 64


def prompts(
    value: str | Sequence[str], name: str = "prompt", allow_empty_text: bool = True
) -> list[str]:
    """A prompt or a non-empty list of prompts (each a string)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, Sequence) or isinstance(items, bytes):
        raise InvalidInput(
            f"{name} must be a string or a list of strings, got {type(value).__name__}"
        )
    items = list(items)
    if not items:
        raise InvalidInput(f"{name} is an empty list; give at least one prompt")
    for item in items:
        if not isinstance(item, str):
            raise InvalidInput(f"{name} must contain strings, got {type(item).__name__}")
        if not allow_empty_text and not item.strip():
            raise InvalidInput(f"{name} contains an empty prompt")
    return items


def broadcast(value: str | Sequence[str], count: int, name: str) -> list[str]:
    """One string for all, or exactly one per prompt."""
    if isinstance(value, str):
        items = [value] * count
    elif isinstance(value, Sequence) and not isinstance(value, bytes):
        items = list(value)
    else:
        raise InvalidInput(
            f"{name} must be a string or a list of {count} strings, got {type(value).__name__}"
        )
    if len(items) != count or not all(isinstance(v, str) for v in items):
        raise InvalidInput(
            f"{name} must be a string or a list of {count} strings (one per prompt), got {len(items)}"
        )
    return items


def positive_int(value: int, name: str, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise InvalidInput(f"{name} must be an integer from 1 to {maximum}, got {value!r}")
    return value


def steps(value: int, name: str = "num_steps") -> int:
    return positive_int(value, name, MAX_STEPS)


def scale(value: float, name: str, minimum: float = 0.0, maximum: float = 100.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(f"{name} must be a number, got {value!r}")
    if not minimum <= value <= maximum:
        raise InvalidInput(f"{name} must be between {minimum} and {maximum}, got {value}")
    return float(value)


def unit_interval(value: float, name: str) -> float:
    return scale(value, name, 0.0, 1.0)


def seeds(seed: int | Sequence[int] | None, count: int) -> list[int]:
    """One seed per image: an int gives seed, seed+1, …; None draws fresh random seeds."""
    if seed is None:
        return [secrets.randbits(63) for _ in range(count)]
    if isinstance(seed, int) and not isinstance(seed, bool):
        base = [seed + i for i in range(count)]
    elif isinstance(seed, Sequence) and all(
        isinstance(s, int) and not isinstance(s, bool) for s in seed
    ):
        base = list(seed)
        if len(base) != count:
            raise InvalidInput(
                f"seed lists {len(base)} seeds for {count} images; give one per image or a single int"
            )
    else:
        raise InvalidInput(
            f"seed must be an int, a list of ints (one per image) or None, got {seed!r}"
        )
    for s in base:
        if not 0 <= s < 2**63:
            raise InvalidInput(f"seed {s} is out of range; use 0 … 2**63 - 1")
    return base


def generators(
    generator: torch.Generator | Sequence[torch.Generator], count: int
) -> list[torch.Generator]:
    gens = [generator] if isinstance(generator, torch.Generator) else list(generator)
    if len(gens) == 1 and count > 1:
        return _shared(gens[0], count)
    if len(gens) != count or not all(isinstance(g, torch.Generator) for g in gens):
        raise InvalidInput(
            f"generator must be one torch.Generator or a list of {count} (one per image)"
        )
    return gens


def _shared(generator: torch.Generator, count: int) -> list[torch.Generator]:
    """One generator for the whole batch: split it into per-image generators, deterministically."""
    return [
        torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        for _ in range(count)
    ]


def weights(values: Sequence[float], count: int) -> list[float]:
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise InvalidInput(
            f"weights must be a list of {count} numbers, got {type(values).__name__}"
        )
    items = list(values)
    if len(items) != count:
        raise InvalidInput(
            f"weights has {len(items)} values for {count} items; give one weight per item"
        )
    for w in items:
        if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w):
            raise InvalidInput(f"weights must be finite numbers, got {w!r}")
    if abs(sum(items)) < 1e-6:
        raise InvalidInput(
            f"weights sum to {sum(items)}; they must not cancel out (e.g. 0.5 and 0.5)"
        )
    return [float(w) for w in items]


def choice(value: str, name: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise InvalidInput(f"{name} {value!r} is unknown; choose one of {', '.join(allowed)}")
    return value
