"""The demo model's training pipeline: the quick plan end to end, and the encoders' recipes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kandinsky.demo import data, encoders
from kandinsky.demo.config import DEMO, DemoPlan, StagePlan, count_parameters


@pytest.fixture(scope="module")
def corpus():
    examples = list(data.generate(128, seed=3, size=64))
    scenes = [e.scene for e in examples]
    images = np.stack([np.asarray(e.image) for e in examples])
    return images, scenes


@pytest.fixture(scope="module")
def tokenizers(corpus, tmp_path_factory):
    _, scenes = corpus
    folder = tmp_path_factory.mktemp("tok")
    text = encoders.caption_corpus(scenes, seed=0)
    clip_tok = encoders.train_clip_tokenizer(text, folder / "clip", 1024)
    mclip_tok = encoders.train_mclip_tokenizer(text, folder / "mclip", 512)
    return clip_tok, mclip_tok


def test_demo_config_fits_the_weight_budget():
    counts = count_parameters(DEMO)
    # fp16, with MoVQ and M-CLIP stored in two pipeline folders each (diffusers layout)
    size = 2 * (sum(counts.values()) + counts["movq"] + counts["text_encoder"])
    assert size <= 30e6


def test_tokenizers_behave_like_clip_and_xlmr(tokenizers):
    clip_tok, mclip_tok = tokenizers
    ids = clip_tok(["a red circle", ""], padding="max_length", max_length=12).input_ids
    assert ids[0][0] == len(clip_tok) - 2 and ids[1][:2] == [len(clip_tok) - 2, len(clip_tok) - 1]
    assert ids[1][2:] == [0] * 10  # padded with "!" (id 0); <|endoftext|> is the largest id
    assert max(max(row) for row in ids) == len(clip_tok) - 1 <= DEMO.clip.text.vocab_size - 1
    assert clip_tok("Красный КРУГ").input_ids == clip_tok("красный круг").input_ids
    x = mclip_tok(["красный круг", "Красный круг"], padding="max_length", max_length=12)
    assert x.input_ids[0][0] == 0 and 2 in x.input_ids[0] and x.input_ids[0][-1] == 1
    assert 3 not in x.input_ids[1]  # capitalised words are known pieces, not <unk>
    assert len(mclip_tok) <= DEMO.text_encoder.vocab_size


def test_contrastive_loss_falls(corpus, tokenizers):
    images, scenes = corpus
    clip_tok, _ = tokenizers
    torch.set_num_threads(1)
    _, losses = encoders.train_clip(
        images, scenes, clip_tok, DEMO, StagePlan(100, 32, 2e-3), seed=0, log=lambda _: None
    )
    assert np.mean(losses[-10:]) < 0.85 * np.mean(losses[:10])
    # the full plan's batches: half of them layout variants rendered on the fly
    _, hard = encoders.train_clip(
        images, scenes, clip_tok, DEMO, StagePlan(3, 16, 1e-3), 0, lambda _: None, 0.5
    )
    assert len(hard) == 3 and all(np.isfinite(hard))


def test_distillation_brings_languages_together(corpus, tokenizers):
    _, scenes = corpus
    clip_tok, mclip_tok = tokenizers
    torch.set_num_threads(1)
    torch.manual_seed(0)
    teacher = encoders.ClipPair(DEMO).text.eval()  # any fixed teacher separates the scenes
    student, losses = encoders.distill_mclip(
        scenes,
        teacher,
        clip_tok,
        mclip_tok,
        DEMO,
        StagePlan(80, 32, 2e-3),
        seed=0,
        log=lambda _: None,
    )
    assert losses[-1] < losses[0]
    same, other = encoders.cross_lingual_margin(student, mclip_tok, scenes[:32], seed=1)
    assert same > other + 0.05


def test_quick_plan_end_to_end(tmp_path):
    from kandinsky.demo.train import stage_times, train_demo
    from kandinsky.pipeline import Kandinsky21
    from kandinsky.training.checkpoint import read_state

    out = tmp_path / "run"
    model = train_demo(out, DemoPlan.quick(), threads=1, log=lambda _: None)
    weights = out / "weights"
    size = sum(f.stat().st_size for f in weights.rglob("*") if f.is_file())
    assert size <= 30e6
    assert set(stage_times(out)) >= {"data", "encoders", "movq", "prior", "decoder", "inpaint"}
    movq = json.loads((out / "stages" / "movq.json").read_text())
    assert set(movq["reconstruction_adherence"]) >= {"shape", "color", "position", "all"}
    binding = json.loads((out / "stages" / "encoders.json").read_text())["binding_cosines"]
    assert set(binding) == {"color", "kind", "position", "other"}
    report = out / "docs" / "report.md"
    assert "| text2img EN 1-object adherence |" in report.read_text(encoding="utf-8")
    for name in ("clip", "mclip", "movq", "prior", "decoder", "decoder_pixel", "inpaint"):
        assert (out / "docs" / f"loss_{name}.png").is_file()
    decoder = json.loads((out / "stages" / "decoder.json").read_text())
    assert (decoder["pixel_phase_steps"], decoder["pixel_clip_weight"]) == (4, 0.3)

    # resuming skips finished stages
    train_demo(out, DemoPlan.quick(), threads=1, log=lambda _: None)
    # a trainer stage run again counts the training its checkpoints hold from the first run
    (out / "stages" / "decoder.json").unlink()
    train_demo(out, DemoPlan.quick(), stages=("decoder",), threads=1, log=lambda _: None)
    held = read_state(out / "runs" / "decoder" / "checkpoints" / "step-000006").seconds
    assert 0 < held <= stage_times(out)["decoder"]

    for source in (model, weights):
        pipe = Kandinsky21.from_pretrained(source, inpainting=True)
        assert pipe.parts.config.unet == DEMO.unet
        # the plan's sampling settings travel with the model (generation_defaults.json)
        assert pipe.defaults == DemoPlan.quick().generation
        assert (pipe.defaults.guidance_scale, pipe.defaults.num_steps) == (2.5, 4)
        fast = {"seed": 0, "num_steps": 2, "prior_steps": 2}
        image = pipe.text2img("красный круг слева", height=64, width=64, **fast).image
        assert image.size == (64, 64)
        assert pipe.variations(image, height=64, width=64, **fast).image.size == (64, 64)
        assert pipe.mix([image, "a blue square"], [0.5, 0.5], height=64, width=64, **fast).image
        assert pipe.img2img(image, "a star", **fast).image.size == (64, 64)
        mask = np.zeros((64, 64), dtype=np.float32)
        mask[16:48, 16:48] = 1
        inpainted = pipe.inpaint(image, mask, "a star", **fast).image
        assert np.abs(np.asarray(inpainted, int) - np.asarray(image, int))[mask == 0].max() <= 2
        half = image.crop((0, 0, 32, 64))
        assert pipe.outpaint(half, "a star", extend=(0, 0, 32, 0), **fast).image.size == (64, 64)


def test_eval_chunks_text2img_calls_without_changing_the_images(tmp_path):
    """The gate table asks for more prompts than one call allows (64); chunking keeps seeds."""
    from kandinsky.demo.evaluate import _text2img
    from kandinsky.pipeline import Kandinsky21
    from kandinsky.testing import write_tiny_model

    pipe = Kandinsky21.from_pretrained(write_tiny_model(tmp_path / "tiny"))
    prompts = ["a red circle", "a blue square", "a green star", "two hearts", "a sun"]
    opts = {"seed": 7, "num_steps": 2, "prior_steps": 2}
    chunked = _text2img(prompts, pipe, 64, opts, chunk=2)
    whole = pipe.text2img(prompts, height=64, width=64, **opts).images
    assert len(chunked) == 5  # image i has seed 7 + i either way (rounding aside: ≤ 1/255)
    for a, b in zip(chunked, whole, strict=True):
        assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 1


def test_layout_variant_differs_only_in_kind_or_position():
    rng = np.random.default_rng(0)
    for example in data.generate(40, seed=2, size=64):
        scene, variant = example.scene, encoders.layout_variant(example.scene, rng)
        assert variant.background == scene.background
        assert sorted(s.color for s in variant.shapes) == sorted(s.color for s in scene.shapes)
        changed = [(a, b) for a, b in zip(scene.shapes, variant.shapes, strict=True) if a != b]
        assert len(changed) == 1
        a, b = changed[0]
        assert (a.kind != b.kind) != (a.position != b.position)  # exactly one of the two


def _changed(scene, variant):
    ((a, b),) = [(a, b) for a, b in zip(scene.shapes, variant.shapes, strict=True) if a != b]
    return "kind" if a.kind != b.kind else "position"


def test_layout_variant_kind_share_sets_how_often_the_kind_changes():
    scenes = [e.scene for e in data.generate(300, seed=3, size=64)]
    rng = np.random.default_rng(0)
    assert {_changed(s, encoders.layout_variant(s, rng, 1.0)) for s in scenes} == {"kind"}
    movable = [s for s in scenes if len(s.shapes) < len(data.POSITIONS)]
    assert {_changed(s, encoders.layout_variant(s, rng, 0.0)) for s in movable} == {"position"}
    kinds = [_changed(s, encoders.layout_variant(s, rng, 0.8)) == "kind" for s in movable]
    assert 0.7 < np.mean(kinds) < 0.9


def test_layout_probe_reads_what_the_embedding_holds():
    """A 'vision tower' whose embedding is the mean colour knows colour, not place or kind."""
    examples = [e for e in data.generate(400, seed=4, size=64) if len(e.scene.shapes) == 1]
    images = np.stack([np.asarray(e.image) for e in examples])
    scenes = [e.scene for e in examples]

    class MeanColour(torch.nn.Module):
        def forward(self, pixel_values):
            x = pixel_values.flatten(2)
            feats = torch.cat([x.mean(-1), x.amax(-1), x.amin(-1)], dim=1)
            return type("Out", (), {"image_embeds": feats})()

    probe = encoders.layout_probe(MeanColour(), DEMO, images, scenes)
    assert probe.keys() == {"kind", "color", "size", "position", "background"}
    assert probe["position"] < 0.5  # pooled colour statistics carry no place
    assert probe["background"] > 0.8  # but the colour most pixels have
    with pytest.raises(ValueError, match="20 one-shape"):
        encoders.layout_probe(MeanColour(), DEMO, images[:5], scenes[:5])


def test_scene_kind_probe_needs_an_embedding_that_knows_where_each_shape_is():
    """Mean colour (no place) reads no scene's kinds; a 16×16 thumbnail (places and coarse
    outlines) reads some, one-shape scenes best."""
    examples = list(data.generate(700, seed=4, size=64))
    images = np.stack([np.asarray(e.image) for e in examples])
    scenes = [e.scene for e in examples]

    class Tower(torch.nn.Module):
        def __init__(self, thumbnail: bool) -> None:
            super().__init__()
            self.thumbnail = thumbnail

        def forward(self, pixel_values):
            if self.thumbnail:
                feats = torch.nn.functional.adaptive_avg_pool2d(pixel_values, 16).flatten(1)
            else:
                feats = pixel_values.flatten(2).mean(-1)
            return type("Out", (), {"image_embeds": feats})()

    split = (images[:600], scenes[:600]), (images[600:], scenes[600:])
    blind = encoders.scene_kind_probe(Tower(False), DEMO, *split, steps=300)
    seeing = encoders.scene_kind_probe(Tower(True), DEMO, *split, steps=300)
    assert blind.keys() == seeing.keys() == {"1", "2", "3"}
    assert max(blind.values()) < 0.05 and seeing["1"] > 0.15
    assert seeing["1"] > seeing["2"] >= seeing["3"]


def test_cell_layout_names_the_kind_and_colour_in_each_cell_or_empty():
    scene = data.Scene(
        (
            data.ShapeSpec("star", "red", "small", "left"),
            data.ShapeSpec("heart", "blue", "large", "center"),
        ),
        "white",
    )
    no_kind, no_colour, colours = len(data.KINDS), len(data.COLORS), list(data.COLORS)
    kinds = {"left": data.KINDS.index("star"), "center": data.KINDS.index("heart")}
    colour_at = {"left": colours.index("red"), "center": colours.index("blue")}
    assert encoders.cell_layout(scene) == (
        [kinds.get(p, no_kind) for p in data.POSITIONS],
        [colour_at.get(p, no_colour) for p in data.POSITIONS],
    )


def test_layout_variant_swap_share_swaps_two_colours_and_keeps_everything_else():
    scenes = [e.scene for e in data.generate(200, seed=5, size=64)]
    rng = np.random.default_rng(0)
    swappable = [s for s in scenes if len({shape.color for shape in s.shapes}) > 1]
    assert swappable
    for scene in swappable:
        variant = encoders.layout_variant(scene, rng, swap_share=1.0)
        changed = [(a, b) for a, b in zip(scene.shapes, variant.shapes, strict=True) if a != b]
        assert len(changed) == 2 and variant.background == scene.background
        (a1, b1), (a2, b2) = changed
        assert (b1.color, b2.color) == (a2.color, a1.color)  # traded colours
        assert [(b.kind, b.size, b.position) for _, b in changed] == [
            (a.kind, a.size, a.position) for a, _ in changed
        ]
    one_colour = [s for s in scenes if len({shape.color for shape in s.shapes}) == 1]
    for scene in one_colour:  # nothing to swap: a kind or place change as before
        assert _changed(scene, encoders.layout_variant(scene, rng, swap_share=1.0))


def test_vision_warm_start_learns_the_layout_and_clip_training_begins_from_it(tokenizers):
    examples = list(data.generate(64, seed=5, size=64))
    images = np.stack([np.asarray(e.image) for e in examples])
    scenes = [e.scene for e in examples]
    vision, losses = encoders.pretrain_vision(
        images, scenes, DEMO, StagePlan(30, 32, 1e-3), seed=0, log=lambda _: None
    )
    assert np.mean(losses[-5:]) < 0.6 * losses[0]
    pair, _ = encoders.train_clip(
        images, scenes, tokenizers[0], DEMO, StagePlan(0, 8, 1e-3), 0, vision=vision
    )
    for a, b in zip(pair.vision.state_dict().values(), vision.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_swapped_trades_one_field_between_the_first_two_shapes():
    scene = data.Scene(
        (
            data.ShapeSpec("star", "red", "small", "left"),
            data.ShapeSpec("heart", "blue", "large", "right"),
        ),
        "white",
    )
    twin = encoders.swapped(scene, "color")
    assert [(s.kind, s.color) for s in twin.shapes] == [("star", "blue"), ("heart", "red")]
    assert encoders.swapped(twin, "color") == scene


def test_binding_cosines_see_a_colour_bag_embedding_as_unbound(tokenizers):
    """Towers that see only which colours are present cannot tell a scene from its twin."""
    scenes = [e.scene for e in data.generate(80, seed=7, size=64)]
    torch.manual_seed(0)
    pair = encoders.ClipPair(DEMO).eval()
    cos = encoders.binding_cosines(pair, tokenizers[0], DEMO, scenes, 64)
    assert set(cos) == {"color", "kind", "position", "other"}
    assert all(-1 <= v <= 1 for field in cos.values() for v in field.values())

    class ColourBag(torch.nn.Module):
        def forward(self, pixel_values):
            x = pixel_values.flatten(2)
            feats = torch.cat([x.mean(-1), x.amax(-1), x.amin(-1)], dim=1)
            return type("Out", (), {"image_embeds": feats})()

    pair.vision = ColourBag()
    cos = encoders.binding_cosines(pair, tokenizers[0], DEMO, scenes, 64)
    assert cos["color"]["image"] > 0.999 and cos["position"]["image"] > 0.999


def test_layout_heads_read_kind_and_colour_per_cell_from_an_embedding():
    scenes = [e.scene for e in data.generate(24, seed=6, size=64)]
    torch.manual_seed(0)
    heads = encoders.LayoutHeads(16)
    codes = torch.nn.functional.normalize(torch.randn(len(scenes), 16), dim=-1)
    layouts = [encoders.cell_layout(s) for s in scenes]
    kinds = torch.tensor([k for k, _ in layouts]).flatten()
    colours = torch.tensor([c for _, c in layouts]).flatten()
    n = len(scenes) * len(data.POSITIONS)
    expected = torch.nn.functional.cross_entropy(
        heads.kind(codes * 10).view(n, -1), kinds
    ) + torch.nn.functional.cross_entropy(heads.color(codes * 10).view(n, -1), colours)
    torch.testing.assert_close(heads.loss(codes, scenes), expected)
    kind_only = torch.nn.functional.cross_entropy(heads.kind(codes * 10).view(n, -1), kinds)
    torch.testing.assert_close(heads.loss(codes, scenes, color_weight=0.0), kind_only)
    opt = torch.optim.Adam(heads.parameters(), lr=0.05)  # distinct codes: labels learnable
    for _ in range(150):
        opt.zero_grad()
        loss = heads.loss(codes, scenes)
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * expected.item()


def test_layout_heads_with_background_add_the_scene_background_cross_entropy():
    scenes = [e.scene for e in data.generate(24, seed=6, size=64)]
    torch.manual_seed(0)
    heads = encoders.LayoutHeads(16, background=True)
    codes = torch.nn.functional.normalize(torch.randn(len(scenes), 16), dim=-1)
    target = torch.tensor([list(data.BACKGROUNDS).index(s.background) for s in scenes])
    background = torch.nn.functional.cross_entropy(heads.background(codes * 10), target)
    without = encoders.LayoutHeads(16)
    without.load_state_dict(heads.state_dict(), strict=False)
    torch.testing.assert_close(heads.loss(codes, scenes), without.loss(codes, scenes) + background)


def test_clip_layout_weight_adds_the_layout_loss_on_both_towers(corpus, tokenizers):
    images, scenes = corpus
    torch.set_num_threads(1)
    args = (images, scenes, tokenizers[0], DEMO, StagePlan(2, 16, 1e-3), 0, lambda _: None)
    _, plain = encoders.train_clip(*args)
    _, with_layout = encoders.train_clip(*args, layout_weight=1.0)
    # same seed, same first batch: the first loss differs by the two heads' cross-entropies,
    # each about ln(7) + ln(8) per cell at initialisation, and the image head's background
    # cross-entropy, about ln(number of backgrounds)
    expected = 2 * (np.log(7) + np.log(8)) + np.log(len(data.BACKGROUNDS))
    extra = with_layout[0] - plain[0]
    assert expected * 0.7 < extra < expected * 1.3


def test_grid_labels_use_dejavu_sans_for_cyrillic_else_pils_default(monkeypatch):
    from PIL import ImageFont

    from kandinsky.demo import train

    asked = []

    def dejavu_only(name, size):
        asked.append((name, size))
        if name != "DejaVuSans.ttf":
            raise OSError(name)
        return "dejavu"

    monkeypatch.setattr(ImageFont, "truetype", dejavu_only)
    monkeypatch.setattr(ImageFont, "load_default", lambda: "pil default")
    assert train.label_font() == "dejavu"  # has Cyrillic, unlike PIL's bundled font
    assert asked == [("DejaVuSans.ttf", 11)]

    def missing(name, size):
        raise OSError(name)

    monkeypatch.setattr(ImageFont, "truetype", missing)
    assert train.label_font() == "pil default"
