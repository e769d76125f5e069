"""Key rules from the original release's layout to ours.

Our state dicts use the diffusers names (so diffusers folders load as they are and a
converted folder is a diffusers folder). The original files (`decoder_fp16.ckpt`,
`prior_fp16.ckpt`, `movq_final.ckpt`, OpenAI CLIP) name modules differently and fuse
q/k/v. The rules below are data: for each network, a list of module renames
(ours ← original) and, per kind of block, the renames of the parameters inside it with the
tensor operation that turns the original tensor into ours.

Every operation describes itself in the same words as the reference maps in
shared/reference/checkpoints/mapping/, so tests compare the two tables exactly.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from kandinsky.config import MoVQConfig, PriorConfig, UNetConfig

# ---------------------------------------------------------------------------- operations


@dataclass(frozen=True)
class Copy:
    def apply(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape

    def describe(self, shape: tuple[int, ...]) -> str:
        return "copy"

    def original_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape

    def put(self, dest: torch.Tensor, value: torch.Tensor) -> None:
        dest.copy_(value)


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    """1×1 conv kernels become linear weights: drop trailing size-1 dims beyond two."""
    while len(shape) > 2 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _squeeze_words(shape: tuple[int, ...]) -> str:
    return f"drop trailing 1-dims {list(shape)}->{list(_squeezed(shape))}"


@dataclass(frozen=True)
class Squeeze:
    ndim: int  # rank of the original conv kernel

    def apply(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(_squeezed(tuple(t.shape)))

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return _squeezed(shape)

    def describe(self, shape: tuple[int, ...]) -> str:
        return "copy" if _squeezed(shape) == shape else _squeeze_words(shape)

    def original_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape + (1,) * (self.ndim - len(shape)) if len(shape) == 2 else shape

    def put(self, dest: torch.Tensor, value: torch.Tensor) -> None:
        dest.copy_(value.reshape(dest.shape))


@dataclass(frozen=True)
class HeadSplit:
    """Rows are laid out per head: for head h, `parts` blocks of `head_dim` rows (q,k,v or k,v)."""

    parts: int
    index: int
    head_dim: int
    ndim: int = 2  # rank of the original weight (3 for GLIDE's conv1d)

    def apply(self, t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(_squeezed(tuple(t.shape)))
        rows = t.shape[0]
        grouped = t.reshape(
            rows // (self.parts * self.head_dim), self.parts, self.head_dim, *t.shape[1:]
        )
        return grouped[:, self.index].reshape(rows // self.parts, *t.shape[1:])

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        squeezed = _squeezed(shape)
        return (squeezed[0] // self.parts, *squeezed[1:])

    def describe(self, shape: tuple[int, ...]) -> str:
        words = (
            f"per-head split: rows of chunk {self.index} of every "
            f"{self.parts}x{self.head_dim}-row head group"
        )
        return words if _squeezed(shape) == shape else f"{_squeeze_words(shape)}; {words}"

    def original_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        fused = (shape[0] * self.parts, *shape[1:])
        return fused + (1,) * (self.ndim - len(fused)) if len(fused) == 2 else fused

    def put(self, dest: torch.Tensor, value: torch.Tensor) -> None:
        rest = value.shape[1:]
        grouped = dest.view(-1, self.parts, self.head_dim, *rest)
        grouped[:, self.index] = value.reshape(-1, self.head_dim, *rest)


@dataclass(frozen=True)
class Third:
    """nn.MultiheadAttention's in_proj: q, k, v as three contiguous blocks of rows."""

    index: int

    def apply(self, t: torch.Tensor) -> torch.Tensor:
        return t.chunk(3, dim=0)[self.index]

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (shape[0] // 3, *shape[1:])

    def describe(self, shape: tuple[int, ...]) -> str:
        return f"contiguous third {self.index} along dim 0 (q, k, v)"

    def original_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (shape[0] * 3, *shape[1:])

    def put(self, dest: torch.Tensor, value: torch.Tensor) -> None:
        dest.chunk(3, dim=0)[self.index].copy_(value)


@dataclass(frozen=True)
class Transpose:
    def apply(self, t: torch.Tensor) -> torch.Tensor:
        return t.t()

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape[::-1]

    def describe(self, shape: tuple[int, ...]) -> str:
        return "transpose"

    def original_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape[::-1]

    def put(self, dest: torch.Tensor, value: torch.Tensor) -> None:
        dest.copy_(value.t())


@dataclass(frozen=True)
class Unsqueeze0:
    def apply(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(1, *t.shape)

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (1, *shape)

    def describe(self, shape: tuple[int, ...]) -> str:
        return "unsqueeze(0)"

    def original_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape[1:]

    def put(self, dest: torch.Tensor, value: torch.Tensor) -> None:
        dest.copy_(value[0])


Op = Copy | Squeeze | HeadSplit | Third | Transpose | Unsqueeze0
COPY = Copy()


@dataclass(frozen=True)
class Source:
    """Where one of our tensors comes from in the original file."""

    key: str
    op: Op = COPY


# A leaf rule renames a parameter inside a block: (our leaf, original leaf, op).
# A leaf ending in "." is a prefix (it renames a sub-module and everything in it).
LeafRule = tuple[str, str, Op]
# A module rule: (our module prefix, original module prefix, leaf rules of that block kind).
ModuleRule = tuple[str, str, tuple[LeafRule, ...]]

KeyMap = dict[str, Source]


def build_key_map(our_keys: Iterable[str], rules: list[ModuleRule]) -> KeyMap:
    """Resolve every one of our keys through the longest matching module rule."""
    ordered = sorted(rules, key=lambda r: len(r[0]), reverse=True)
    key_map: KeyMap = {}
    for key in our_keys:
        for ours, orig, leaves in ordered:
            if key == ours.rstrip(".") or key.startswith(ours):
                leaf = key[len(ours) :] if key.startswith(ours) else ""
                key_map[key] = _resolve_leaf(orig, leaf, leaves)
                break
        else:
            key_map[key] = Source(key)
    return key_map


def _resolve_leaf(orig_prefix: str, leaf: str, leaves: tuple[LeafRule, ...]) -> Source:
    for ours, orig, op in leaves:
        if leaf == ours:
            return Source(orig_prefix + orig, op)
        if ours.endswith(".") and leaf.startswith(ours):
            return Source(orig_prefix + orig + leaf[len(ours) :], op)
    return Source(orig_prefix + leaf)


# ---------------------------------------------------------------------------- decoder UNet

_RES = (
    ("norm1.", "in_layers.0.", COPY),
    ("conv1.", "in_layers.2.", COPY),
    ("time_emb_proj.", "emb_layers.1.", COPY),
    ("norm2.", "out_layers.0.", COPY),
    ("conv2.", "out_layers.3.", COPY),
    ("conv_shortcut.", "skip_connection.", COPY),
)


def _glide_attention(head_dim: int) -> tuple[LeafRule, ...]:
    return (
        ("group_norm.", "norm.", COPY),
        ("to_q.", "qkv.", HeadSplit(3, 0, head_dim, ndim=3)),
        ("to_k.", "qkv.", HeadSplit(3, 1, head_dim, ndim=3)),
        ("to_v.", "qkv.", HeadSplit(3, 2, head_dim, ndim=3)),
        ("add_k_proj.", "encoder_kv.", HeadSplit(2, 0, head_dim, ndim=3)),
        ("add_v_proj.", "encoder_kv.", HeadSplit(2, 1, head_dim, ndim=3)),
        ("to_out.0.", "proj_out.", Squeeze(ndim=3)),
    )


def unet_rules(cfg: UNetConfig) -> list[ModuleRule]:
    """GLIDE numbering (input_blocks/middle_block/output_blocks) → diffusers blocks."""
    attn = _glide_attention(cfg.head_channels)
    n, levels = cfg.num_res_blocks, len(cfg.channel_mult)
    rules: list[ModuleRule] = [
        ("conv_in.", "input_blocks.0.0.", ()),
        ("time_embedding.linear_1.", "time_embed.0.", ()),
        ("time_embedding.linear_2.", "time_embed.2.", ()),
        ("encoder_hid_proj.image_embeds.", "clip_to_seq.", ()),
        ("encoder_hid_proj.text_proj.", "to_model_dim_n.", ()),
        ("add_embedding.text_proj.", "proj_n.", ()),
        ("add_embedding.text_norm.", "ln_model_n.", ()),
        ("add_embedding.image_proj.", "img_layer.", ()),
        ("mid_block.resnets.0.", "middle_block.0.", _RES),
        ("mid_block.attentions.0.", "middle_block.1.", attn),
        ("mid_block.resnets.1.", "middle_block.2.", _RES),
        ("conv_norm_out.", "out.0.", ()),
        ("conv_out.", "out.2.", ()),
    ]
    for level in range(levels):
        first = 1 + level * (n + 1)
        for j in range(n):
            rules.append(
                (f"down_blocks.{level}.resnets.{j}.", f"input_blocks.{first + j}.0.", _RES)
            )
            rules.append(
                (f"down_blocks.{level}.attentions.{j}.", f"input_blocks.{first + j}.1.", attn)
            )
        if level < levels - 1:
            rules.append(
                (f"down_blocks.{level}.downsamplers.0.", f"input_blocks.{first + n}.0.", _RES)
            )
    for k in range(levels):  # up_blocks.k runs at level levels-1-k
        has_attn = (levels - 1 - k) in cfg.attention_levels
        for j in range(n + 1):
            block = k * (n + 1) + j
            rules.append((f"up_blocks.{k}.resnets.{j}.", f"output_blocks.{block}.0.", _RES))
            rules.append((f"up_blocks.{k}.attentions.{j}.", f"output_blocks.{block}.1.", attn))
        if k < levels - 1:
            last = k * (n + 1) + n
            rules.append(
                (
                    f"up_blocks.{k}.upsamplers.0.",
                    f"output_blocks.{last}.{2 if has_attn else 1}.",
                    _RES,
                )
            )
    return rules


# ---------------------------------------------------------------------------- prior


def prior_rules(cfg: PriorConfig) -> list[ModuleRule]:
    """`model.`-prefixed original names → diffusers PriorTransformer; stats come separately."""
    block = (
        ("norm1.", "ln_1.", COPY),
        ("norm3.", "ln_2.", COPY),
        ("attn1.to_q.", "attn.c_qkv.", HeadSplit(3, 0, cfg.head_dim)),
        ("attn1.to_k.", "attn.c_qkv.", HeadSplit(3, 1, cfg.head_dim)),
        ("attn1.to_v.", "attn.c_qkv.", HeadSplit(3, 2, cfg.head_dim)),
        ("attn1.to_out.0.", "attn.c_proj.", COPY),
        ("ff.net.0.proj.", "mlp.c_fc.", COPY),
        ("ff.net.2.", "mlp.c_proj.", COPY),
    )
    rules: list[ModuleRule] = [
        ("time_embedding.linear_1.", "model.time_embed.0.", ()),
        ("time_embedding.linear_2.", "model.time_embed.2.", ()),
        ("proj_in.", "model.clip_img_proj.", ()),
        ("embedding_proj.", "model.text_emb_proj.", ()),
        ("encoder_hidden_states_proj.", "model.text_enc_proj.", ()),
        ("positional_embedding.", "model.positional_embedding", ()),
        ("prd_embedding.", "model.prd_emb", ()),
        ("norm_out.", "model.final_ln.", ()),
        ("proj_to_clip_embeddings.", "model.out_proj.", ()),
        ("clip_mean.", STATS_MEAN, (("", "", Unsqueeze0()),)),
        ("clip_std.", STATS_STD, (("", "", Unsqueeze0()),)),
    ]
    rules += [
        (f"transformer_blocks.{i}.", f"model.transformer.resblocks.{i}.", block)
        for i in range(cfg.num_layers)
    ]
    return rules


# Names under which `ViT-L-14_stats.th` (a (mean, std) pair) is offered to the key map.
STATS_MEAN = "clip_mean"
STATS_STD = "clip_std"


# ---------------------------------------------------------------------------- MoVQ

_VQ_RES = (("conv_shortcut.", "nin_shortcut.", COPY),)
_VQ_ATTN = (
    ("group_norm.", "norm.", COPY),
    ("spatial_norm.", "norm.", COPY),
    ("to_q.", "q.", Squeeze(ndim=4)),
    ("to_k.", "k.", Squeeze(ndim=4)),
    ("to_v.", "v.", Squeeze(ndim=4)),
    ("to_out.0.", "proj_out.", Squeeze(ndim=4)),
)


def movq_rules(cfg: MoVQConfig) -> list[ModuleRule]:
    """taming/MoVQ names → diffusers VQModel; decoder levels are stored in reverse order."""
    levels = len(cfg.widths)
    rules: list[ModuleRule] = []
    for side, mid in (("encoder", "encoder.mid."), ("decoder", "decoder.mid.")):
        rules += [
            (f"{side}.mid_block.resnets.0.", f"{mid}block_1.", _VQ_RES),
            (f"{side}.mid_block.attentions.0.", f"{mid}attn_1.", _VQ_ATTN),
            (f"{side}.mid_block.resnets.1.", f"{mid}block_2.", _VQ_RES),
            (f"{side}.conv_norm_out.", f"{side}.norm_out.", ()),
        ]
    for level in range(levels):
        rules += [
            (f"encoder.down_blocks.{level}.resnets.", f"encoder.down.{level}.block.", ()),
            (f"encoder.down_blocks.{level}.attentions.", f"encoder.down.{level}.attn.", ()),
            (
                f"encoder.down_blocks.{level}.downsamplers.0.",
                f"encoder.down.{level}.downsample.",
                (),
            ),
        ]
        orig = levels - 1 - level
        rules += [
            (f"decoder.up_blocks.{level}.resnets.", f"decoder.up.{orig}.block.", ()),
            (f"decoder.up_blocks.{level}.attentions.", f"decoder.up.{orig}.attn.", ()),
            (f"decoder.up_blocks.{level}.upsamplers.0.", f"decoder.up.{orig}.upsample.", ()),
        ]
    return _expand_numbered(rules, {"resnets.": _VQ_RES, "attentions.": _VQ_ATTN})


def _expand_numbered(
    rules: list[ModuleRule], leaf_by_kind: dict[str, tuple[LeafRule, ...]]
) -> list[ModuleRule]:
    """Turn `…resnets.` → `…block.` list renames into per-index rules carrying their leaf rules."""
    out: list[ModuleRule] = []
    for ours, orig, leaves in rules:
        kind = next((k for k in leaf_by_kind if ours.endswith(k)), None)
        if kind is None:
            out.append((ours, orig, leaves))
            continue
        out += [(f"{ours}{j}.", f"{orig}{j}.", leaf_by_kind[kind]) for j in range(_MAX_BLOCKS)]
    return out


_MAX_BLOCKS = 8  # more blocks per level than any MoVQ config uses


# ---------------------------------------------------------------------------- OpenAI CLIP

_CLIP_LAYER = (
    ("self_attn.q_proj.weight", "attn.in_proj_weight", Third(0)),
    ("self_attn.k_proj.weight", "attn.in_proj_weight", Third(1)),
    ("self_attn.v_proj.weight", "attn.in_proj_weight", Third(2)),
    ("self_attn.q_proj.bias", "attn.in_proj_bias", Third(0)),
    ("self_attn.k_proj.bias", "attn.in_proj_bias", Third(1)),
    ("self_attn.v_proj.bias", "attn.in_proj_bias", Third(2)),
    ("self_attn.out_proj.", "attn.out_proj.", COPY),
    ("layer_norm1.", "ln_1.", COPY),
    ("layer_norm2.", "ln_2.", COPY),
    ("mlp.fc1.", "mlp.c_fc.", COPY),
    ("mlp.fc2.", "mlp.c_proj.", COPY),
)


def clip_text_rules(num_layers: int) -> list[ModuleRule]:
    """OpenAI CLIP text tower (top-level names) → transformers CLIPTextModelWithProjection."""
    rules: list[ModuleRule] = [
        ("text_model.embeddings.token_embedding.", "token_embedding.", ()),
        ("text_model.embeddings.position_embedding.weight", "positional_embedding", ()),
        ("text_model.final_layer_norm.", "ln_final.", ()),
        ("text_projection.weight", "text_projection", (("", "", Transpose()),)),
    ]
    rules += [
        (f"text_model.encoder.layers.{i}.", f"transformer.resblocks.{i}.", _CLIP_LAYER)
        for i in range(num_layers)
    ]
    return rules


def clip_vision_rules(num_layers: int) -> list[ModuleRule]:
    """OpenAI CLIP `visual.*` → transformers CLIPVisionModelWithProjection."""
    rules: list[ModuleRule] = [
        ("vision_model.embeddings.class_embedding", "visual.class_embedding", ()),
        ("vision_model.embeddings.patch_embedding.", "visual.conv1.", ()),
        ("vision_model.embeddings.position_embedding.weight", "visual.positional_embedding", ()),
        ("vision_model.pre_layrnorm.", "visual.ln_pre.", ()),
        ("vision_model.post_layernorm.", "visual.ln_post.", ()),
        ("visual_projection.weight", "visual.proj", (("", "", Transpose()),)),
    ]
    rules += [
        (f"vision_model.encoder.layers.{i}.", f"visual.transformer.resblocks.{i}.", _CLIP_LAYER)
        for i in range(num_layers)
    ]
    return rules


def to_original(tensors: dict[str, torch.Tensor], key_map: KeyMap) -> dict[str, torch.Tensor]:
    """Our state dict back in the original layout (fused q/k/v, conv kernels, stats pair)."""
    out: dict[str, torch.Tensor] = {}
    for key, src in key_map.items():
        value = tensors[key]
        if src.key not in out:
            shape = src.op.original_shape(tuple(value.shape))
            out[src.key] = torch.empty(shape, dtype=value.dtype, device=value.device)
        src.op.put(out[src.key], value)
    return out


# Entries the original files may hold that no module needs (old buffers, TorchScript scalars).
IGNORED_ORIGINAL_KEYS = frozenset(
    {
        "transformer.embeddings.position_ids",
        "logit_scale",
        "input_resolution",
        "context_length",
        "vocab_size",
    }
)
