"""M-CLIP, the decoder's text encoder: XLM-RoBERTa-Large + masked-mean pooling + a linear head.

The UNet reads both outputs: every token's hidden state (all positions, pads included,
exactly as XLM-R computes them) and the pooled vector.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import XLMRobertaConfig, XLMRobertaModel

from kandinsky.config import TextEncoderConfig


def xlm_roberta_config(cfg: TextEncoderConfig) -> XLMRobertaConfig:
    return XLMRobertaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings,
        pad_token_id=cfg.pad_token_id,
        bos_token_id=0,
        eos_token_id=2,
        type_vocab_size=1,
        layer_norm_eps=cfg.layer_norm_eps,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


class MultilingualCLIP(nn.Module):
    """Attribute names match the released file (`transformer.*`, `LinearTransformation.*`)."""

    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.config = config
        self.transformer = XLMRobertaModel(xlm_roberta_config(config), add_pooling_layer=True)
        self.LinearTransformation = nn.Linear(config.hidden_size, config.out_dim)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (`text_states` (N, L, hidden), `pooled_text` (N, out_dim))."""
        states = self.transformer(
            input_ids=input_ids, attention_mask=attention_mask
        ).last_hidden_state
        mask = attention_mask.to(states.dtype).unsqueeze(-1)
        mean = (states * mask).sum(dim=1) / mask.sum(
            dim=1
        )  # real tokens only, <s> and </s> included
        return states, self.LinearTransformation(mean)
