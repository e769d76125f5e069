"""The demo model: `DEMO` (a small Kandinsky 2.1 of the same architecture family) and `DemoPlan`.

Every width that diffusers ties together is one number here, `D` = 128: the CLIP projection,
the CLIP text width (the prior reads its token states), the prior's clip_dim, M-CLIP's
output, and the UNet's image-embedding / pooled-text / cross-attention widths.
Images are 64×64; MoVQ has 3 levels (downscale 4, where the full model's 4 levels give 8),
so latents are 16×16 and the 4-level UNet runs at 16, 8, 4 and 2 pixels (attention at 8, 4 and
2). At downscale 8 the shapes (9–17 px) were one or two latent cells wide and the trained
MoVQ could not draw them back sharply enough to tell a star from a circle (docs/demo).

`DemoPlan.full()` is sized for ≤ 3 h on two free CPU cores (torch threads = free cores; see
docs/demo/report.md for measured timings);
`DemoPlan.quick()` runs in about two minutes and only proves the plumbing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from kandinsky.config import (
    CLIPConfig,
    CLIPTowerConfig,
    ModelConfig,
    MoVQConfig,
    PriorConfig,
    TextEncoderConfig,
    UNetConfig,
)
from kandinsky.defaults import GenerationDefaults

D = 128  # the shared embedding width (see module docstring)
IMAGE_SIZE = 64
CLIP_VOCAB = 1024  # byte-level BPE over the captions (256 bytes + merges + specials)
MCLIP_VOCAB = 512  # SentencePiece Unigram over the captions (XLM-R specials + <mask>)

_UNET = UNetConfig(
    in_channels=4,
    out_channels=8,
    model_channels=48,
    channel_mult=(1, 1, 2, 2),
    num_res_blocks=1,
    attention_levels=(1, 2, 3),  # as the full model: every level but the first (8, 4, 2 px)
    head_channels=24,
    cross_attention_dim=D,
    text_dim=128,  # M-CLIP hidden size
    pooled_text_dim=D,
    image_embed_dim=D,
    num_image_tokens=10,
    norm_groups=16,
    sample_size=IMAGE_SIZE // 4,  # 16×16 latents: 64×64 images by default
)

DEMO = ModelConfig(
    unet=_UNET,
    inpaint_unet=replace(_UNET, in_channels=9),
    prior=PriorConfig(width=192, num_layers=4, num_heads=4, clip_dim=D, text_ctx=48),
    movq=MoVQConfig(widths=(32, 64, 64), layers_per_block=1, latent_channels=4, num_embeddings=256),
    text_encoder=TextEncoderConfig(
        vocab_size=MCLIP_VOCAB,
        hidden_size=128,
        num_layers=3,
        num_heads=4,
        intermediate_size=512,
        max_position_embeddings=80,  # 77 tokens + XLM-R's position offset of 2
        out_dim=D,
        max_length=77,
    ),
    clip=CLIPConfig(
        text=CLIPTowerConfig(
            hidden_size=D,
            num_layers=3,
            num_heads=4,
            intermediate_size=512,
            projection_dim=D,
            vocab_size=CLIP_VOCAB,
            max_position_embeddings=48,  # = prior.text_ctx; captions have ≤ 40 BPE tokens
        ),
        vision=CLIPTowerConfig(
            hidden_size=128,
            num_layers=3,
            num_heads=4,
            intermediate_size=512,
            projection_dim=D,
            image_size=IMAGE_SIZE,
            patch_size=8,
        ),
    ),
)


@dataclass(frozen=True)
class StagePlan:
    """One trainer run: optimizer steps, batch size, learning rate, EMA of the weights (the
    exported network is the average when set)."""

    steps: int
    batch_size: int
    lr: float
    ema_decay: float | None = None


@dataclass(frozen=True)
class DemoPlan:
    """Everything `train_demo` does, sized. `quick()` for tests/CI, `full()` for the shipped model."""

    name: str
    seed: int = 0
    image_size: int = IMAGE_SIZE
    train_images: int = 20000
    heldout_images: int = 500
    vision_warm_start: StagePlan | None = StagePlan(2000, 128, 3e-4)  # encoders.pretrain_vision
    clip: StagePlan = StagePlan(2500, 128, 3e-4)  # 1500 had not converged (run 10)
    clip_hard_negatives: float = 0.5  # batch share of layout variants (encoders.train_clip)
    clip_swap_share: float = 0.3  # of those variants, the share that swap two shapes' colours
    clip_kind_share: float = 0.8  # of the others, the share that change a kind, not a place
    # auxiliary per-cell kind/colour loss on both CLIP towers; at 1.0 the contrastive loss
    # wore the warm start's kind knowledge down (two-shape scenes: both kinds 0.65 by probe)
    clip_layout_weight: float = 3.0
    mclip: StagePlan = StagePlan(1500, 64, 1e-3)
    movq: StagePlan = StagePlan(6000, 16, 1e-3)
    prior: StagePlan = StagePlan(4000, 64, 3e-4)
    # ≈ 56 min (0.169 s a step, cached encoders); 16 000 + 5 000 pixel steps was worse (run 13)
    decoder: StagePlan = StagePlan(20000, 32, 4e-4, ema_decay=0.999)
    inpaint: StagePlan = StagePlan(4000, 32, 2e-4, ema_decay=0.999)
    # the gates repaint a shape's cell (a box) and extend half an image (a deep band)
    inpaint_masks: tuple[tuple[str, float], ...] = (("box", 0.4), ("band", 0.3), ("any", 0.3))
    decoder_snr_gamma: float | None = 5.0  # Min-SNR-γ weighting for decoder and inpaint
    # a second decoder phase that adds the decoded-x0 pixel MSE (training.losses.pixel_loss)
    # on samples with t < decoder_pixel_max_t: the latent MSE alone never taught the star's
    # points (a star is a diamond but for a few hundredths of the latent's norm)
    decoder_pixel: StagePlan | None = StagePlan(3000, 32, 2e-4)
    decoder_pixel_weight: float = 3.0
    decoder_pixel_max_t: int = 500
    # + this weight · (1 − cosine) between the frozen CLIP image embeddings of the decoded x0
    # and of the real image, inside the pixel loss (task option clip_weight): it weighs kind,
    # which the squared errors barely see (run 14: one object 0.81 → 0.86, two 0.44 → 0.64;
    # 0.3 was level with 1.0, a little better on one object and worse on mixing)
    decoder_pixel_clip_weight: float = 1.0
    judge_steps: int = 2000
    judge_pool: int = 12000
    checkpoint_every: int = 500
    eval_prompts: int = 64  # per gate in the report's eval
    # the model's sampling settings (its generation_defaults.json), used by samples and eval:
    # the original's guidance 4 / 4 overshoots at this size; prior guidance 2 with decoder
    # guidance 2.5 drew one object 0.86 → 0.96, two 0.65 → 0.73 (session 15, 192 prompts)
    sample_steps: int = 25  # decoder DDIM steps (50 drew the same, run 10)
    prior_steps: int = 25
    guidance_scale: float = 2.5
    prior_guidance_scale: float = 2.0

    @property
    def generation(self) -> GenerationDefaults:
        """The sampling settings the trained model ships with (`kandinsky.defaults`)."""
        return GenerationDefaults(
            guidance_scale=self.guidance_scale,
            num_steps=self.sample_steps,
            prior_guidance_scale=self.prior_guidance_scale,
            prior_steps=self.prior_steps,
        )

    @classmethod
    def full(cls) -> DemoPlan:
        return cls(name="full")

    @classmethod
    def quick(cls) -> DemoPlan:
        return cls(
            name="quick",
            train_images=256,
            heldout_images=32,
            vision_warm_start=StagePlan(10, 32, 1e-3),
            clip=StagePlan(30, 32, 1e-3),
            clip_hard_negatives=0.0,
            mclip=StagePlan(30, 32, 1e-3),
            movq=StagePlan(6, 8, 1e-3),
            prior=StagePlan(6, 8, 5e-4),
            decoder=StagePlan(6, 8, 5e-4, ema_decay=0.9),  # the EMA export path, too
            decoder_pixel=StagePlan(4, 8, 5e-4),
            decoder_pixel_clip_weight=0.3,  # the CLIP term's path, too
            inpaint=StagePlan(6, 8, 5e-4),
            judge_steps=20,
            judge_pool=256,
            checkpoint_every=4,
            eval_prompts=4,
            sample_steps=4,
            prior_steps=4,
        )

    def to_dict(self) -> dict:
        return asdict(self)


def count_parameters(config: ModelConfig = DEMO) -> dict[str, int]:
    """Parameters per network of `config` (built on the meta device: no memory)."""
    import torch

    from kandinsky.checkpoints.layouts import NETWORKS
    from kandinsky.loading import build_network

    counts = {}
    with torch.device("meta"):
        for name in NETWORKS:
            counts[name] = sum(p.numel() for p in build_network(name, config).parameters())
    return counts
