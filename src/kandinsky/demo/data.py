"""Synthetic captioned scenes for the demo model: shapes, colours, positions, backgrounds.

A scene holds 1–3 shapes (6 kinds, 7 colours, 3 sizes), each in its own cell of
left/right/top/bottom/center, on one of 8 backgrounds (5 plain colours, 3 vertical
gradients). Images are drawn with PIL at 4× and box-downsampled (antialiased); captions
come in English and Russian from several templates (see `TEMPLATES` for which attributes
each one mentions). Everything is deterministic by (seed, split, index).

Usage::

    from kandinsky.demo import data
    for example in data.generate(4, seed=0, size=64):
        example.image.save(f"{example.key}.png"); print(example.caption)
    data.write_folder("demo_train", n=20000, seed=0, size=64, split="train")
    prompts = data.eval_prompts(50, seed=0, language="ru", num_shapes=1)  # [(text, Scene)]

Splits: "train" and "heldout" draw from disjoint seed streams (SeedSequence entropy
`[seed, split_code, index]`); attribute combinations are not held out, every combination
may occur in both splits. Shapes never share a colour with the background's colour family
(e.g. no blue shape on "light blue" or "blue gradient").
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

from kandinsky.errors import InvalidInput

Language = Literal["en", "ru"]
Split = Literal["train", "heldout"]

KINDS: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "diamond")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (255, 140, 0),
    "yellow": (250, 215, 0),
    "green": (20, 150, 50),
    "blue": (25, 60, 220),
    "purple": (130, 40, 180),
    "pink": (255, 110, 190),
}
SIZES: dict[str, float] = {"small": 0.14, "medium": 0.2, "large": 0.26}  # side / image side
POSITIONS: dict[str, tuple[float, float]] = {  # cell centre as (x, y) fractions
    "left": (0.19, 0.5),
    "right": (0.81, 0.5),
    "top": (0.5, 0.19),
    "bottom": (0.5, 0.81),
    "center": (0.5, 0.5),
}


@dataclass(frozen=True)
class Background:
    """A plain colour (top == bottom) or a vertical gradient from `top` to `bottom`."""

    top: tuple[int, int, int]
    bottom: tuple[int, int, int]
    excludes: tuple[str, ...] = ()  # shape colours too close to this background


BACKGROUNDS: dict[str, Background] = {
    "white": Background((255, 255, 255), (255, 255, 255)),
    "black": Background((15, 15, 15), (15, 15, 15)),
    "gray": Background((128, 128, 128), (128, 128, 128)),
    "light blue": Background((165, 205, 240), (165, 205, 240), ("blue",)),
    "beige": Background((235, 220, 185), (235, 220, 185), ("yellow", "orange")),
    "blue gradient": Background((200, 225, 255), (40, 70, 150), ("blue", "purple")),
    "yellow gradient": Background((255, 250, 205), (235, 180, 60), ("yellow", "orange")),
    "gray gradient": Background((240, 240, 240), (50, 50, 50)),
}
SUPERSAMPLE = 4


@dataclass(frozen=True)
class ShapeSpec:
    """One shape: what it is, its colour, its size class and its position cell."""

    kind: str
    color: str
    size: str
    position: str

    def __post_init__(self) -> None:
        for value, allowed, what in (
            (self.kind, KINDS, "kind"),
            (self.color, COLORS, "color"),
            (self.size, SIZES, "size"),
            (self.position, POSITIONS, "position"),
        ):
            if value not in allowed:
                raise InvalidInput(f"shape {what} {value!r} is not one of {', '.join(allowed)}")


@dataclass(frozen=True)
class Scene:
    """Shapes (at most one per position) on a background.

    Generated scenes hold 1–3 shapes; a judge's prediction may hold 0–5.
    """

    shapes: tuple[ShapeSpec, ...]
    background: str

    def __post_init__(self) -> None:
        if self.background not in BACKGROUNDS:
            raise InvalidInput(
                f"background {self.background!r} is not one of {', '.join(BACKGROUNDS)}"
            )
        positions = [shape.position for shape in self.shapes]
        if len(set(positions)) != len(positions):
            raise InvalidInput(f"two shapes share a position: {positions}")

    def to_dict(self) -> dict:
        return {"shapes": [asdict(shape) for shape in self.shapes], "background": self.background}

    @classmethod
    def from_dict(cls, data: dict) -> Scene:
        shapes = tuple(ShapeSpec(**shape) for shape in data["shapes"])
        return cls(shapes=shapes, background=data["background"])


@dataclass
class Example:
    """One rendered, captioned scene; `key` names it uniquely across seeds and splits."""

    image: Image.Image
    caption: str
    language: str
    scene: Scene
    key: str
    template: str


# ---------------------------------------------------------------------------- sampling


def sample_scene(rng: np.random.Generator, max_shapes: int = 3, min_shapes: int = 1) -> Scene:
    """A random scene with `min_shapes`..`max_shapes` shapes at distinct positions."""
    if not 1 <= min_shapes <= max_shapes <= 3:
        raise InvalidInput(
            f"need 1 <= min_shapes <= max_shapes <= 3, got {min_shapes}, {max_shapes}"
        )
    background = str(rng.choice(list(BACKGROUNDS)))
    colors = [c for c in COLORS if c not in BACKGROUNDS[background].excludes]
    count = int(rng.integers(min_shapes, max_shapes + 1))
    positions = rng.choice(list(POSITIONS), size=count, replace=False)
    shapes = tuple(
        ShapeSpec(
            kind=str(rng.choice(KINDS)),
            color=str(rng.choice(colors)),
            size=str(rng.choice(list(SIZES))),
            position=str(position),
        )
        for position in positions
    )
    return Scene(shapes=shapes, background=background)


# ---------------------------------------------------------------------------- rendering


def _background_array(background: Background, side: int) -> np.ndarray:
    top = np.asarray(background.top, dtype=np.float64)
    bottom = np.asarray(background.bottom, dtype=np.float64)
    t = np.linspace(0.0, 1.0, side)[:, None, None]
    rows = np.rint(top * (1.0 - t) + bottom * t).astype(np.uint8)
    return np.ascontiguousarray(np.broadcast_to(rows, (side, side, 3)))


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Outline of a shape of half-extent `r` centred at (cx, cy), rotated by `angle` radians."""
    if kind == "square":
        points = [(math.cos(a), math.sin(a)) for a in np.pi / 4 + np.arange(4) * np.pi / 2]
        points = [(0.85 * x * math.sqrt(2), 0.85 * y * math.sqrt(2)) for x, y in points]
    elif kind == "diamond":
        points = [(0.0, -1.0), (0.68, 0.0), (0.0, 1.0), (-0.68, 0.0)]
    elif kind == "triangle":
        points = [(0.0, -1.0), (1.0, 0.85), (-1.0, 0.85)]
    elif kind == "star":
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, 1.05, 0.45)
        points = [
            (rr * math.cos(a), rr * math.sin(a) + 0.08) for a, rr in zip(angles, radii, strict=True)
        ]
    elif kind == "heart":
        t = np.linspace(0.0, 2.0 * np.pi, 72, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        points = [(float(a) / 16.5, (float(b) - 2.5) / 14.5) for a, b in zip(x, y, strict=True)]
    else:
        raise InvalidInput(f"no polygon for shape kind {kind!r}")
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * cos - y * sin), cy + r * (x * sin + y * cos)) for x, y in points]


def render(scene: Scene, size: int = 64, rng: np.random.Generator | None = None) -> Image.Image:
    """Draw `scene` as a `size`×`size` RGB image; `rng` adds small placement/size/angle jitter."""
    if size < 16:
        raise InvalidInput(f"image size {size} is too small; use at least 16 (64 or 128 preferred)")
    side = size * SUPERSAMPLE
    canvas = Image.fromarray(_background_array(BACKGROUNDS[scene.background], side))
    draw = ImageDraw.Draw(canvas)
    for shape in scene.shapes:
        fx, fy = POSITIONS[shape.position]
        scale, angle = 1.0, 0.0
        if rng is not None:
            fx += float(rng.uniform(-0.03, 0.03))
            fy += float(rng.uniform(-0.03, 0.03))
            scale = float(rng.uniform(0.9, 1.1))
            angle = float(rng.uniform(-0.17, 0.17))  # about ±10°
        cx, cy, r = fx * side, fy * side, 0.5 * SIZES[shape.size] * scale * side
        color = COLORS[shape.color]
        if shape.kind == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=color)
        else:
            draw.polygon(_polygon(shape.kind, cx, cy, r, angle), fill=color)
    return canvas.resize((size, size), Image.Resampling.BOX)


# ---------------------------------------------------------------------------- English words

_EN_POSITION = {
    "left": ("on the left", "on the left side"),
    "right": ("on the right", "on the right side"),
    "top": ("at the top", "in the upper part"),
    "bottom": ("at the bottom", "in the lower part"),
    "center": ("in the center", "in the middle"),
}
_EN_POSITION_SHORT = {
    "left": "left side",
    "right": "right side",
    "top": "top",
    "bottom": "bottom",
    "center": "center",
}


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _en_object(shape: ShapeSpec, with_size: bool) -> str:
    words = [shape.size] if with_size else []
    return _article(" ".join([*words, shape.color, shape.kind]))


def _join(parts: list[str], conjunction: str) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + f" {conjunction} " + parts[-1]


# ---------------------------------------------------------------------------- Russian words

# Adjective declension: stem + ending by class, gender (m, f, n) and case.
_RU_ENDINGS: dict[str, dict[str, tuple[str, str, str]]] = {
    "hard": {
        "nom": ("ый", "ая", "ое"),
        "gen": ("ого", "ой", "ого"),
        "ins": ("ым", "ой", "ым"),
        "pre": ("ом", "ой", "ом"),
    },  # fmt: skip
    "soft": {
        "nom": ("ий", "яя", "ее"),
        "gen": ("его", "ей", "его"),
        "ins": ("им", "ей", "им"),
        "pre": ("ем", "ей", "ем"),
    },  # fmt: skip
    "velar": {
        "nom": ("ий", "ая", "ое"),
        "gen": ("ого", "ой", "ого"),
        "ins": ("им", "ой", "им"),
        "pre": ("ом", "ой", "ом"),
    },  # fmt: skip
    "stressed": {
        "nom": ("ой", "ая", "ое"),
        "gen": ("ого", "ой", "ого"),
        "ins": ("ым", "ой", "ым"),
        "pre": ("ом", "ой", "ом"),
    },  # fmt: skip
    "stressed_velar": {
        "nom": ("ой", "ая", "ое"),
        "gen": ("ого", "ой", "ого"),
        "ins": ("им", "ой", "им"),
        "pre": ("ом", "ой", "ом"),
    },  # fmt: skip
}
_RU_ADJECTIVES: dict[str, tuple[str, str]] = {
    # shape colours
    "red": ("красн", "hard"),
    "orange": ("оранжев", "hard"),
    "yellow": ("жёлт", "hard"),
    "green": ("зелён", "hard"),
    "blue": ("син", "soft"),
    "purple": ("фиолетов", "hard"),
    "pink": ("розов", "hard"),
    # sizes
    "small": ("маленьк", "velar"),
    "medium": ("средн", "soft"),
    "large": ("больш", "stressed_velar"),
    # background words
    "white": ("бел", "hard"),
    "black": ("чёрн", "hard"),
    "gray": ("сер", "hard"),
    "light blue": ("голуб", "stressed"),
    "beige": ("бежев", "hard"),
    "gradient": ("градиентн", "hard"),
}
_RU_GENDER_INDEX = {"m": 0, "f": 1, "n": 2}
# shape noun: gender, nominative, genitive, instrumental
_RU_NOUNS: dict[str, tuple[str, str, str, str]] = {
    "circle": ("m", "круг", "круга", "кругом"),
    "square": ("m", "квадрат", "квадрата", "квадратом"),
    "triangle": ("m", "треугольник", "треугольника", "треугольником"),
    "star": ("f", "звезда", "звезды", "звездой"),
    "heart": ("n", "сердце", "сердца", "сердцем"),
    "diamond": ("m", "ромб", "ромба", "ромбом"),
}
_RU_NOUN_CASE = {"nom": 1, "gen": 2, "ins": 3}
_RU_POSITION = {
    "left": ("слева",),
    "right": ("справа",),
    "top": ("сверху", "вверху"),
    "bottom": ("снизу", "внизу"),
    "center": ("в центре", "посередине"),
}
_RU_BACKGROUND_WORDS: dict[str, tuple[str, ...]] = {
    "white": ("white",),
    "black": ("black",),
    "gray": ("gray",),
    "light blue": ("light blue",),
    "beige": ("beige",),
    "blue gradient": ("blue", "gradient"),
    "yellow gradient": ("yellow", "gradient"),
    "gray gradient": ("gray", "gradient"),
}


def ru_adjective(word: str, gender: str, case: str) -> str:
    """English adjective key → Russian form, e.g. ("red", "f", "nom") → "красная"."""
    stem, kind = _RU_ADJECTIVES[word]
    return stem + _RU_ENDINGS[kind][case][_RU_GENDER_INDEX[gender]]


def ru_object(shape: ShapeSpec, case: str = "nom", with_size: bool = False) -> str:
    """A shape as a Russian noun phrase, agreeing in gender and case: "большой синей звезды"."""
    gender = _RU_NOUNS[shape.kind][0]
    words = [ru_adjective(shape.size, gender, case)] if with_size else []
    words.append(ru_adjective(shape.color, gender, case))
    words.append(_RU_NOUNS[shape.kind][_RU_NOUN_CASE[case]])
    return " ".join(words)


def ru_background(background: str, case: str) -> str:
    """ "на белом фоне" (case="pre") or "белый фон" (case="nom")."""
    words = [ru_adjective(w, "m", case) for w in _RU_BACKGROUND_WORDS[background]]
    if case == "pre":
        return "на " + " ".join(words) + " фоне"
    return " ".join(words) + " фон"


# ---------------------------------------------------------------------------- templates

Words = Callable[[Scene, np.random.Generator], str]
ALL_ATTRIBUTES = frozenset({"shape", "color", "position", "background"})


@dataclass(frozen=True)
class Template:
    """A caption template: its language, which attributes it names, and when it applies."""

    name: str
    language: str
    mentions: frozenset[str]  # subset of shape, color, size, position, background
    write: Words
    pair_only: bool = False  # needs exactly two shapes in one row or one column


_ROW = ("left", "center", "right")
_COLUMN = ("top", "center", "bottom")


def _relation(scene: Scene) -> tuple[ShapeSpec, str, ShapeSpec] | None:
    """(a, relation, b) for two shapes in one row ("left of") or column ("above"), else None."""
    if len(scene.shapes) != 2:
        return None
    a, b = scene.shapes
    for line, before, after in ((_ROW, "left", "right"), (_COLUMN, "above", "below")):
        if a.position in line and b.position in line:
            return a, before if line.index(a.position) < line.index(b.position) else after, b
    return None


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _en_placed(scene: Scene, rng: np.random.Generator, with_size: bool) -> str:
    return _join(
        [
            f"{_en_object(s, with_size)} {_pick(rng, _EN_POSITION[s.position])}"
            for s in scene.shapes
        ],
        "and",
    )


def _en_on_background(scene: Scene) -> str:
    comma = "," if len(scene.shapes) > 1 else ""  # "… on the right, on a white background"
    return f"{comma} on {_article(scene.background)} background"


def _ru_placed(scene: Scene, rng: np.random.Generator, with_size: bool, pos_first: bool) -> str:
    parts = []
    for s in scene.shapes:
        obj, pos = ru_object(s, "nom", with_size), _pick(rng, _RU_POSITION[s.position])
        parts.append(f"{pos} {obj}" if pos_first else f"{obj} {pos}")
    return _join(parts, "и")


_EN_RELATION = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}  # fmt: skip
_RU_RELATION = {"left": ("слева от", "gen"), "right": ("справа от", "gen"), "above": ("над", "ins"), "below": ("под", "ins")}  # fmt: skip


def _en_relation(scene: Scene, complete: bool) -> str:
    """ "a small red circle to the left of a large blue square on a white background", or
    without sizes and background ("a red circle to the left of a blue square")."""
    a, rel, b = _relation(scene)  # type: ignore[misc]
    words = f"{_en_object(a, complete)} {_EN_RELATION[rel]} {_en_object(b, complete)}"
    return f"{words} on {_article(scene.background)} background" if complete else words


def _ru_relation(scene: Scene, complete: bool) -> str:
    a, rel, b = _relation(scene)  # type: ignore[misc]
    preposition, case = _RU_RELATION[rel]
    words = f"{ru_object(a, 'nom', complete)} {preposition} {ru_object(b, case, complete)}"
    return f"{words} {ru_background(scene.background, 'pre')}" if complete else words


_WITH_SIZE = ALL_ATTRIBUTES | {"size"}


def _relation_templates(
    language: Language, write: Callable[[Scene, bool], str]
) -> tuple[Template, Template]:
    """`<language>_relation` (sizes and background too) and `<language>_relation_short`."""
    return (
        Template(
            f"{language}_relation",
            language,
            _WITH_SIZE - {"position"},
            lambda s, r: write(s, True),
            pair_only=True,
        ),
        Template(
            f"{language}_relation_short",
            language,
            frozenset({"shape", "color"}),
            lambda s, r: write(s, False),
            pair_only=True,
        ),
    )


_TEMPLATE_LIST: tuple[Template, ...] = (
    Template(
        "en_full",
        "en",
        _WITH_SIZE,
        lambda s, r: f"{_en_placed(s, r, True)}{_en_on_background(s)}",
    ),
    Template(
        "en_plain",
        "en",
        ALL_ATTRIBUTES,
        lambda s, r: f"{_en_placed(s, r, False)}{_en_on_background(s)}",
    ),
    Template(
        "en_list",
        "en",
        ALL_ATTRIBUTES,
        lambda s, r: "; ".join(
            [f"{x.color} {x.kind}, {_EN_POSITION_SHORT[x.position]}" for x in s.shapes]
            + [f"{s.background} background"]
        ),  # "red circle, left side; blue star, top; white background"
    ),
    Template(
        "en_background_first",
        "en",
        ALL_ATTRIBUTES,
        lambda s, r: f"{_article(s.background)} background with {_en_placed(s, r, False)}",
    ),
    Template(
        "en_picture",
        "en",
        _WITH_SIZE,
        lambda s, r: f"a picture of {_en_placed(s, r, True)}, {s.background} background",
    ),
    Template(
        "en_no_background", "en", _WITH_SIZE - {"background"}, lambda s, r: _en_placed(s, r, True)
    ),  # fmt: skip
    *_relation_templates("en", _en_relation),
    Template(
        "ru_full",
        "ru",
        _WITH_SIZE,
        lambda s, r: f"{_ru_placed(s, r, True, False)} {ru_background(s.background, 'pre')}",
    ),
    Template(
        "ru_plain",
        "ru",
        ALL_ATTRIBUTES,
        lambda s, r: f"{_ru_placed(s, r, False, False)} {ru_background(s.background, 'pre')}",
    ),
    Template(
        "ru_list",
        "ru",
        ALL_ATTRIBUTES,
        lambda s, r: "; ".join(
            [f"{ru_object(x)}, {_RU_POSITION[x.position][0]}" for x in s.shapes]
            + [ru_background(s.background, "nom")]
        ),  # "красный круг, слева; синяя звезда, сверху; белый фон"
    ),
    Template(
        "ru_background_first",
        "ru",
        ALL_ATTRIBUTES,
        lambda s, r: f"{ru_background(s.background, 'pre')} {_ru_placed(s, r, False, True)}",
    ),
    Template(
        "ru_picture",
        "ru",
        _WITH_SIZE,
        lambda s, r: (
            f"картинка: {_ru_placed(s, r, True, False)}, {ru_background(s.background, 'nom')}"
        ),  # fmt: skip
    ),
    Template(
        "ru_no_background",
        "ru",
        _WITH_SIZE - {"background"},
        lambda s, r: _ru_placed(s, r, True, False),
    ),  # fmt: skip
    *_relation_templates("ru", _ru_relation),
)
TEMPLATES: dict[str, Template] = {t.name: t for t in _TEMPLATE_LIST}
"""Every caption template by name. Templates that omit something: `*_no_background` (no
background), `*_relation` (no absolute positions: "a small red circle to the left of a large
blue square on a white background"; only for two shapes in one row or column),
`*_relation_short` (the same without sizes and background: "a red circle to the left of a
blue square", the way people write it). All others name shape, colour, position and
background; `*_full`/`*_picture`/`*_relation`/`*_no_background` also size."""
NO_BACKGROUND_PROBABILITY = 0.1
RELATION_PROBABILITY = 0.5


def caption(
    scene: Scene, language: Language, rng: np.random.Generator, template: str | None = None
) -> str:
    """A caption for `scene` in `language`; the template is drawn by `rng` unless named."""
    return caption_with_template(scene, language, rng, template)[0]


def caption_with_template(
    scene: Scene, language: Language, rng: np.random.Generator, template: str | None = None
) -> tuple[str, str]:
    """(caption, template name). Relation templates are used for half of the eligible pairs (half
    of them the short one), background-free ones for 10% of captions, the complete ones
    otherwise."""
    if language not in ("en", "ru"):
        raise InvalidInput(f"caption language {language!r} is not one of en, ru")
    if not scene.shapes:
        raise InvalidInput("cannot caption a scene without shapes")
    if template is None:
        u = float(rng.random())
        if _relation(scene) is not None and u < RELATION_PROBABILITY:
            short = u < RELATION_PROBABILITY / 2  # no extra draw: other captions stay the same
            template = f"{language}_relation_short" if short else f"{language}_relation"
        elif u > 1.0 - NO_BACKGROUND_PROBABILITY:
            template = f"{language}_no_background"
        else:
            template = _pick(rng, complete_templates(language))
    chosen = TEMPLATES.get(template)
    if chosen is None or chosen.language != language:
        raise InvalidInput(f"no {language} caption template named {template!r}")
    if chosen.pair_only and _relation(scene) is None:
        raise InvalidInput(f"template {template!r} needs two shapes in one row or column")
    return chosen.write(scene, rng), template


def complete_templates(language: Language) -> tuple[str, ...]:
    """Templates of `language` that name shape, colour, position and background of every shape."""
    return tuple(
        t.name
        for t in _TEMPLATE_LIST
        if t.language == language and t.mentions >= ALL_ATTRIBUTES and not t.pair_only
    )


# ---------------------------------------------------------------------------- datasets

_SPLIT_CODES: dict[str, int] = {"train": 0, "heldout": 1, "eval": 2, "judge": 3}


def example_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of one example; streams of different (seed, split, index) are disjoint."""
    if split not in _SPLIT_CODES:
        raise InvalidInput(f"split {split!r} is not one of {', '.join(_SPLIT_CODES)}")
    if seed < 0 or index < 0:
        raise InvalidInput(f"seed and index must be non-negative, got {seed} and {index}")
    return np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_CODES[split], index]))


def make_example(
    seed: int, index: int, size: int = 64, split: Split = "train", max_shapes: int = 3
) -> Example:
    """Example `index` of the (seed, split) stream: scene, jittered render, 50/50 EN/RU caption."""
    rng = example_rng(seed, split, index)
    scene = sample_scene(rng, max_shapes=max_shapes)
    image = render(scene, size=size, rng=rng)
    language: Language = "en" if rng.random() < 0.5 else "ru"
    text, template = caption_with_template(scene, language, rng)
    key = f"{split}-{seed}-{index:06d}"
    return Example(image, text, language, scene, key, template)


def generate(
    n: int, seed: int, size: int = 64, split: Split = "train", max_shapes: int = 3
) -> Iterator[Example]:
    """`n` examples, each a pure function of (seed, split, index)."""
    if split not in ("train", "heldout"):
        raise InvalidInput(f"split {split!r} is not one of train, heldout")
    for index in range(n):
        yield make_example(seed, index, size, split, max_shapes)


def write_folder(
    folder: str | Path, n: int, seed: int, size: int = 64, split: Split = "train"
) -> Path:
    """Write `NNNNN.png` + `NNNNN.txt` (caption) pairs and `scenes.jsonl` (one line per example)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "scenes.jsonl", "w", encoding="utf-8") as lines:
        for index, example in enumerate(generate(n, seed, size, split)):
            stem = f"{index:05d}"
            example.image.save(folder / f"{stem}.png")
            (folder / f"{stem}.txt").write_text(example.caption + "\n", encoding="utf-8")
            record = {
                "file": f"{stem}.png",
                "key": example.key,
                "caption": example.caption,
                "language": example.language,
                "template": example.template,
                **example.scene.to_dict(),
            }
            lines.write(json.dumps(record, ensure_ascii=False) + "\n")
    return folder


def read_scenes(folder: str | Path) -> list[tuple[str, Scene]]:
    """(file name, scene) for every line of a folder's `scenes.jsonl`."""
    path = Path(folder) / "scenes.jsonl"
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [(r["file"], Scene.from_dict(r)) for r in records]


def eval_prompts(
    n: int, seed: int, language: Language = "en", num_shapes: int = 1
) -> list[tuple[str, Scene]]:
    """`n` prompts with their intended scenes, from complete templates only (every attribute named).

    Drawn from the "eval" stream, disjoint from train and heldout.
    """
    if not 1 <= num_shapes <= 3:
        raise InvalidInput(f"num_shapes must be 1, 2 or 3, got {num_shapes}")
    prompts = []
    for index in range(n):
        rng = example_rng(seed, "eval", index)
        scene = sample_scene(rng, max_shapes=num_shapes, min_shapes=num_shapes)
        template = _pick(rng, complete_templates(language))
        prompts.append((caption(scene, language, rng, template), scene))
    return prompts
