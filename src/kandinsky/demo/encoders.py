"""Stand-ins for the frozen encoders, trained by us with the originals' recipes.

- `train_clip_tokenizer`: byte-level BPE (CLIP's pre-tokenisation, "</w>" word ends) trained
  with `tokenizers` on the captions; loads as `CLIPTokenizerFast`, pads with "!" (id 0) like
  Kandinsky's, and <|endoftext|> has the largest id so the text tower pools at argmax(ids).
- `train_mclip_tokenizer`: Unigram (SentencePiece-style, Metaspace) with XLM-R's special
  tokens <s>=0 <pad>=1 </s>=2 <unk>=3 (+ <mask>), loads as `XLMRobertaTokenizerFast`.
- `train_clip`: the tiny CLIP (transformers' CLIP text + vision towers with projections),
  symmetric InfoNCE with a learnable temperature, on images with EN and RU captions
  (a fresh caption of the image's scene every time it is drawn).
- `distill_mclip`: the tiny M-CLIP (`MultilingualCLIP`) learns, by MSE, to map both the EN
  and the RU caption of a scene to the frozen CLIP text embedding of the EN caption — the
  teacher learning M-CLIP itself was made with.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kandinsky.config import ModelConfig
from kandinsky.demo import data
from kandinsky.demo.config import StagePlan
from kandinsky.testing import as_xlmr_tokenizer, byte_symbols

Log = Callable[[str], None]
CLIP_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


# ---------------------------------------------------------------------------- tokenizers


def train_clip_tokenizer(captions: Sequence[str], folder: str | Path, vocab_size: int):
    """Train a CLIP-style byte-level BPE on `captions`, save it in `folder`, return it (fast)."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base = byte_symbols()
    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    n_merges = vocab_size - 2 * len(base) - 2
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,  # upper bound; we cut the merges below
        initial_alphabet=base,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    tok.train_from_iterator(list(captions), trainer)
    merges = json.loads(tok.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges][: max(0, n_merges)]
    tokens = base + [c + "</w>" for c in base]
    seen = set(tokens)
    for merge in merges:
        a, b = merge.split(" ")
        if a + b not in seen:
            seen.add(a + b)
            tokens.append(a + b)
    tokens += ["<|startoftext|>", "<|endoftext|>"]  # endoftext last: the largest id
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) > vocab_size:
        raise ValueError(f"CLIP vocabulary of {len(vocab)} exceeds {vocab_size}")
    raw = folder / "_bpe"
    raw.mkdir(exist_ok=True)
    (raw / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (raw / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tokenizer = CLIPTokenizerFast(
        vocab=str(raw / "vocab.json"),
        merges=str(raw / "merges.txt"),
        pad_token="!",
        model_max_length=77,
    )
    tokenizer.save_pretrained(str(folder))
    for f in raw.iterdir():
        f.unlink()
    raw.rmdir()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def train_mclip_tokenizer(captions: Sequence[str], folder: str | Path, vocab_size: int):
    """An XLM-R style tokenizer: a SentencePiece Unigram model trained on `captions` (ids <
    `vocab_size`; SentencePiece may keep fewer pieces on a small corpus), wrapped as
    `XLMRobertaTokenizerFast` like `kandinsky.testing.xlmr_tokenizer`, saved in `folder`
    and returned as loaded from there. Cased, like XLM-R: the corpus gets capitalised
    variants so sentence-initial capitals have pieces."""
    import io

    import sentencepiece as spm
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([*captions, *(capitalize(c) for c in captions)]),
        model_writer=proto,
        vocab_size=vocab_size - 1,  # + <mask>
        model_type="unigram",
        character_coverage=1.0,
        hard_vocab_limit=False,
        bos_id=0,
        pad_id=1,
        eos_id=2,
        unk_id=3,
        normalization_rule_name="identity",
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_proto=proto.getvalue())
    pieces = [(sp.id_to_piece(i), float(sp.get_score(i))) for i in range(sp.get_piece_size())]
    tok = Tokenizer(models.Unigram(pieces, unk_id=3))
    # what XLMRobertaTokenizerFast rebuilds on load: no normalizer, whitespace + Metaspace
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace()]
    )
    tok.decoder = decoders.Metaspace()
    tok.add_special_tokens(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    as_xlmr_tokenizer(tok).save_pretrained(str(folder))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def caption_corpus(scenes: Sequence[data.Scene], seed: int, per_scene: int = 2) -> list[str]:
    """EN and RU captions of `scenes` (`per_scene` of each language), for tokenizer training."""
    rng = np.random.default_rng(seed)
    out = []
    for scene in scenes:
        for _ in range(per_scene):
            out.append(data.caption(scene, "en", rng))
            out.append(data.caption(scene, "ru", rng))
    return out


# ---------------------------------------------------------------------------- CLIP


class ClipPair(nn.Module):
    """The two towers and CLIP's learnable temperature (log of 1/τ, init 1/0.07)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        from kandinsky.models.clip import build_text_tower, build_vision_tower

        self.text = build_text_tower(config.clip)
        self.vision = build_vision_tower(config.clip)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def embed(
        self, input_ids: torch.Tensor, pixels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(text, image) embeddings, L2-normalised."""
        text = F.normalize(self.text(input_ids=input_ids).text_embeds, dim=-1)
        image = F.normalize(self.vision(pixel_values=pixels).image_embeds, dim=-1)
        return text, image

    def logits(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.logit_scale.clamp(max=math.log(100)).exp() * image @ text.t()

    def forward(self, input_ids: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        return self.logits(*self.embed(input_ids, pixels))


def contrastive_loss(logits: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over an (images × texts) similarity matrix with matches on the diagonal."""
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def clip_input(images: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """uint8 (B, H, W, 3) or float [-1, 1] (B, 3, H, W) → the vision tower's normalised input."""
    from kandinsky.training.losses import clip_pixels

    if images.dtype == torch.uint8:
        images = images.permute(0, 3, 1, 2).float() / 127.5 - 1
    clip = config.clip
    return clip_pixels(images, clip.vision.image_size, clip.image_mean, clip.image_std)


def _tokens(tokenizer, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    return tokenizer(
        list(texts), padding="longest", max_length=max_length, truncation=True, return_tensors="pt"
    )


def _adamw(params, lr: float, steps: int) -> tuple[torch.optim.Optimizer, object]:
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warm = max(1, min(100, steps // 10))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, steps - warm))))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _update(loss: torch.Tensor, model: nn.Module, opt, sched, losses: list[float]) -> None:
    """One clipped optimizer step; the loss is recorded."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    losses.append(loss.item())


def _report(
    log, name: str, what: str, step: int, steps: int, losses: list[float], start: float
) -> None:
    """Every 50 steps and at the end: mean loss of the last 50 and the rate."""
    if (step + 1) % 50 == 0 or step + 1 == steps:
        rate = (step + 1) / (time.perf_counter() - start)
        log(f"{name} step {step + 1}/{steps} {what} {np.mean(losses[-50:]):.5f} ({rate:.2f} it/s)")


def layout_variant(
    scene: data.Scene,
    rng: np.random.Generator,
    kind_share: float = 0.5,
    swap_share: float = 0.0,
) -> data.Scene:
    """`scene` with one shape's kind or position changed, or two shapes' colours swapped.

    A hard negative: in a batch of random scenes colours and backgrounds alone tell every
    pair apart, and the towers never learn shape or place (the first demo run's CLIP probed
    at chance for both); a scene and its variant differ only there. `swap_share`: how often
    two differently coloured shapes trade colours (when the scene has them): the same bag of
    colours, kinds and places, bound differently — without it the image embeddings of a
    scene and its colour swap stay nearly equal (cosine 0.94 in run 4) and two-object
    pictures come out in one colour or with the colours swapped. Otherwise `kind_share`: how
    often the kind changes rather than the place (always the kind when no cell is free).
    Kind is the slow one for the vision tower, so the full plan biases toward it.
    """
    shapes = list(scene.shapes)
    pairs = [
        (i, j)
        for i in range(len(shapes))
        for j in range(i + 1, len(shapes))
        if shapes[i].color != shapes[j].color
    ]
    if pairs and rng.random() < swap_share:
        return swapped(scene, "color", *pairs[int(rng.integers(len(pairs)))])
    i = int(rng.integers(len(shapes)))
    free = [p for p in data.POSITIONS if p not in {s.position for s in shapes}]
    if free and rng.random() > kind_share:
        shapes[i] = replace(shapes[i], position=free[int(rng.integers(len(free)))])
    else:
        kinds = [k for k in data.KINDS if k != shapes[i].kind]
        shapes[i] = replace(shapes[i], kind=kinds[int(rng.integers(len(kinds)))])
    return data.Scene(tuple(shapes), scene.background)


def swapped(scene: data.Scene, field: str, i: int = 0, j: int = 1) -> data.Scene:
    """`scene` with shapes `i` and `j` trading their `field` (color, kind or position)."""
    shapes = list(scene.shapes)
    a, b = shapes[i], shapes[j]
    shapes[i], shapes[j] = (
        replace(a, **{field: getattr(b, field)}),
        replace(b, **{field: getattr(a, field)}),
    )
    return data.Scene(tuple(shapes), scene.background)


def cell_layout(scene: data.Scene) -> tuple[list[int], list[int]]:
    """Per position cell (in `data.POSITIONS` order): the index of the kind there and of its
    colour, or len(KINDS) / len(COLORS) for an empty cell."""
    kinds = {shape.position: data.KINDS.index(shape.kind) for shape in scene.shapes}
    colors = {shape.position: list(data.COLORS).index(shape.color) for shape in scene.shapes}
    return (
        [kinds.get(position, len(data.KINDS)) for position in data.POSITIONS],
        [colors.get(position, len(data.COLORS)) for position in data.POSITIONS],
    )


class LayoutHeads(nn.Module):
    """Linear read-outs of a normalised embedding: per position cell, which kind and which
    colour stands there (or "empty"), and with `background` the scene's background, trained
    with cross-entropy on the generator's labels."""

    def __init__(self, width: int, background: bool = False) -> None:
        super().__init__()
        self.cells = len(data.POSITIONS)
        self.kind = nn.Linear(width, self.cells * (len(data.KINDS) + 1))
        self.color = nn.Linear(width, self.cells * (len(data.COLORS) + 1))
        self.background = nn.Linear(width, len(data.BACKGROUNDS)) if background else None

    def loss(
        self, embeds: torch.Tensor, scenes: Sequence[data.Scene], color_weight: float = 1.0
    ) -> torch.Tensor:
        """`embeds` (N, width), L2-normalised (scaled by 10 inside, a fixed temperature)."""
        layouts = [cell_layout(scene) for scene in scenes]
        kinds = torch.tensor([k for k, _ in layouts], device=embeds.device).flatten()
        x, n = embeds * 10, embeds.shape[0] * self.cells
        loss = F.cross_entropy(self.kind(x).view(n, -1), kinds)
        if color_weight:
            colors = torch.tensor([c for _, c in layouts], device=embeds.device).flatten()
            loss = loss + color_weight * F.cross_entropy(self.color(x).view(n, -1), colors)
        if self.background is not None:
            names = list(data.BACKGROUNDS)
            target = torch.tensor([names.index(s.background) for s in scenes], device=x.device)
            loss = loss + F.cross_entropy(self.background(x), target)
        return loss


def pretrain_vision(
    images: torch.Tensor,
    scenes: Sequence[data.Scene],
    config: ModelConfig,
    plan: StagePlan,
    seed: int,
    log: Log = print,
    color_weight: float = 0.0,
) -> tuple[nn.Module, list[float]]:
    """Warm-start the vision tower: which kind stands in each cell, read from its embedding.

    A ViT with 8-pixel patches learns the kind of a 9–17 px shape from the contrastive
    loss alone far too slowly (the demo runs' CLIP probed at chance for kind after 1500
    steps, with and without hard negatives: the image and text towers wait on each other),
    while a supervised head learns it in a few hundred steps. So, as image towers are often
    initialised from a classifier before contrastive training, the tower first learns the
    scene's layout from the labels our generator gives for free: per cell, a kind or
    "empty" (`LayoutHeads`; `color_weight` > 0 adds the colour per cell — the demo plan
    leaves it to `train_clip`'s layout loss: in the warm start it slowed kind, probe 0.94 →
    0.38). The heads are linear maps of the normalised embedding (so the knowledge lands in
    the space the prior predicts) and are dropped afterwards. `images` uint8 (N, H, W, 3).
    """
    from kandinsky.models.clip import build_vision_tower

    torch.manual_seed(seed)
    vision = build_vision_tower(config.clip).train()
    heads = LayoutHeads(config.clip.vision.projection_dim)
    both = nn.ModuleList([vision, heads])
    opt, sched = _adamw(both.parameters(), plan.lr, plan.steps)
    rng = np.random.default_rng(seed)
    batch_size = min(plan.batch_size, len(scenes))
    losses, start = [], time.perf_counter()
    for step in range(plan.steps):
        idx = rng.choice(len(scenes), size=batch_size, replace=False)
        pixels = clip_input(torch.from_numpy(np.asarray(images)[idx]), config)
        embeds = F.normalize(vision(pixel_values=pixels).image_embeds, dim=-1)
        loss = heads.loss(embeds, [scenes[i] for i in idx], color_weight)
        _update(loss, both, opt, sched, losses)
        _report(log, "vision warm-start", "loss", step, plan.steps, losses, start)
    return vision.eval(), losses


def train_clip(
    images: torch.Tensor,
    scenes: Sequence[data.Scene],
    tokenizer,
    config: ModelConfig,
    plan: StagePlan,
    seed: int,
    log: Log = print,
    hard_negatives: float = 0.0,
    kind_share: float = 0.5,
    swap_share: float = 0.0,
    layout_weight: float = 0.0,
    vision: nn.Module | None = None,
) -> tuple[ClipPair, list[float]]:
    """Contrastive training of the tiny CLIP; `images` uint8 (N, H, W, 3). Returns (model, losses).

    `hard_negatives`: the fraction of each batch that is a `layout_variant` of another
    scene in it (rendered on the fly), so the loss needs kind, position and which colour
    goes where; `swap_share` of the variants swap two colours, of the rest `kind_share`
    change a kind and the others a place. The full demo plan uses 0.5 and 0.8 (batch
    128); on tiny batches and few steps the variants stall the loss at its uniform value, so
    the default is off. `layout_weight`: weight of an auxiliary `LayoutHeads` loss on both
    towers' embeddings (kind and colour per cell; the background too on the image side: at
    weight 3 without it, run 7's image embeddings lost it, probe 0.99 → 0.82, and the decoder
    drew the wrong background for half the prompts), which keeps what the warm start taught and
    puts the same layout, colours bound to places, into the text embedding the prior and the
    M-CLIP student learn from (contrastive batches alone barely ask for it: the text
    embeddings of a caption and of its colour-swapped twin stayed at cosine 0.93).
    `vision`: a warm-started vision tower (`pretrain_vision`) to begin from.
    """
    torch.manual_seed(seed)
    model = ClipPair(config).train()
    if vision is not None:
        model.vision.load_state_dict(vision.state_dict())
    width = config.clip.vision.projection_dim
    # image, text: only the image knows the background for sure (short captions omit it)
    heads = nn.ModuleList([LayoutHeads(width, background=True), LayoutHeads(width)])
    trained = nn.ModuleList([model, heads]) if layout_weight else model
    opt, sched = _adamw(trained.parameters(), plan.lr, plan.steps)
    rng = np.random.default_rng(seed)
    max_len = config.prior.text_ctx
    size = config.clip.vision.image_size
    batch_size = min(plan.batch_size, len(scenes))
    n_hard = min(int(batch_size * hard_negatives), batch_size // 2)
    losses, start = [], time.perf_counter()
    for step in range(plan.steps):
        idx = rng.choice(len(scenes), size=batch_size - n_hard, replace=False)
        batch_scenes = [scenes[i] for i in idx]
        batch = torch.from_numpy(np.asarray(images)[idx])
        if n_hard:
            variants = [
                layout_variant(scenes[i], rng, kind_share, swap_share) for i in idx[:n_hard]
            ]
            drawn = [np.asarray(data.render(v, size=size, rng=rng)) for v in variants]
            batch = torch.cat([batch, torch.from_numpy(np.stack(drawn))])
            batch_scenes += variants
        texts = [data.caption(s, "en" if rng.random() < 0.5 else "ru", rng) for s in batch_scenes]
        ids = _tokens(tokenizer, texts, max_len)["input_ids"]
        text, image = model.embed(ids, clip_input(batch, config))
        loss = contrastive_loss(model.logits(text, image))
        if layout_weight:
            layout = heads[0].loss(image, batch_scenes) + heads[1].loss(text, batch_scenes)
            loss = loss + layout_weight * layout
        _update(loss, trained, opt, sched, losses)
        _report(log, "clip", "loss", step, plan.steps, losses, start)
    return model.eval(), losses


@torch.no_grad()
def binding_cosines(
    clip: ClipPair,
    tokenizer,
    config: ModelConfig,
    scenes: Sequence[data.Scene],
    image_size: int,
) -> dict[str, dict[str, float]]:
    """Does the CLIP space bind attributes to objects? Per field (color, kind, position): the
    mean cosine between the image (and the EN caption) embedding of each two-shape scene
    whose two shapes differ in that field and those of its `swapped` twin — the same bag of
    attributes, bound the other way. Near 1: the embedding cannot tell them apart, and
    neither can a prior or decoder conditioned on it ("other" gives the level of unrelated
    scenes). Captions of a scene and its twin use the same phrasing.
    """
    pairs = [s for s in scenes if len(s.shapes) == 2]

    def embed(batch: list[data.Scene], phrasings: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = np.stack([np.asarray(data.render(s, image_size)) for s in batch])
        texts = [data.caption(s, "en", np.random.default_rng(k)) for s, k in zip(batch, phrasings, strict=True)]  # fmt: skip
        ids = _tokens(tokenizer, texts, config.prior.text_ctx)["input_ids"]
        return clip.embed(ids, clip_input(torch.from_numpy(pixels), config))

    def mean_cos(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> dict[str, float]:
        return {
            name: float((x * y).sum(-1).mean())
            for name, x, y in zip(("text", "image"), a, b, strict=True)
        }

    if not pairs:
        return {}
    text, image = embed(pairs, list(range(len(pairs))))
    out = {}
    for field in ("color", "kind", "position"):
        keep = [k for k, s in enumerate(pairs) if getattr(s.shapes[0], field) != getattr(s.shapes[1], field)]  # fmt: skip
        if keep:
            twins = embed([swapped(pairs[k], field) for k in keep], keep)
            out[field] = mean_cos((text[keep], image[keep]), twins)
    if len(pairs) > 1:
        out["other"] = mean_cos((text, image), (text.roll(1, 0), image.roll(1, 0)))
    return out


def layout_probe(
    vision: nn.Module,
    config: ModelConfig,
    images: np.ndarray,
    scenes: Sequence[data.Scene],
    steps: int = 300,
) -> dict[str, float]:
    """Held-out accuracy of linear probes on the image embeddings of one-shape scenes.

    What the prior's target space knows per attribute (kind, colour, size, position,
    background): the decoder can only draw what is in it. `images` uint8 (N, H, W, 3) with
    their `scenes`; the one-shape ones are used, 80/20 split, softmax regression on
    normalised embeddings.
    """
    keep = [i for i, scene in enumerate(scenes) if len(scene.shapes) == 1]
    if len(keep) < 20:
        raise ValueError("the layout probe needs at least 20 one-shape scenes")
    single = [scenes[i] for i in keep]
    embeds = _image_embeds(vision, config, np.asarray(images)[keep])
    cut = int(0.8 * len(single))
    result = {}
    for attr in ("kind", "color", "size", "position", "background"):
        labels = [getattr(s if attr == "background" else s.shapes[0], attr) for s in single]
        names = sorted(set(labels))
        y = torch.tensor([names.index(label) for label in labels])
        with torch.enable_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            probe = nn.Linear(embeds.shape[1], len(names))
            opt = torch.optim.Adam(probe.parameters(), lr=1e-2)
            for _ in range(steps):
                opt.zero_grad()
                F.cross_entropy(probe(embeds[:cut]), y[:cut]).backward()
                opt.step()
        with torch.no_grad():
            result[attr] = float((probe(embeds[cut:]).argmax(1) == y[cut:]).float().mean())
    return result


@torch.no_grad()
def _image_embeds(vision: nn.Module, config: ModelConfig, images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(images))
    out = [vision(pixel_values=clip_input(chunk, config)).image_embeds for chunk in x.split(256)]
    return F.normalize(torch.cat(out), dim=-1) * 10


def scene_kind_probe(
    vision: nn.Module,
    config: ModelConfig,
    train: tuple[np.ndarray, Sequence[data.Scene]],
    heldout: tuple[np.ndarray, Sequence[data.Scene]],
    steps: int = 1500,
) -> dict[str, float]:
    """Per number of shapes (1, 2, 3): the held-out share of scenes whose every kind an MLP
    probe reads from the image embedding (per cell: a kind or "empty").

    The decoder draws from these embeddings, so this is about the ceiling of its "every
    shape right" (run 6: 0.88 / 0.65 / 0.36 — the two-object gate asks for 0.70). `train`
    and `heldout`: uint8 images (N, H, W, 3) with their scenes.
    """
    (x_train, y_train), (x_test, y_test) = (
        (_image_embeds(vision, config, images), torch.tensor([cell_layout(s)[0] for s in scenes]))
        for images, scenes in (train, heldout)
    )
    cells, classes = len(data.POSITIONS), len(data.KINDS) + 1
    with torch.enable_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        mlp = nn.Sequential(
            nn.Linear(x_train.shape[1], 512), nn.GELU(), nn.Linear(512, cells * classes)
        )
        opt = torch.optim.AdamW(mlp.parameters(), lr=1e-3, weight_decay=1e-4)
        for _ in range(steps):
            idx = torch.randint(0, len(x_train), (256,))
            logits = mlp(x_train[idx]).view(-1, classes)
            loss = F.cross_entropy(logits, y_train[idx].view(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        right = (mlp(x_test).view(len(x_test), cells, classes).argmax(-1) == y_test).all(1)
    counts = np.array([len(scene.shapes) for scene in heldout[1]])
    return {
        str(k): float(right[torch.from_numpy(counts == k)].float().mean())
        for k in (1, 2, 3)
        if (counts == k).any()
    }


@torch.no_grad()
def clip_text_embeds(
    text_tower: nn.Module, tokenizer, texts: Sequence[str], max_length: int
) -> torch.Tensor:
    ids = _tokens(tokenizer, texts, max_length)["input_ids"]
    return text_tower(input_ids=ids).text_embeds


# ---------------------------------------------------------------------------- M-CLIP


def distill_mclip(
    scenes: Sequence[data.Scene],
    teacher: nn.Module,
    teacher_tokenizer,
    tokenizer,
    config: ModelConfig,
    plan: StagePlan,
    seed: int,
    log: Log = print,
) -> tuple[nn.Module, list[float]]:
    """Teacher learning: student(EN) ≈ teacher(EN) and student(RU) ≈ teacher(EN), by MSE."""
    from kandinsky.models.text_encoder import MultilingualCLIP

    torch.manual_seed(seed)
    student = MultilingualCLIP(config.text_encoder).train()
    teacher = teacher.eval().requires_grad_(False)
    opt, sched = _adamw(student.parameters(), plan.lr, plan.steps)
    rng = np.random.default_rng(seed + 1)
    losses, start = [], time.perf_counter()
    max_len = config.text_encoder.max_length
    for step in range(plan.steps):
        idx = rng.choice(len(scenes), size=min(plan.batch_size, len(scenes)), replace=False)
        en, ru = [], []
        for i in idx:
            # one draw of the templates per language; both describe the same scene
            en.append(data.caption(scenes[i], "en", rng))
            ru.append(data.caption(scenes[i], "ru", rng))
        # users capitalise; the teacher (lower-casing BPE) does not care, the student learns to
        student_en = [capitalize(t) if rng.random() < 0.3 else t for t in en]
        student_ru = [capitalize(t) if rng.random() < 0.3 else t for t in ru]
        target = clip_text_embeds(teacher, teacher_tokenizer, en, config.prior.text_ctx)
        tokens = _tokens(tokenizer, student_en + student_ru, max_len)
        pooled = student(tokens["input_ids"], tokens["attention_mask"])[1]
        loss = F.mse_loss(pooled, torch.cat([target, target]))
        _update(loss, student, opt, sched, losses)
        _report(log, "mclip", "mse", step, plan.steps, losses, start)
    return student.eval(), losses


@torch.no_grad()
def mclip_pooled(
    student: nn.Module, tokenizer, texts: Sequence[str], max_length: int = 77
) -> torch.Tensor:
    tokens = _tokens(tokenizer, texts, max_length)
    return student(tokens["input_ids"], tokens["attention_mask"])[1]


def cross_lingual_margin(
    student: nn.Module, tokenizer, scenes: Sequence[data.Scene], seed: int
) -> tuple[float, float]:
    """(mean cosine of EN/RU captions of the same scene, mean cosine across different scenes),
    after removing the embeddings' common mean (a shared direction, large in an untrained
    teacher, puts every raw cosine near 1 and hides how the scenes differ)."""
    rng = np.random.default_rng(seed)
    en = [data.caption(s, "en", rng) for s in scenes]
    ru = [data.caption(s, "ru", rng) for s in scenes]
    a, b = mclip_pooled(student, tokenizer, en), mclip_pooled(student, tokenizer, ru)
    mean = torch.cat([a, b]).mean(0)
    a, b = F.normalize(a - mean, dim=-1), F.normalize(b - mean, dim=-1)
    sim = a @ b.t()
    n = len(scenes)
    same = sim.diag().mean().item()
    other = (sim.sum() - sim.diag().sum()).item() / max(1, n * n - n)
    return same, other
