"""The synthetic demo dataset: deterministic scenes, correct renders, captions that say it all."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import pytest

from kandinsky.demo import data
from kandinsky.errors import InvalidInput

# What each attribute looks like in a caption, written independently of the module's tables.
EN_POSITION = {
    "left": r"\bleft\b",
    "right": r"\bright\b",
    "top": r"\b(top|upper)\b",
    "bottom": r"\b(bottom|lower)\b",
    "center": r"\b(center|middle)\b",
}
RU_POSITION = {
    "left": r"\bслева\b",
    "right": r"\bсправа\b",
    "top": r"\b(сверху|вверху)\b",
    "bottom": r"\b(снизу|внизу)\b",
    "center": r"\b(в центре|посередине)\b",
}
RU_KIND = {
    "circle": r"\bкруг(а|ом)?\b",
    "square": r"\bквадрат(а|ом)?\b",
    "triangle": r"\bтреугольник(а|ом)?\b",
    "star": r"\bзвезд(а|ы|ой)\b",
    "heart": r"\bсердц(е|а|ем)\b",
    "diamond": r"\bромб(а|ом)?\b",
}
RU_COLOR = {
    "red": "красн",
    "orange": "оранжев",
    "yellow": "жёлт",
    "green": "зелён",
    "blue": "син",
    "purple": "фиолетов",
    "pink": "розов",
}
RU_SIZE = {"small": "маленьк", "medium": "средн", "large": "больш"}
RU_BACKGROUND = {
    "white": r"бел(ый фон|ом фоне)",
    "black": r"чёрн(ый фон|ом фоне)",
    "gray": r"\bсер(ый фон|ом фоне)",
    "light blue": r"голуб(ой фон|ом фоне)",
    "beige": r"бежев(ый фон|ом фоне)",
    "blue gradient": r"син(ий градиентный фон|ем градиентном фоне)",
    "yellow gradient": r"жёлт(ый градиентный фон|ом градиентном фоне)",
    "gray gradient": r"\bсер(ый градиентный фон|ом градиентном фоне)",
}


def mentioned(text: str, scene: data.Scene, language: str) -> set[str]:
    """Attributes that `text` names for every shape of `scene` (and the background)."""
    found = set()
    checks: dict[str, list[str]] = {"shape": [], "color": [], "size": [], "position": []}
    for s in scene.shapes:
        if language == "en":
            checks["shape"].append(rf"\b{s.kind}\b")
            checks["color"].append(rf"\b{s.color}\b")
            checks["size"].append(rf"\b{s.size}\b")
            checks["position"].append(EN_POSITION[s.position])
        else:
            checks["shape"].append(RU_KIND[s.kind])
            checks["color"].append(rf"\b{RU_COLOR[s.color]}\w+")
            checks["size"].append(rf"\b{RU_SIZE[s.size]}\w+")
            checks["position"].append(RU_POSITION[s.position])
    for attribute, patterns in checks.items():
        if all(re.search(p, text) for p in patterns):
            found.add(attribute)
    background = (
        rf"\b{scene.background} background\b"
        if language == "en"
        else RU_BACKGROUND[scene.background]
    )
    if re.search(background, text):
        found.add("background")
    return found


def test_same_seed_same_examples_bytes_equal_and_splits_differ() -> None:
    first = list(data.generate(6, seed=3, size=64))
    second = list(data.generate(6, seed=3, size=64))
    heldout = list(data.generate(6, seed=3, size=64, split="heldout"))
    other_seed = list(data.generate(6, seed=4, size=64))
    for a, b in zip(first, second, strict=True):
        assert a.image.tobytes() == b.image.tobytes()
        assert (a.caption, a.language, a.scene, a.key) == (b.caption, b.language, b.scene, b.key)
    assert all(a.image.tobytes() != h.image.tobytes() for a, h in zip(first, heldout, strict=True))
    assert [a.scene for a in first] != [o.scene for o in other_seed]
    assert len({e.key for e in first + heldout + other_seed}) == 18


def test_each_example_is_a_pure_function_of_its_index() -> None:
    examples = list(data.generate(5, seed=1, size=64))
    alone = data.make_example(seed=1, index=4, size=64)
    assert alone.image.tobytes() == examples[4].image.tobytes()
    assert alone.caption == examples[4].caption


def test_sampled_scenes_respect_their_rules() -> None:
    rng = np.random.default_rng(0)
    counts = set()
    for _ in range(400):
        scene = data.sample_scene(rng)
        counts.add(len(scene.shapes))
        assert 1 <= len(scene.shapes) <= 3
        assert len({s.position for s in scene.shapes}) == len(scene.shapes)
        excluded = data.BACKGROUNDS[scene.background].excludes
        assert all(s.color not in excluded for s in scene.shapes)
    assert counts == {1, 2, 3}


def test_invalid_scenes_are_refused_in_the_users_words() -> None:
    with pytest.raises(InvalidInput, match="share a position"):
        data.Scene((data.ShapeSpec("circle", "red", "small", "left"),) * 2, background="white")
    with pytest.raises(InvalidInput, match="color 'teal'"):
        data.ShapeSpec("circle", "teal", "small", "left")
    with pytest.raises(InvalidInput, match="background 'plaid'"):
        data.Scene((), background="plaid")


@pytest.mark.parametrize("size", [64, 128])
@pytest.mark.parametrize("position", list(data.POSITIONS))
def test_render_puts_the_shape_in_its_cell(position: str, size: int) -> None:
    rng = np.random.default_rng(7)
    for kind in data.KINDS:
        scene = data.Scene((data.ShapeSpec(kind, "red", "medium", position),), "white")
        for jitter in (None, rng):
            image = np.asarray(data.render(scene, size=size, rng=jitter)).astype(int)
            assert image.shape == (size, size, 3)
            ys, xs = np.nonzero(np.abs(image - 255).sum(-1) > 60)
            centroid = (xs.mean() + 0.5) / size, (ys.mean() + 0.5) / size
            expected = data.POSITIONS[position]
            assert abs(centroid[0] - expected[0]) < 0.06, (kind, centroid)
            assert abs(centroid[1] - expected[1]) < 0.06, (kind, centroid)


def test_render_colors_are_exact_inside_shapes_and_backgrounds_fill_the_rest() -> None:
    scene = data.Scene((data.ShapeSpec("square", "blue", "large", "center"),), "black")
    image = np.asarray(data.render(scene, size=64))
    assert tuple(image[32, 32]) == data.COLORS["blue"]
    assert tuple(image[2, 2]) == data.BACKGROUNDS["black"].top
    gradient = np.asarray(data.render(data.Scene((), "yellow gradient"), size=64))
    assert tuple(gradient[0, 0]) != tuple(gradient[63, 0])  # vertical gradient
    assert (gradient[:, 0] == gradient[:, 63]).all()


@pytest.mark.parametrize(
    ("kind", "color", "size", "case", "expected"),
    [
        ("star", "red", None, "nom", "красная звезда"),
        ("circle", "red", None, "nom", "красный круг"),
        ("heart", "red", None, "nom", "красное сердце"),
        ("heart", "blue", "medium", "nom", "среднее синее сердце"),
        ("star", "blue", "large", "nom", "большая синяя звезда"),
        ("triangle", "yellow", "small", "nom", "маленький жёлтый треугольник"),
        ("star", "blue", "large", "gen", "большой синей звезды"),
        ("circle", "yellow", "small", "gen", "маленького жёлтого круга"),
        ("heart", "green", "medium", "gen", "среднего зелёного сердца"),
        ("diamond", "purple", "large", "gen", "большого фиолетового ромба"),
        ("heart", "yellow", "small", "ins", "маленьким жёлтым сердцем"),
        ("star", "pink", "large", "ins", "большой розовой звездой"),
        ("square", "blue", "medium", "ins", "средним синим квадратом"),
        ("triangle", "orange", "large", "ins", "большим оранжевым треугольником"),
        ("star", "green", "small", "ins", "маленькой зелёной звездой"),
    ],
)
def test_russian_adjectives_agree_with_shape_gender_and_case(
    kind: str, color: str, size: str | None, case: str, expected: str
) -> None:
    shape = data.ShapeSpec(kind, color, size or "small", "left")
    assert data.ru_object(shape, case, with_size=size is not None) == expected


@pytest.mark.parametrize(
    ("background", "case", "expected"),
    [
        ("white", "pre", "на белом фоне"),
        ("black", "nom", "чёрный фон"),
        ("light blue", "pre", "на голубом фоне"),
        ("blue gradient", "pre", "на синем градиентном фоне"),
        ("yellow gradient", "nom", "жёлтый градиентный фон"),
        ("gray gradient", "pre", "на сером градиентном фоне"),
    ],
)
def test_russian_backgrounds_decline(background: str, case: str, expected: str) -> None:
    assert data.ru_background(background, case) == expected


ROW = data.Scene(
    (
        data.ShapeSpec("circle", "red", "small", "left"),
        data.ShapeSpec("square", "blue", "large", "right"),
    ),
    "white",
)


def test_relation_captions_read_naturally_in_both_languages() -> None:
    rng = np.random.default_rng(0)
    row = ROW
    assert (
        data.caption(row, "en", rng, "en_relation")
        == "a small red circle to the left of a large blue square on a white background"
    )
    assert (
        data.caption(row, "ru", rng, "ru_relation")
        == "маленький красный круг слева от большого синего квадрата на белом фоне"
    )
    column = data.Scene(
        (
            data.ShapeSpec("heart", "orange", "medium", "bottom"),
            data.ShapeSpec("star", "green", "small", "center"),
        ),
        "blue gradient",
    )
    assert (
        data.caption(column, "en", rng, "en_relation")
        == "a medium orange heart below a small green star on a blue gradient background"
    )
    assert (
        data.caption(column, "ru", rng, "ru_relation")
        == "среднее оранжевое сердце под маленькой зелёной звездой на синем градиентном фоне"
    )
    diagonal = data.Scene((row.shapes[0], replace(column.shapes[1], position="top")), "white")
    with pytest.raises(InvalidInput, match="one row or column"):
        data.caption(diagonal, "en", rng, "en_relation")


def test_short_relation_captions_are_how_people_write_them() -> None:
    """The README's main command, "красный круг слева от синего квадрата", has no sizes and no
    background: the short relation template puts exactly that phrasing in the training data."""
    rng = np.random.default_rng(0)
    row = ROW
    assert (
        data.caption(row, "ru", rng, "ru_relation_short") == "красный круг слева от синего квадрата"
    )
    assert (
        data.caption(row, "en", rng, "en_relation_short")
        == "a red circle to the left of a blue square"
    )
    examples = list(data.generate(600, seed=3, size=16))
    templates = [e.template for e in examples]
    for language in ("en", "ru"):
        assert templates.count(f"{language}_relation_short") >= 5
        assert templates.count(f"{language}_relation") >= 5


def test_every_template_names_what_it_promises() -> None:
    rng = np.random.default_rng(1)
    for name, template in data.TEMPLATES.items():
        for _ in range(60):
            scene = data.sample_scene(rng, max_shapes=2 if template.pair_only else 3)
            if template.pair_only and data._relation(scene) is None:
                continue
            text = data.caption(scene, template.language, rng, name)  # type: ignore[arg-type]
            missing = template.mentions - mentioned(text, scene, template.language)
            assert not missing, f"{name}: {text!r} lacks {missing}"


def test_captions_vary_and_mostly_name_every_attribute() -> None:
    examples = list(data.generate(200, seed=5, size=16))
    languages = [e.language for e in examples]
    assert 70 <= languages.count("ru") <= 130
    assert len({e.template for e in examples}) >= 12
    complete = [mentioned(e.caption, e.scene, e.language) >= data.ALL_ATTRIBUTES for e in examples]
    assert sum(complete) / len(complete) >= 0.7


def test_eval_prompts_name_every_attribute_and_are_deterministic() -> None:
    for language in ("en", "ru"):
        for num_shapes in (1, 2):
            prompts = data.eval_prompts(20, seed=0, language=language, num_shapes=num_shapes)
            assert prompts == data.eval_prompts(20, 0, language, num_shapes)
            for text, scene in prompts:
                assert len(scene.shapes) == num_shapes
                assert mentioned(text, scene, language) >= data.ALL_ATTRIBUTES, text


def test_write_folder_writes_matching_png_txt_pairs_and_scenes(tmp_path) -> None:
    from PIL import Image

    folder = data.write_folder(tmp_path / "demo", n=6, seed=2, size=64, split="heldout")
    examples = list(data.generate(6, seed=2, size=64, split="heldout"))
    pngs = sorted(p.name for p in folder.glob("*.png"))
    assert pngs == [f"{i:05d}.png" for i in range(6)]
    lines = [json.loads(x) for x in (folder / "scenes.jsonl").read_text().splitlines()]
    for i, example in enumerate(examples):
        stem = f"{i:05d}"
        assert (folder / f"{stem}.txt").read_text(encoding="utf-8").strip() == example.caption
        with Image.open(folder / f"{stem}.png") as image:
            assert image.tobytes() == example.image.tobytes()
        assert lines[i]["language"] == example.language
        assert lines[i]["key"] == example.key
    assert [s for _, s in data.read_scenes(folder)] == [e.scene for e in examples]
