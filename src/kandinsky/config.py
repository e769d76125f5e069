"""Configuration of every network, as plain frozen dataclasses.

`KANDINSKY_2_1` holds the released values (reference: shared/reference/kandinsky21.md §2-§5);
`TINY` has the same structure at toy size, so tests exercise the real code paths in
milliseconds. Configs are data: nothing here builds a module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class UNetConfig:
    """Decoder UNet (GLIDE/ADM style). Widths are `model_channels * channel_mult[level]`."""

    in_channels: int = 4  # 9 for the inpainting UNet: latent + masked latent + mask
    out_channels: int = 8  # eps (4) + learned variance interpolation (4)
    model_channels: int = 384
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)
    num_res_blocks: int = 3
    attention_levels: tuple[int, ...] = (1, 2, 3)  # levels with joint self/cross attention
    head_channels: int = 64
    cross_attention_dim: int = 768  # width of the encoder tokens (10 image + 77 text)
    text_dim: int = 1024  # M-CLIP per-token states
    pooled_text_dim: int = 768  # M-CLIP pooled (after its linear head)
    image_embed_dim: int = 768  # CLIP image embedding
    num_image_tokens: int = 10
    norm_groups: int = 32
    norm_eps: float = 1e-5
    sample_size: int = 64  # latent side it was trained at (diffusers' field): the default size

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(self.model_channels * m for m in self.channel_mult)

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.model_channels


@dataclass(frozen=True)
class PriorConfig:
    """Image prior: causal transformer that predicts the CLIP image embedding (x0)."""

    width: int = 2048
    num_layers: int = 20
    num_heads: int = 32
    clip_dim: int = 768  # CLIP embedding width (text tokens, pooled text, image)
    text_ctx: int = 77
    num_extra_tokens: int = 4  # pooled text, time, noisy image, learned prd query
    norm_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @property
    def seq_len(self) -> int:
        return self.text_ctx + self.num_extra_tokens


@dataclass(frozen=True)
class MoVQConfig:
    """MoVQ autoencoder: VQGAN encoder, decoder with spatially conditioned norms."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    widths: tuple[int, ...] = (128, 256, 256, 512)
    layers_per_block: int = 2  # encoder; the decoder has one more per level
    num_embeddings: int = 16384
    norm_groups: int = 32
    norm_eps: float = 1e-6

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.widths) - 1)


@dataclass(frozen=True)
class TextEncoderConfig:
    """M-CLIP: XLM-RoBERTa + masked-mean pooling + Linear(hidden → out_dim)."""

    vocab_size: int = 250002
    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    intermediate_size: int = 4096
    max_position_embeddings: int = 514
    out_dim: int = 768
    pad_token_id: int = 1
    layer_norm_eps: float = 1e-5
    max_length: int = 77


@dataclass(frozen=True)
class CLIPTowerConfig:
    """One CLIP tower (text or vision) in transformers' terms."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    projection_dim: int = 768
    vocab_size: int = 49408  # text only
    max_position_embeddings: int = 77  # text only
    image_size: int = 224  # vision only
    patch_size: int = 14  # vision only
    layer_norm_eps: float = 1e-5


@dataclass(frozen=True)
class CLIPConfig:
    """CLIP ViT-L/14: the text tower conditions the prior, the vision tower embeds images."""

    text: CLIPTowerConfig = field(
        default_factory=lambda: CLIPTowerConfig(
            hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072
        )
    )
    vision: CLIPTowerConfig = field(
        default_factory=lambda: CLIPTowerConfig(
            hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096
        )
    )
    image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ModelConfig:
    """Every network of Kandinsky 2.1."""

    unet: UNetConfig = field(default_factory=UNetConfig)
    inpaint_unet: UNetConfig = field(default_factory=lambda: UNetConfig(in_channels=9))
    prior: PriorConfig = field(default_factory=PriorConfig)
    movq: MoVQConfig = field(default_factory=MoVQConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    clip: CLIPConfig = field(default_factory=CLIPConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return _from_dict(cls, data)


def _from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a (nested) config dataclass from `asdict` output; lists become tuples."""
    kwargs: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name not in data:
            continue
        value = data[f.name]
        sub = _NESTED.get((cls.__name__, f.name))
        if sub is not None:
            value = _from_dict(sub, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


_NESTED: dict[tuple[str, str], type] = {
    ("ModelConfig", "unet"): UNetConfig,
    ("ModelConfig", "inpaint_unet"): UNetConfig,
    ("ModelConfig", "prior"): PriorConfig,
    ("ModelConfig", "movq"): MoVQConfig,
    ("ModelConfig", "text_encoder"): TextEncoderConfig,
    ("ModelConfig", "clip"): CLIPConfig,
    ("CLIPConfig", "text"): CLIPTowerConfig,
    ("CLIPConfig", "vision"): CLIPTowerConfig,
}

KANDINSKY_2_1 = ModelConfig()

# Same structure at toy size. diffusers ties the UNet's pooled-text, image-embedding and
# cross-attention widths together, so TINY keeps them equal to stay convertible.
_TINY_UNET = UNetConfig(
    model_channels=32,
    channel_mult=(1, 2, 3, 4),
    num_res_blocks=2,
    head_channels=16,
    cross_attention_dim=32,
    text_dim=48,
    pooled_text_dim=32,
    image_embed_dim=32,
    norm_groups=8,
)

TINY = ModelConfig(
    unet=_TINY_UNET,
    inpaint_unet=UNetConfig(**{**asdict(_TINY_UNET), "in_channels": 9}),
    prior=PriorConfig(width=64, num_layers=2, num_heads=4, clip_dim=32),
    # diffusers fixes 32 groups in the MoVQ decoder norms, so TINY keeps 32 groups.
    movq=MoVQConfig(widths=(32, 32, 64, 64), num_embeddings=64),
    text_encoder=TextEncoderConfig(
        vocab_size=1000,
        hidden_size=48,
        num_layers=2,
        num_heads=4,
        intermediate_size=96,
        max_position_embeddings=80,
        out_dim=32,
    ),
    clip=CLIPConfig(
        text=CLIPTowerConfig(
            hidden_size=32,
            num_layers=2,
            num_heads=4,
            intermediate_size=64,
            projection_dim=32,
            vocab_size=1000,
        ),
        vision=CLIPTowerConfig(
            hidden_size=48,
            num_layers=2,
            num_heads=4,
            intermediate_size=96,
            projection_dim=32,
            image_size=32,
            patch_size=8,
        ),
    ),
)
