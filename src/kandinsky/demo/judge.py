"""An independent judge for the demo model: a small attribute classifier and its metrics.

The judge is its own small CNN (nothing shared with the generator) trained on rendered
scenes from `kandinsky.demo.data`. For each of the 5 positions it predicts the shape kind
(or "none"), colour and size there, and it predicts the background. It scores
text-to-image prompt adherence (`score`, `adherence`) and gives penultimate-layer
features for a domain Fréchet distance between generated and held-out real images.

Usage::

    from kandinsky.demo import data, judge
    j = judge.train_judge(steps=2000, seed=0)           # ~100 s on one CPU thread
    j.save("demo_judge"); j = judge.Judge.load("demo_judge")
    prompts = data.eval_prompts(100, seed=0, num_shapes=1)
    images = [my_model(text) for text, _ in prompts]     # your generator
    rates = judge.adherence([s for _, s in prompts], j.predict(images))
    real = [e.image for e in data.generate(500, seed=0, split="heldout")]
    fd = judge.frechet_distance(j.features(images), j.features(real))

On a busy shared CPU, `torch.set_num_threads(1)` trains several times faster than the
default. The default run (2000 steps × 64, pool of 12000 renders at 64×64) reaches
≥ 99% on every head on held-out 1–3-shape scenes. Images of any size are resized to the
judge's (64), so one judge scores 64×64 and 128×128 generators alike. Fréchet distance
has a finite-sample floor: two disjoint held-out sets of 500 real images give ~530–590,
so compare models at the same N.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from kandinsky.demo import data
from kandinsky.errors import InvalidInput, MissingWeights

NONE = "none"
WEIGHTS_NAME = "judge.safetensors"
CONFIG_NAME = "judge.json"


@dataclass(frozen=True)
class JudgeConfig:
    """Network size and the class lists its heads were trained on (saved with the weights)."""

    size: int = 64
    width: int = 16
    cell_dim: int = 24
    background_dim: int = 16
    kinds: tuple[str, ...] = data.KINDS
    colors: tuple[str, ...] = tuple(data.COLORS)
    sizes: tuple[str, ...] = tuple(data.SIZES)
    positions: tuple[str, ...] = tuple(data.POSITIONS)
    backgrounds: tuple[str, ...] = tuple(data.BACKGROUNDS)

    @property
    def feature_dim(self) -> int:
        return len(self.positions) * self.cell_dim + self.background_dim

    @property
    def per_position(self) -> int:
        return len(self.kinds) + 1 + len(self.colors) + len(self.sizes)

    @property
    def num_logits(self) -> int:
        return len(self.positions) * self.per_position + len(self.backgrounds)


CELL_WINDOW = 0.08  # each cell reads features on a 3×3 grid ±this fraction around its centre


class JudgeNet(nn.Module):
    """Conv trunk to an 8×8 map; each position cell's features (sampled at the cell, one
    head shared by all cells, so a shape is learned once for every place) give kind/colour/
    size; a global pool plus a 4×4 thumbnail gives the background."""

    def __init__(self, config: JudgeConfig) -> None:
        super().__init__()
        w = config.width

        def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        layers: list[nn.Module] = block(3, w, 2)
        channels, side = w, config.size // 2
        while side > 8:
            out = min(2 * channels, 4 * w)
            layers += [*block(channels, out, 2), *block(out, out, 1)]
            channels, side = out, side // 2
        self.trunk = nn.Sequential(*layers)
        offsets = torch.tensor([-CELL_WINDOW, 0.0, CELL_WINDOW])
        dy, dx = torch.meshgrid(offsets, offsets, indexing="ij")
        centres = torch.tensor([data.POSITIONS[p] for p in config.positions])
        points = centres[:, None, :] + torch.stack([dx.flatten(), dy.flatten()], -1)[None]
        self.register_buffer("grid", (2.0 * points - 1.0)[None], persistent=False)  # (1, P, 9, 2)
        self.cell = nn.Sequential(
            nn.Linear(9 * channels, 2 * config.cell_dim), nn.ReLU(),
            nn.Linear(2 * config.cell_dim, config.cell_dim), nn.ReLU(),
        )  # fmt: skip
        self.background = nn.Sequential(
            nn.Linear(channels + 48, 2 * config.background_dim), nn.ReLU(),
            nn.Linear(2 * config.background_dim, config.background_dim), nn.ReLU(),
        )  # fmt: skip
        self.cell_head = nn.Linear(config.cell_dim, config.per_position)
        self.background_head = nn.Linear(config.background_dim, len(config.backgrounds))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (N, 3, size, size) in [-1, 1] → (features (N, F), logits (N, num_logits))."""
        n = images.shape[0]
        fmap = self.trunk(images)
        grid = self.grid.expand(n, -1, -1, -1)
        sampled = F.grid_sample(fmap, grid, align_corners=False)  # (N, C, P, 9)
        cells = sampled.permute(0, 2, 1, 3).flatten(2)  # (N, P, C·9): keeps the layout in a cell
        cell_features = self.cell(cells)  # (N, P, cell_dim)
        thumbnail = F.adaptive_avg_pool2d(images, 4).flatten(1)
        pooled = torch.cat([fmap.mean((2, 3)), thumbnail], 1)
        background_features = self.background(pooled)
        features = torch.cat([cell_features.flatten(1), background_features], 1)
        logits = torch.cat(
            [self.cell_head(cell_features).flatten(1), self.background_head(background_features)], 1
        )
        return features, logits


@dataclass
class HeadLogits:
    """Logits split by head: kind/colour/size are (N, positions, classes)."""

    kind: torch.Tensor
    color: torch.Tensor
    size: torch.Tensor
    background: torch.Tensor


def split_logits(logits: torch.Tensor, config: JudgeConfig) -> HeadLogits:
    n, p = logits.shape[0], len(config.positions)
    per_position = logits[:, : p * config.per_position].reshape(n, p, config.per_position)
    k, c = len(config.kinds) + 1, len(config.colors)
    return HeadLogits(
        kind=per_position[..., :k],
        color=per_position[..., k : k + c],
        size=per_position[..., k + c :],
        background=logits[:, p * config.per_position :],
    )


@dataclass
class Targets:
    """Class indices per head; kind 0 means "none" (then colour and size are ignored)."""

    kind: torch.Tensor  # (N, P) long
    color: torch.Tensor  # (N, P) long
    size: torch.Tensor  # (N, P) long
    background: torch.Tensor  # (N,) long


def scene_targets(scenes: Sequence[data.Scene], config: JudgeConfig) -> Targets:
    p = len(config.positions)
    kind = torch.zeros(len(scenes), p, dtype=torch.long)
    color = torch.zeros(len(scenes), p, dtype=torch.long)
    size = torch.zeros(len(scenes), p, dtype=torch.long)
    for i, scene in enumerate(scenes):
        for shape in scene.shapes:
            j = config.positions.index(shape.position)
            kind[i, j] = config.kinds.index(shape.kind) + 1
            color[i, j] = config.colors.index(shape.color)
            size[i, j] = config.sizes.index(shape.size)
    background = torch.tensor([config.backgrounds.index(s.background) for s in scenes])
    return Targets(kind, color, size, background)


def judge_loss(logits: torch.Tensor, targets: Targets, config: JudgeConfig) -> torch.Tensor:
    heads = split_logits(logits, config)
    present = targets.kind > 0
    loss = F.cross_entropy(heads.kind.flatten(0, 1), targets.kind.flatten())
    loss = loss + F.cross_entropy(heads.background, targets.background)
    if present.any():  # shapes fill 1-3 of 5 cells: give the kind of present ones its own term
        loss = loss + F.cross_entropy(heads.kind[present], targets.kind[present])
        loss = loss + F.cross_entropy(heads.color[present], targets.color[present])
        loss = loss + F.cross_entropy(heads.size[present], targets.size[present])
    return loss


def images_to_tensor(images: Sequence[Image.Image] | torch.Tensor, size: int) -> torch.Tensor:
    """PIL images, or a float tensor (N, 3, H, W) in [-1, 1], → (N, 3, size, size) in [-1, 1]."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise InvalidInput(f"judge images tensor has shape {tuple(images.shape)}; need N×3×H×W")
        batch = images.float()
        if batch.shape[-2:] != (size, size):
            batch = F.interpolate(batch, (size, size), mode="bilinear", antialias=True)
        return batch
    arrays = []
    for image in images:
        if not isinstance(image, Image.Image):
            raise InvalidInput(f"judge images must be PIL images or a tensor, got {type(image)}")
        image = image.convert("RGB")
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BOX)
        arrays.append(np.asarray(image))
    if not arrays:
        return torch.zeros(0, 3, size, size)
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
    return batch / 127.5 - 1.0


@dataclass
class Judge:
    """A trained attribute classifier; `predict` gives scenes, `features` gives (N, F)."""

    config: JudgeConfig
    net: JudgeNet
    history: dict = field(default_factory=dict)

    @torch.no_grad()
    def logits_and_features(
        self, images: Sequence[Image.Image] | torch.Tensor, batch_size: int = 256
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.net.eval()
        batch = images_to_tensor(images, self.config.size)
        outputs = [self.net(chunk) for chunk in batch.split(batch_size)] if len(batch) else []
        if not outputs:
            return torch.zeros(0, self.config.num_logits), torch.zeros(0, self.config.feature_dim)
        return torch.cat([o[1] for o in outputs]), torch.cat([o[0] for o in outputs])

    def features(self, images: Sequence[Image.Image] | torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features (N, feature_dim) for the Fréchet distance."""
        return self.logits_and_features(images)[1]

    def predict(self, images: Sequence[Image.Image] | torch.Tensor) -> list[data.Scene]:
        """The scene the judge sees in each image (0–5 shapes)."""
        logits = self.logits_and_features(images)[0]
        return decode(logits, self.config)

    def save(self, folder: str | Path) -> Path:
        """Write `judge.safetensors` and `judge.json` (config and training history) to `folder`."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous() for k, v in self.net.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_NAME))
        meta = {"config": asdict(self.config), "history": self.history}
        (folder / CONFIG_NAME).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Judge:
        from safetensors.torch import load_file

        folder = Path(folder)
        for name in (WEIGHTS_NAME, CONFIG_NAME):
            if not (folder / name).is_file():
                raise MissingWeights(f"judge folder {folder} has no {name}; train and save one")
        meta = json.loads((folder / CONFIG_NAME).read_text())
        raw = meta["config"]
        config = JudgeConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
        net = JudgeNet(config)
        net.load_state_dict(load_file(str(folder / WEIGHTS_NAME)))
        net.eval()
        return cls(config, net, meta.get("history", {}))


def decode(logits: torch.Tensor, config: JudgeConfig) -> list[data.Scene]:
    heads = split_logits(logits, config)
    kind, color = heads.kind.argmax(-1), heads.color.argmax(-1)
    size, background = heads.size.argmax(-1), heads.background.argmax(-1)
    scenes = []
    for i in range(logits.shape[0]):
        shapes = tuple(
            data.ShapeSpec(
                kind=config.kinds[int(kind[i, j]) - 1],
                color=config.colors[int(color[i, j])],
                size=config.sizes[int(size[i, j])],
                position=position,
            )
            for j, position in enumerate(config.positions)
            if int(kind[i, j]) > 0
        )
        scenes.append(data.Scene(shapes, config.backgrounds[int(background[i])]))
    return scenes


# ---------------------------------------------------------------------------- training


def _mirror(scene: data.Scene) -> data.Scene:
    """The scene seen in a horizontal mirror (all shapes and backgrounds are left-right symmetric)."""
    swap = {"left": "right", "right": "left"}
    shapes = tuple(
        data.ShapeSpec(s.kind, s.color, s.size, swap.get(s.position, s.position))
        for s in scene.shapes
    )
    return data.Scene(shapes, scene.background)


def render_pool(
    n: int, seed: int, size: int, max_shapes: int = 3
) -> tuple[torch.Tensor, list[data.Scene]]:
    """`n` jittered renders from the judge's own seed stream (disjoint from train and heldout)."""
    scenes, images = [], []
    for index in range(n):
        rng = data.example_rng(seed, "judge", index)
        scene = data.sample_scene(rng, max_shapes=max_shapes)
        images.append(data.render(scene, size=size, rng=rng))
        scenes.append(scene)
    return images_to_tensor(images, size), scenes


def train_judge(
    steps: int = 2000,
    seed: int = 0,
    size: int = 64,
    batch_size: int = 64,
    pool_size: int = 12000,
    max_shapes: int = 3,
    learning_rate: float = 2e-3,
    config: JudgeConfig | None = None,
    log: Callable[[str], None] | None = None,
) -> Judge:
    """Train a judge on a pool of rendered scenes, mirrored at random (left/right labels swapped)."""
    if steps < 1 or batch_size < 1 or pool_size < 1:
        raise InvalidInput(f"steps, batch_size and pool_size must be positive: {steps}, {batch_size}, {pool_size}")  # fmt: skip
    config = config or JudgeConfig(size=size)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    images, scenes = render_pool(pool_size, seed, config.size, max_shapes)
    targets = scene_targets(scenes, config)
    mirrored = scene_targets([_mirror(s) for s in scenes], config)
    render_seconds = time.perf_counter() - start
    net = JudgeNet(config)
    optimizer = torch.optim.AdamW(net.parameters(), lr=learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=learning_rate, total_steps=steps, pct_start=0.1
    )
    net.train()
    for step in range(steps):
        index = torch.randint(0, pool_size, (batch_size,), generator=generator)
        flip = torch.rand(batch_size, generator=generator) < 0.5
        batch = images[index]
        batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
        chosen = Targets(
            *(
                torch.where(flip.view(-1, *[1] * (a.ndim - 1)), b[index], a[index])
                for a, b in (
                    (targets.kind, mirrored.kind),
                    (targets.color, mirrored.color),
                    (targets.size, mirrored.size),
                    (targets.background, mirrored.background),
                )
            )
        )
        loss = judge_loss(net(batch)[1], chosen, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if log is not None and (step % 200 == 0 or step == steps - 1):
            log(f"step {step}: loss {loss.item():.4f}")
    net.eval()
    history = {
        "steps": steps,
        "seed": seed,
        "batch_size": batch_size,
        "pool_size": pool_size,
        "render_seconds": round(render_seconds, 1),
        "train_seconds": round(time.perf_counter() - start - render_seconds, 1),
    }
    return Judge(config, net, history)


# ---------------------------------------------------------------------------- metrics


def score(expected: data.Scene, predicted: data.Scene) -> dict[str, bool]:
    """Which attributes of `expected` the prediction got right.

    shape: same multiset of kinds; color: same multiset of colours; position: same set of
    occupied positions; background: same background; size: same (position, size) pairs;
    all: every object right (kind and colour at its position), no extra ones, and the
    background right. For a 2-object prompt "all" needs both objects right.
    """
    e, p = expected.shapes, predicted.shapes
    return {
        "shape": sorted(s.kind for s in e) == sorted(s.kind for s in p),
        "color": sorted(s.color for s in e) == sorted(s.color for s in p),
        "position": {s.position for s in e} == {s.position for s in p},
        "background": expected.background == predicted.background,
        "size": {(s.position, s.size) for s in e} == {(s.position, s.size) for s in p},
        "all": {(s.position, s.kind, s.color) for s in e}
        == {(s.position, s.kind, s.color) for s in p}  # fmt: skip
        and expected.background == predicted.background,
    }


def adherence(expected: Sequence[data.Scene], predicted: Sequence[data.Scene]) -> dict[str, float]:
    """Fraction of prompts with each attribute right (the mean of `score` over pairs)."""
    if len(expected) != len(predicted) or not expected:
        raise InvalidInput(f"need equally many expected and predicted scenes, got {len(expected)} and {len(predicted)}")  # fmt: skip
    scores = [score(e, p) for e, p in zip(expected, predicted, strict=True)]
    return {key: sum(s[key] for s in scores) / len(scores) for key in scores[0]}


def head_accuracy(judge: Judge, examples: Sequence[data.Example]) -> dict[str, float]:
    """Per-head accuracy on examples: kind (incl. "none", over all 5 positions), colour and
    size (over positions that hold a shape), background, and whole-scene exact match."""
    logits = judge.logits_and_features([e.image for e in examples])[0]
    heads = split_logits(logits, judge.config)
    targets = scene_targets([e.scene for e in examples], judge.config)
    present = targets.kind > 0
    kind_ok = heads.kind.argmax(-1) == targets.kind
    color_ok = heads.color.argmax(-1) == targets.color
    size_ok = heads.size.argmax(-1) == targets.size
    background_ok = heads.background.argmax(-1) == targets.background
    scene_ok = (kind_ok & (~present | color_ok)).all(-1) & background_ok
    return {
        "kind": kind_ok.float().mean().item(),
        "color": color_ok[present].float().mean().item(),
        "size": size_ok[present].float().mean().item(),
        "background": background_ok.float().mean().item(),
        "scene": scene_ok.float().mean().item(),
    }


def _sqrtm_trace(sigma_a: np.ndarray, sigma_b: np.ndarray) -> float:
    """tr(sqrt(A B)) for symmetric PSD A, B: the eigenvalues of sqrt(A) B sqrt(A) are those of A B."""
    values, vectors = np.linalg.eigh(sigma_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T
    middle = root_a @ sigma_b @ root_a
    middle = 0.5 * (middle + middle.T)
    return float(np.sqrt(np.clip(np.linalg.eigvalsh(middle), 0.0, None)).sum())


def frechet_distance(
    features_a: torch.Tensor | np.ndarray, features_b: torch.Tensor | np.ndarray
) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, F), in float64.

    |mu_a - mu_b|² + tr(S_a) + tr(S_b) - 2 tr(sqrt(S_a S_b)); the matrix square root uses an
    eigen-decomposition (exact for PSD covariances, no scipy needed).
    """
    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise InvalidInput(f"need two (N≥2, F) feature arrays of equal F, got {a.shape} and {b.shape}")  # fmt: skip
    mu_a, mu_b = a.mean(0), b.mean(0)
    sigma_a, sigma_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    value = (
        float(np.sum((mu_a - mu_b) ** 2))
        + float(np.trace(sigma_a) + np.trace(sigma_b))
        - 2.0 * _sqrtm_trace(sigma_a, sigma_b)
    )
    return max(value, 0.0) if math.isfinite(value) else value
