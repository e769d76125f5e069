"""Kandinsky 2.1 image prior: a causal transformer that denoises CLIP image embeddings.

Sequence (reference §3.3): `[77 text tokens | pooled text | time | x_t | prd]`, plus a learned
positional embedding; pre-LN blocks with a causal + text-padding mask; the final LN'd `prd`
token is projected to the x0 prediction in normalized CLIP space.

Attribute names reproduce the diffusers `PriorTransformer` state-dict keys, so both its files
and our own load without renaming (the original checkpoint is mapped in `checkpoints`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from kandinsky.config import PriorConfig
from kandinsky.models.embeddings import timestep_embedding


class TimeEmbedding(nn.Module):
    """Sinusoidal timestep features → Linear → SiLU → Linear (original `time_embed`)."""

    def __init__(self, width: int):
        super().__init__()
        self.linear_1 = nn.Linear(width, width)
        self.linear_2 = nn.Linear(width, width)

    def forward(self, t_features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(t_features)))


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v projections (original `c_qkv`, de-interleaved)."""

    def __init__(self, width: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.to_q = nn.Linear(width, width)
        self.to_k = nn.Linear(width, width)
        self.to_v = nn.Linear(width, width)
        self.to_out = nn.Sequential(nn.Linear(width, width))  # `to_out.0`: diffusers' key

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            heads(self.to_q(x)), heads(self.to_k(x)), heads(self.to_v(x)), attn_mask=mask
        )
        return self.to_out(out.transpose(1, 2).reshape(b, n, c))


class GELUProjection(nn.Module):
    """Linear followed by exact (erf) GELU, as in the original MLP `c_fc`."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(width, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x))


class FeedForward(nn.Module):
    """MLP width → 4·width → width; slot 1 is empty so keys read `net.0.proj` / `net.2`."""

    def __init__(self, width: int):
        super().__init__()
        self.net = nn.Sequential(
            GELUProjection(width, 4 * width), nn.Identity(), nn.Linear(4 * width, width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PriorBlock(nn.Module):
    """Pre-LN residual block: x += attn(ln_1(x)); x += mlp(ln_2(x))."""

    def __init__(self, width: int, num_heads: int, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=eps)
        self.attn1 = SelfAttention(width, num_heads)
        self.norm3 = nn.LayerNorm(
            width, eps=eps
        )  # `norm3`: diffusers skips norm2 (no cross-attention)
        self.ff = FeedForward(width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x), mask)
        return x + self.ff(self.norm3(x))


class Prior(nn.Module):
    """x0-predicting diffusion prior over normalized CLIP image embeddings."""

    def __init__(self, config: PriorConfig):
        super().__init__()
        self.config = config
        self.gradient_checkpointing = False
        w, d = config.width, config.clip_dim
        self.time_embedding = TimeEmbedding(w)
        self.proj_in = nn.Linear(d, w)  # noisy image embedding x_t
        self.embedding_proj = nn.Linear(d, w)  # pooled CLIP text embedding
        self.encoder_hidden_states_proj = nn.Linear(d, w)  # per-token CLIP text states
        self.positional_embedding = nn.Parameter(torch.empty(1, config.seq_len, w))
        self.prd_embedding = nn.Parameter(torch.empty(1, 1, w))
        self.transformer_blocks = nn.ModuleList(
            PriorBlock(w, config.num_heads, config.norm_eps) for _ in range(config.num_layers)
        )
        self.norm_out = nn.LayerNorm(w, eps=config.norm_eps)
        self.proj_to_clip_embeddings = nn.Linear(w, d)
        # Per-dimension CLIP image-embedding statistics (ViT-L-14_stats.th); parameters as in diffusers.
        self.clip_mean = nn.Parameter(torch.zeros(1, d))
        self.clip_std = nn.Parameter(torch.ones(1, d))
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.prd_embedding, std=0.01)

    def normalize(self, image_embeds: torch.Tensor) -> torch.Tensor:
        return (image_embeds - self.clip_mean) / self.clip_std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.clip_std + self.clip_mean

    def attention_mask(self, text_mask: torch.Tensor) -> torch.Tensor:
        """Boolean (B, 1, L, L), True = may attend: causal AND key is a real token or an extra token."""
        b, n = text_mask.shape[0], self.config.seq_len
        extra = text_mask.new_ones(b, self.config.num_extra_tokens)
        keys = torch.cat([text_mask.bool(), extra], dim=1)[:, None, None, :]
        causal = torch.ones(n, n, dtype=torch.bool, device=text_mask.device).tril()
        eye = torch.eye(n, dtype=torch.bool, device=text_mask.device)
        # Padded queries also see themselves, so no row is fully masked (NaN); they never reach `prd`.
        return causal & (keys | eye)

    def _without_padding_columns(
        self, h: torch.Tensor, mask: torch.Tensor, text_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Drop the text positions that are padding in every row of the batch.

        Such a position is a key for no other token and its own output never reaches `prd`, so
        the result is the same (positions keep their own positional embedding, order is kept);
        short captions in a 77-token context then cost what their length costs.
        """
        extra = text_mask.new_ones(self.config.num_extra_tokens, dtype=torch.bool)
        keep = torch.cat([text_mask.bool().any(0), extra])
        if bool(keep.all()):
            return h, mask
        index = keep.nonzero().squeeze(1)
        return h[:, index], mask[:, :, index][:, :, :, index]

    def forward(
        self,
        x_t: torch.Tensor,
        timesteps: torch.Tensor | int,
        pooled_text: torch.Tensor,
        text_states: torch.Tensor,
        text_mask: torch.Tensor,
    ) -> torch.Tensor:
        """x0 prediction (B, clip_dim) in normalized space; `timesteps` are original steps 0..999."""
        b, dtype = x_t.shape[0], self.proj_in.weight.dtype
        t = torch.as_tensor(timesteps, device=x_t.device).reshape(-1).expand(b)
        # Sinusoids in fp32 (large t·f), then cast to the module dtype.
        t_emb = self.time_embedding(timestep_embedding(t, self.config.width).to(dtype))
        tokens = torch.cat(
            [
                self.encoder_hidden_states_proj(text_states.to(dtype)),
                self.embedding_proj(pooled_text.to(dtype))[:, None],
                t_emb[:, None],
                self.proj_in(x_t.to(dtype))[:, None],
                self.prd_embedding.expand(b, -1, -1),
            ],
            dim=1,
        )
        h = tokens + self.positional_embedding
        mask = self.attention_mask(text_mask)
        h, mask = self._without_padding_columns(h, mask, text_mask)
        for block in self.transformer_blocks:
            if self.gradient_checkpointing and self.training:
                h = checkpoint(block, h, mask, use_reentrant=False)
            else:
                h = block(h, mask)
        # The prd (last) token has seen the whole sequence; final LN is per token, so LN it alone.
        return self.proj_to_clip_embeddings(self.norm_out(h[:, -1]))
