"""`train_demo`: rebuild the demo model from scratch, stage by stage, resumably.

Stages (each skipped when its `stages/<name>.json` marker exists; the trainer stages resume
from their own checkpoints):

    data      synthetic scenes: train / heldout folders (`kandinsky.demo.data.write_folder`)
    judge     the independent judge (`kandinsky.demo.judge.train_judge`), saved under judge/
    encoders  tokenizers, tiny CLIP (contrastive), tiny M-CLIP (distilled); then `model/`, a
              complete diffusers-layout folder whose MoVQ/prior/UNets are still untrained
    movq      `training` task "movq" (quantize=False); latents rescaled to unit std (exactly)
    prior     CLIP image statistics → prior.clip_mean/std; `training` task "prior"
    decoder   `training` task "decoder" (from scratch: ResBlocks trainable)
    inpaint   `training` task "inpaint", initialised from the trained decoder UNet
    export    fp16 copy of model/ into `weights_dir`, size and fp16-vs-fp32 checks
    report    samples per mode, loss curves, eval table → docs/demo/report.md

After each trainer stage its network replaces the untrained one in `model/`, so every later
stage (and `Kandinsky21.from_pretrained(out/"model")`) sees the trained networks.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kandinsky.defaults import GenerationDefaults
from kandinsky.demo.config import DEMO, DemoPlan, StagePlan

STAGES = ("data", "judge", "encoders", "movq", "prior", "decoder", "inpaint", "export", "report")
PACKAGE_WEIGHTS = Path(__file__).resolve().parent / "weights"
PACKAGE_JUDGE = Path(__file__).resolve().parent / "judge"
REPO_DOCS = Path(__file__).resolve().parents[3] / "docs" / "demo"
MAX_WEIGHTS_BYTES = 30 * 1024 * 1024
SAMPLE_PROMPTS = (
    "a red circle on the left on a white background",
    "красный круг слева от синего квадрата",
)

Log = Callable[[str], None]


def _log(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def train_demo(
    out_dir: str | Path,
    plan: DemoPlan | None = None,
    *,
    resume: bool = True,
    weights_dir: str | Path | None = None,
    judge_dir: str | Path | None = None,
    docs_dir: str | Path | None = None,
    stages: tuple[str, ...] = STAGES,
    threads: int | None = None,
    log: Log = _log,
) -> Path:
    """Run every stage of `plan` (default: full) into `out_dir`; returns the model folder.

    `weights_dir` / `judge_dir` / `docs_dir`: where the fp16 weights, the judge and the report
    go (default: inside `out_dir`; `kandinsky demo train` passes the package/repo folders).
    `resume=False` deletes `out_dir` first. `threads`: torch CPU threads (default: the idle
    cores, at least 1 — two threads on one free core run several times slower than one).
    """
    plan = plan or DemoPlan.full()
    torch.set_num_threads(threads or free_cores())
    out = Path(out_dir)
    if not resume and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = _Context(
        out=out,
        plan=plan,
        weights=Path(weights_dir) if weights_dir else out / "weights",
        judge=Path(judge_dir) if judge_dir else out / "judge",
        docs=Path(docs_dir) if docs_dir else out / "docs",
        log=log,
    )
    (out / "plan.json").write_text(json.dumps(plan.to_dict(), indent=1))
    runners = {
        "data": _stage_data,
        "judge": _stage_judge,
        "encoders": _stage_encoders,
        "movq": _stage_movq,
        "prior": _stage_prior,
        "decoder": _stage_decoder,
        "inpaint": _stage_inpaint,
        "export": _stage_export,
        "report": _stage_report,
    }
    for name in STAGES:
        if name not in stages:
            continue
        marker = out / "stages" / f"{name}.json"
        if marker.exists():
            log(f"stage {name}: done earlier, skipped")
            continue
        log(f"stage {name}: start")
        start = time.perf_counter()
        ctx.resumed_seconds = 0.0
        info = runners[name](ctx) or {}
        # a resumed stage also cost the training its checkpoints hold from earlier runs
        info["seconds"] = round(time.perf_counter() - start + ctx.resumed_seconds, 1)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(info, indent=1, ensure_ascii=False))
        log(f"stage {name}: finished in {info['seconds']:.0f} s")
    return out / "model"


def free_cores() -> int:
    """CPU cores not busy with other processes (1-minute load average), at least 1."""
    import os

    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    return max(1, min(cores, int(cores - busy + 0.5)))


class _Context:
    def __init__(self, out: Path, plan: DemoPlan, weights: Path, judge: Path, docs: Path, log: Log):
        self.out, self.plan, self.weights, self.judge, self.docs, self.log = (
            out,
            plan,
            weights,
            judge,
            docs,
            log,
        )
        self.resumed_seconds = 0.0  # training seconds a resumed trainer stage ran before

    @property
    def model(self) -> Path:
        return self.out / "model"

    @property
    def train_folder(self) -> Path:
        return self.out / "data" / "train"

    @property
    def heldout_folder(self) -> Path:
        return self.out / "data" / "heldout"


# ---------------------------------------------------------------------------- stages


def _stage_data(ctx: _Context) -> dict:
    from kandinsky.demo import data

    p = ctx.plan
    for folder, n, split in (
        (ctx.train_folder, p.train_images, "train"),
        (ctx.heldout_folder, p.heldout_images, "heldout"),
    ):
        tmp = folder.with_name(folder.name + ".partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        data.write_folder(tmp, n=n, seed=p.seed, size=p.image_size, split=split)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    return {"train": p.train_images, "heldout": p.heldout_images}


def _stage_judge(ctx: _Context) -> dict:
    from kandinsky.demo import judge

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the judge's docstring: much faster on a busy shared CPU
    try:
        j = judge.train_judge(
            steps=ctx.plan.judge_steps,
            seed=ctx.plan.seed,
            size=ctx.plan.image_size,
            pool_size=ctx.plan.judge_pool,
            log=ctx.log,
        )
    finally:
        torch.set_num_threads(threads)
    j.save(ctx.judge)
    return {"folder": str(ctx.judge)}


def _load_images(folder: Path) -> tuple[np.ndarray, list]:
    from PIL import Image

    from kandinsky.demo import data

    records = data.read_scenes(folder)
    images = np.stack([np.asarray(Image.open(folder / f).convert("RGB")) for f, _ in records])
    return images, [s for _, s in records]


def _unit_range(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 pixels → (N, 3, H, W) float in [-1, 1]."""
    return torch.as_tensor(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def _stage_encoders(ctx: _Context) -> dict:
    from kandinsky.demo import encoders
    from kandinsky.demo.config import CLIP_VOCAB, MCLIP_VOCAB

    p, out = ctx.plan, ctx.out / "encoders"
    out.mkdir(parents=True, exist_ok=True)
    images, scenes = _load_images(ctx.train_folder)
    corpus = encoders.caption_corpus(scenes, p.seed)
    clip_tok = encoders.train_clip_tokenizer(corpus, out / "clip_tokenizer", CLIP_VOCAB)
    mclip_tok = encoders.train_mclip_tokenizer(corpus, out / "tokenizer", MCLIP_VOCAB)
    vision, warm_losses = None, []
    if p.vision_warm_start is not None:
        vision, warm_losses = encoders.pretrain_vision(
            images, scenes, DEMO, p.vision_warm_start, p.seed, ctx.log
        )
        _write_losses(out / "vision_warm_start_losses.csv", warm_losses)
    clip, clip_losses = encoders.train_clip(
        images,
        scenes,
        clip_tok,
        DEMO,
        p.clip,
        p.seed,
        ctx.log,
        hard_negatives=p.clip_hard_negatives,
        kind_share=p.clip_kind_share,
        swap_share=p.clip_swap_share,
        layout_weight=p.clip_layout_weight,
        vision=vision,
    )
    student, mse = encoders.distill_mclip(
        scenes, clip.text, clip_tok, mclip_tok, DEMO, p.mclip, p.seed, ctx.log
    )
    _write_losses(out / "clip_losses.csv", clip_losses)
    _write_losses(out / "mclip_losses.csv", mse)
    heldout_images, heldout_scenes = _load_images(ctx.heldout_folder)
    same, other = encoders.cross_lingual_margin(student, mclip_tok, heldout_scenes[:64], p.seed)
    probe = {}  # what the image embeddings know per attribute (needs ≥ 20 one-shape scenes)
    if sum(len(scene.shapes) == 1 for scene in heldout_scenes) >= 20:
        probe = encoders.layout_probe(clip.vision, DEMO, heldout_images, heldout_scenes)
        ctx.log(f"encoders: image-embedding probe {probe}")
    n = min(len(scenes), 8000)
    kinds = encoders.scene_kind_probe(
        clip.vision, DEMO, (images[:n], scenes[:n]), (heldout_images, heldout_scenes)
    )
    ctx.log(f"encoders: every kind of a scene read from its embedding, by shape count {kinds}")
    binding = encoders.binding_cosines(clip, clip_tok, DEMO, heldout_scenes, p.image_size)
    ctx.log(f"encoders: scene vs swapped-twin cosines {binding}")
    encoder_networks = {"clip_text": clip.text, "clip_vision": clip.vision, "text_encoder": student}
    write_untrained_model(ctx, encoder_networks, clip_tok, mclip_tok)
    return {
        "vision_warm_start_loss": [warm_losses[0], float(np.mean(warm_losses[-20:]))]
        if warm_losses
        else None,
        "clip_loss": [clip_losses[0], float(np.mean(clip_losses[-20:]))],
        "mclip_mse": [mse[0], float(np.mean(mse[-20:]))],
        "en_ru_cosine_same_scene": same,
        "en_ru_cosine_other_scenes": other,
        "layout_probe": probe,
        "scene_kind_probe": kinds,
        "binding_cosines": binding,
        "clip_vocab": len(clip_tok),
        "mclip_vocab": len(mclip_tok),
    }


UNTRAINED = ("movq", "prior", "unet", "inpaint_unet")  # the networks the trainer stages train


def write_untrained_model(
    ctx: _Context, encoder_networks: dict[str, torch.nn.Module], clip_tokenizer, tokenizer
) -> None:
    """`model/` (and a copy in `untrained/`): the trained encoders, the rest freshly initialised.

    Each network is seeded on its own (plan seed + its index in `UNTRAINED`), so changing one
    network's size does not change another's initial weights.
    """
    from kandinsky.loading import build_network

    networks = dict(encoder_networks)
    for index, name in enumerate(UNTRAINED):
        torch.manual_seed(ctx.plan.seed + index)
        networks[name] = build_network(name, DEMO)
    write_model(ctx.model, DEMO, networks, clip_tokenizer, tokenizer, defaults=ctx.plan.generation)
    shutil.copytree(ctx.model, ctx.out / "untrained", dirs_exist_ok=True)


def _train_stage(
    ctx: _Context, task: str, stage: StagePlan, options: dict[str, Any], run: str | None = None
) -> Path:
    """Run one `kandinsky.training` task on the train folder with `model/` as its source, in
    `runs/<run or task>`."""
    from kandinsky.training.config import DataConfig, OptimConfig, TrainConfig
    from kandinsky.training.loop import train
    from kandinsky.training.tasks import make_task

    p = ctx.plan
    cfg = TrainConfig(
        task=task,
        model=str(ctx.model),
        output_dir=str(ctx.out / "runs" / (run or task)),
        # the frozen networks' outputs, computed in the first epoch (MoVQ latents, CLIP and
        # text encodings: most of a decoder step on a CPU), are read back afterwards
        data=DataConfig(
            source=str(ctx.train_folder), image_size=p.image_size, cache_dir=str(ctx.out / "cache")
        ),
        optim=OptimConfig(
            name="adamw",
            lr=stage.lr,
            weight_decay=0.0,
            warmup_steps=min(200, max(1, stage.steps // 20)),
            schedule="cosine",
            max_grad_norm=1.0,
        ),
        batch_size=stage.batch_size,
        max_steps=stage.steps,
        ema_decay=stage.ema_decay,
        seed=p.seed,
        checkpoint_every=p.checkpoint_every,
        log_every=max(1, min(25, stage.steps // 4)),
        task_options=options,
        resume="latest",
    )
    result = train(cfg, make_task(task, cfg))
    ctx.resumed_seconds += result.resumed_seconds
    ctx.log(f"{task}: {result.steps} steps, last loss {np.mean(result.losses[-20:] or [0]):.4f}")
    return Path(cfg.output_dir) / "final"


def _replace_component(model: Path, final: Path, name: str) -> None:
    """Copy a trainer's exported network into every pipeline folder of `model` that holds it."""
    sub = {"prior": "prior", "unet": "unet", "inpaint_unet": "unet", "movq": "movq"}[name]
    targets = {
        "prior": ["kandinsky-2-1-prior"],
        "unet": ["kandinsky-2-1"],
        "inpaint_unet": ["kandinsky-2-1-inpaint"],
        "movq": ["kandinsky-2-1", "kandinsky-2-1-inpaint"],
    }[name]
    for pipeline in targets:
        dst = model / pipeline / sub
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(final / sub, dst)


def _stage_movq(ctx: _Context) -> dict:
    p = ctx.plan
    # Trained without the codebook (task option quantize=False): inference decodes
    # unquantized latents anyway, and at this size the quantized round trip lost colours and
    # small shapes (1500 steps: 9/255 mean error, green drawn blue). The codebook stays unused.
    final = _train_stage(ctx, "movq", p.movq, {"quantize": False})
    from kandinsky.loading import load

    movq = load(final, components=["movq"]).movq
    images, _ = _load_images(ctx.train_folder)
    scale = normalize_latent_scale(movq, _unit_range(images[:256]))
    from kandinsky.conversion import save_network

    parts = load(ctx.model, components=["movq"])
    save_network("movq", movq, parts.config, final / "movq")
    _replace_component(ctx.model, final, "movq")
    return {"latent_scale": scale, **reconstruction_quality(movq, ctx)}


@torch.no_grad()
def reconstruction_quality(movq: torch.nn.Module, ctx: _Context) -> dict:
    """Mean error and judge adherence of encode→decode on held-out scenes.

    Every generated picture passes through this decoder, so its adherence is the ceiling of
    every generation gate (a blurred star reads as a circle however good the UNet is).
    """
    from kandinsky.demo import judge as judge_lib
    from kandinsky.demo.judge import Judge
    from kandinsky.imaging import tensor_to_pil

    images, scenes = _load_images(ctx.heldout_folder)
    real = _unit_range(images[:256])
    movq.eval()
    recon = torch.cat([movq.decode(movq.encode(chunk)) for chunk in real.split(64)]).clamp(-1, 1)
    judged = Judge.load(ctx.judge).predict(tensor_to_pil(recon))  # as saved PNGs: 8-bit
    rates = judge_lib.adherence(scenes[: len(real)], judged)
    return {
        "reconstruction_mae_255": float((recon - real).abs().mean() * 127.5),
        "reconstruction_adherence": {k: round(v, 3) for k, v in rates.items()},
    }


@torch.no_grad()
def normalize_latent_scale(movq: torch.nn.Module, images: torch.Tensor) -> float:
    """Rescale MoVQ so its latents have unit std, leaving encode→decode exactly the same.

    latents' = s·latents: quant_conv and the codebook × s; every layer that reads the
    latent (post_quant_conv, the SpatialNorms' conv_y / conv_b) has its weight × 1/s. The
    nearest codebook entry is unchanged under a common scale. Returns s.
    """
    from kandinsky.models.movq import SpatialNorm

    movq.eval()
    latents = torch.cat([movq.encode(chunk) for chunk in images.split(64)])
    s = float(1.0 / latents.std().clamp_min(1e-6))
    movq.quant_conv.weight.mul_(s)
    movq.quant_conv.bias.mul_(s)
    movq.quantize.embedding.weight.mul_(s)
    movq.post_quant_conv.weight.div_(s)
    for module in movq.modules():
        if isinstance(module, SpatialNorm):
            module.conv_y.weight.div_(s)
            module.conv_b.weight.div_(s)
    return s


def _stage_prior(ctx: _Context) -> dict:
    from kandinsky.conversion import save_network
    from kandinsky.loading import load
    from kandinsky.training.losses import clip_image_embeds

    parts = load(ctx.model, components=["prior", "clip_vision"])
    images, _ = _load_images(ctx.train_folder)
    embeds = []
    with torch.no_grad():
        for chunk in torch.from_numpy(images).split(256):
            embeds.append(clip_image_embeds(parts, _unit_range(chunk)))
    embeds = torch.cat(embeds)
    with torch.no_grad():
        parts.prior.clip_mean.copy_(embeds.mean(0, keepdim=True))
        parts.prior.clip_std.copy_(embeds.std(0, keepdim=True).clamp_min(1e-4))
    save_network("prior", parts.prior, parts.config, ctx.model / "kandinsky-2-1-prior" / "prior")
    final = _train_stage(ctx, "prior", ctx.plan.prior, {})
    _replace_component(ctx.model, final, "prior")
    return {"clip_embeds": len(embeds)}


def _stage_decoder(ctx: _Context) -> dict:
    p = ctx.plan
    options = {"freeze_resblocks": False, "snr_gamma": p.decoder_snr_gamma}
    final = _train_stage(ctx, "decoder", p.decoder, options)
    _replace_component(ctx.model, final, "unet")
    if p.decoder_pixel is None:
        return {}
    pixel = {
        **options,
        "pixel_weight": p.decoder_pixel_weight,
        "pixel_max_t": p.decoder_pixel_max_t,
        "clip_weight": p.decoder_pixel_clip_weight,
    }
    final = _train_stage(ctx, "decoder", p.decoder_pixel, pixel, run="decoder_pixel")
    _replace_component(ctx.model, final, "unet")
    return {
        "pixel_phase_steps": p.decoder_pixel.steps,
        "pixel_clip_weight": p.decoder_pixel_clip_weight,
    }


def _stage_inpaint(ctx: _Context) -> dict:
    options = {
        "freeze_resblocks": False,
        "init_from_unet": True,
        "snr_gamma": ctx.plan.decoder_snr_gamma,
        "mask_kind": dict(ctx.plan.inpaint_masks),
    }
    final = _train_stage(ctx, "inpaint", ctx.plan.inpaint, options)
    _replace_component(ctx.model, final, "inpaint_unet")
    return {}


def _stage_export(ctx: _Context) -> dict:
    size = export_fp16(ctx.model, ctx.weights, ctx.plan.generation)
    diff = fp16_difference(ctx.model, ctx.weights, ctx.plan)
    if size > MAX_WEIGHTS_BYTES:
        raise RuntimeError(f"demo weights are {size / 2**20:.1f} MiB, over the 30 MiB budget")
    ctx.log(f"export: {size / 2**20:.2f} MiB, fp16 vs fp32 mean |Δ| {diff:.2f}/255")
    return {"bytes": size, "fp16_vs_fp32_mean_abs_255": diff}


def _stage_report(ctx: _Context) -> dict:
    from kandinsky.demo import evaluate as ev
    from kandinsky.demo.judge import Judge
    from kandinsky.pipeline import Kandinsky21

    pipe = Kandinsky21.from_pretrained(ctx.weights, inpainting=True)
    judge = Judge.load(ctx.judge)
    table = ev.evaluate(
        pipe,
        judge,
        n_prompts=ctx.plan.eval_prompts,
        seed=ctx.plan.seed,  # sampling: the exported model's defaults, the plan's settings
    )
    write_report(ctx.out, ctx.docs, pipe, table, ctx.plan)
    return {"table": table}


# ---------------------------------------------------------------------------- model folders


def write_model(
    folder: Path,
    config,
    networks: dict[str, torch.nn.Module],
    clip_tokenizer,
    tokenizer,
    dtype: torch.dtype = torch.float32,
    defaults: GenerationDefaults | None = None,
) -> Path:
    """A complete diffusers-layout model (three pipelines, both tokenizers), as `convert`
    writes it, with `defaults` (the plan's sampling settings) in its pipeline folders."""
    from kandinsky.conversion import save_network, write_pipelines

    tokenizers = {"clip_tokenizer": clip_tokenizer, "tokenizer": tokenizer}

    def write_component(component: str, sub: Path) -> None:
        if component in tokenizers:
            tokenizers[component].save_pretrained(str(sub))
            return
        module = networks[component]
        save_network(
            component, module if dtype == torch.float32 else _cast(module, dtype), config, sub
        )

    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    write_pipelines(tmp, [*networks, *tokenizers], config, write_component, defaults=defaults)
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder


def _cast(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    import copy

    return copy.deepcopy(module).to(dtype)


def export_fp16(model: Path, weights: Path, defaults: GenerationDefaults | None = None) -> int:
    """Write `model` (fp32) as fp16 safetensors into `weights`, with `defaults` (else the
    model's own) as its sampling settings; returns the total bytes."""
    from kandinsky.loading import load

    parts = load(model)
    networks = parts.networks()
    tmp = Path(str(weights) + ".partial")
    write_model(
        tmp,
        parts.config,
        networks,
        parts.clip_tokenizer,
        parts.tokenizer,
        torch.float16,
        defaults=defaults or parts.defaults,
    )
    if weights.exists():
        shutil.rmtree(weights)
    weights.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(weights)
    return sum(f.stat().st_size for f in weights.rglob("*") if f.is_file())


def fp16_difference(model: Path, weights: Path, plan: DemoPlan) -> float:
    """Mean |fp32 − fp16-weights| of one text2img image, in /255 (both run in fp32)."""
    from kandinsky.pipeline import Kandinsky21

    images = []
    for source in (model, weights):
        pipe = Kandinsky21.from_pretrained(source)
        result = pipe.text2img(
            list(SAMPLE_PROMPTS),
            seed=plan.seed,
            height=plan.image_size,
            width=plan.image_size,
            num_steps=plan.sample_steps,
            prior_steps=plan.prior_steps,
        )
        images.append(np.stack([np.asarray(im, dtype=np.float32) for im in result.images]))
    return float(np.abs(images[0] - images[1]).mean())


def _write_losses(path: Path, losses: list[float]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "loss"])
        for i, value in enumerate(losses, 1):
            writer.writerow([i, f"{value:.6g}"])


def stage_times(out: Path) -> dict[str, float]:
    times = {}
    for name in STAGES:
        marker = Path(out) / "stages" / f"{name}.json"
        if marker.exists():
            times[name] = json.loads(marker.read_text()).get("seconds", 0.0)
    return times


# ---------------------------------------------------------------------------- report


def _read_curve(path: Path) -> list[tuple[int, float]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


def plot_curve(points: list[tuple[int, float]], title: str, path: Path, log_y: bool = True) -> Path:
    """A loss curve as a PNG, drawn with PIL (matplotlib is not a dependency)."""
    from PIL import Image, ImageDraw

    w, h, pad = 480, 300, 44
    image = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(image)
    draw.text((pad, 8), title, fill="black")
    if points:
        xs = np.array([p[0] for p in points], dtype=float)
        ys = np.array([p[1] for p in points], dtype=float)
        if len(ys) > 200:  # smooth long per-step curves
            k = len(ys) // 100
            ys = np.convolve(ys, np.ones(k) / k, mode="valid")
            xs = xs[k - 1 :]
        ys_plot = np.log10(np.clip(ys, 1e-8, None)) if log_y else ys
        lo, hi = float(ys_plot.min()), float(ys_plot.max())
        hi = hi if hi > lo else lo + 1.0
        x_lo, x_hi = (
            float(xs.min()),
            float(xs.max()) if xs.max() > xs.min() else float(xs.min()) + 1,
        )

        def to_px(x: float, y: float) -> tuple[float, float]:
            return (
                pad + (x - x_lo) / (x_hi - x_lo) * (w - 2 * pad),
                h - pad - (y - lo) / (hi - lo) * (h - 2 * pad),
            )

        draw.rectangle((pad, pad, w - pad, h - pad), outline="gray")
        draw.line(
            [to_px(x, y) for x, y in zip(xs, ys_plot, strict=True)], fill=(30, 90, 200), width=2
        )
        fmt = (lambda v: f"{10**v:.3g}") if log_y else (lambda v: f"{v:.3g}")
        draw.text((2, pad - 6), fmt(hi), fill="black")
        draw.text((2, h - pad - 6), fmt(lo), fill="black")
        draw.text((pad, h - pad + 6), f"{int(x_lo)}", fill="black")
        draw.text((w - pad - 30, h - pad + 6), f"{int(x_hi)} steps", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def label_font(size: int = 11) -> Any:
    """A font that has Cyrillic for the grids' prompt labels (DejaVu Sans where the system has
    it), else PIL's default (which draws Russian as boxes)."""
    from PIL import ImageFont

    try:  # a bare name: PIL searches the system's font folders
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default()


def _grid(rows: list[list[Any]], labels: list[str], cell: int = 96) -> Any:
    from PIL import Image, ImageDraw

    label_w = 150
    cols = max(len(r) for r in rows)
    image = Image.new("RGB", (label_w + cols * (cell + 4), len(rows) * (cell + 4)), "white")
    draw, font = ImageDraw.Draw(image), label_font()
    for i, (row, label) in enumerate(zip(rows, labels, strict=True)):
        y = i * (cell + 4)
        draw.text((4, y + cell // 2 - 6), label, fill="black", font=font)
        for j, im in enumerate(row):
            image.paste(im.convert("RGB").resize((cell, cell)), (label_w + j * (cell + 4), y))
    return image


def sample_grids(pipe: Any, plan: DemoPlan, folder: Path) -> dict[str, Path]:
    """One PNG grid per mode, generated with `pipe` (fixed seeds)."""
    from kandinsky.demo import data

    folder.mkdir(parents=True, exist_ok=True)
    size, seed = plan.image_size, plan.seed
    opts = {"seed": seed, "num_steps": plan.sample_steps, "prior_steps": plan.prior_steps}
    out: dict[str, Path] = {}
    # text2img: prompts in both languages, 4 seeds each
    prompts = [
        "красный круг слева от синего квадрата",
        "a red circle to the left of a blue square",
        *[t for t, _ in data.eval_prompts(2, seed, "en", 1)],
        *[t for t, _ in data.eval_prompts(2, seed, "ru", 2)],
    ]
    rows = [pipe.text2img(p, num_images=4, height=size, width=size, **opts).images for p in prompts]
    out["text2img"] = folder / "text2img.png"
    _grid(rows, [p[:22] + "…" if len(p) > 22 else p for p in prompts]).save(out["text2img"])
    (folder / "text2img_prompts.txt").write_text("\n".join(prompts) + "\n", encoding="utf-8")
    scenes = [s for _, s in data.eval_prompts(4, seed + 7, "en", 1)]
    sources = [data.render(s, size=size) for s in scenes]
    # variations
    rows = [
        [src, *pipe.variations(src, num_images=3, height=size, width=size, **opts).images]
        for src in sources
    ]
    out["variations"] = folder / "variations.png"
    _grid(rows, ["source | 3 variations"] * len(rows)).save(out["variations"])
    # inpaint: repaint the right cell with a new object
    rows = []
    mask = np.zeros((size, size), dtype=np.float32)
    mask[size // 4 : 3 * size // 4, size // 2 :] = 1
    for src in sources[:3]:
        res = pipe.inpaint(src, mask, "a yellow star on the right", num_images=3, **opts).images
        rows.append([src, *res])
    out["inpaint"] = folder / "inpaint.png"
    _grid(rows, ["source | 'a yellow star on the right'"] * len(rows)).save(out["inpaint"])
    # outpaint: left half → full width
    rows = []
    for src in sources[:3]:
        half = src.crop((0, 0, size // 2, size))
        res = pipe.outpaint(
            half,
            "a green square on the right",
            extend=(0, 0, size // 2, 0),
            overlap=8,
            num_images=3,
            **opts,
        ).images
        rows.append([half.resize((size, size)), *res])
    out["outpaint"] = folder / "outpaint.png"
    _grid(rows, ["left half | 'a green square on the right'"] * len(rows)).save(out["outpaint"])
    # mixing two one-object images
    rows = []
    for a, b in ((sources[0], sources[1]), (sources[2], sources[3])):
        res = pipe.mix([a, b], [0.5, 0.5], num_images=2, height=size, width=size, **opts).images
        rows.append([a, b, *res])
    out["mix"] = folder / "mix.png"
    _grid(rows, ["a | b | mix 0.5/0.5"] * len(rows)).save(out["mix"])
    return out


def write_report(out: Path, docs: Path, pipe: Any, table: list, plan: DemoPlan) -> Path:
    """docs/report.md with stage timings, loss curves, sample grids and the eval table."""
    from kandinsky.demo.config import count_parameters
    from kandinsky.demo.evaluate import format_table

    docs.mkdir(parents=True, exist_ok=True)
    curves = {
        "clip": (out / "encoders" / "clip_losses.csv", "tiny CLIP: symmetric InfoNCE"),
        "mclip": (out / "encoders" / "mclip_losses.csv", "tiny M-CLIP: distillation MSE"),
        **{
            task: (out / "runs" / task / "log.csv", f"{task}: training loss")
            for task in ("movq", "prior", "decoder", "decoder_pixel", "inpaint")
            if task != "decoder_pixel" or plan.decoder_pixel is not None
        },
    }
    for name, (path, title) in curves.items():
        plot_curve(_read_curve(path), title, docs / f"loss_{name}.png")
    grids = sample_grids(pipe, plan, docs)
    counts = count_parameters(pipe.parts.config)
    times = stage_times(out)
    markers = {
        n: json.loads((out / "stages" / f"{n}.json").read_text())
        for n in STAGES
        if (out / "stages" / f"{n}.json").exists()
    }
    lines = [
        "# Demo model: training report",
        "",
        f"Plan `{plan.name}` (seed {plan.seed}), rebuilt with `kandinsky demo train`. "
        f"Images {plan.image_size}×{plan.image_size}, {plan.train_images} training scenes.",
        "",
        "## Networks (parameters)",
        "",
        "| network | parameters |",
        "|---|---:|",
        *[f"| {k} | {v:,} |" for k, v in counts.items()],
        f"| **total** | **{sum(counts.values()):,}** |",
        "",
        "## Stages (wall-clock seconds)",
        "",
        "| stage | seconds | notes |",
        "|---|---:|---|",
    ]
    for name in STAGES:
        if name in times:
            note = {k: v for k, v in markers[name].items() if k not in ("seconds", "table")}
            lines.append(
                f"| {name} | {times[name]:.0f} | {json.dumps(note, ensure_ascii=False)[:160]} |"
            )
    lines += [
        f"| total | {sum(times.values()):.0f} | |",
        "",
        "## Evaluation (independent judge)",
        "",
    ]
    lines += [format_table(table), "", "## Loss curves", ""]
    lines += [f"![{name}](loss_{name}.png)" for name in curves]
    lines += ["", "## Samples", ""]
    lines += [f"### {mode}\n\n![{mode}]({path.name})\n" for mode, path in grids.items()]
    report = docs / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report
