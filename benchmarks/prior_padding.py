"""One full-size prior forward (batch 2: prompt + empty negative, as one guided step) for a
short prompt against a prompt that fills the 77-token context, random weights, fp32 CPU.

The prior drops the text positions that are padding in every row of the batch, so a short
prompt costs its length. Usage: python benchmarks/prior_padding.py [--tokens 12] [--repeats 3]
Writes benchmarks/results/prior_padding.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from kandinsky.config import KANDINSKY_2_1
from kandinsky.models.prior import Prior


def forward_seconds(prior: Prior, tokens: int, repeats: int) -> float:
    cfg = prior.config
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(2, cfg.text_ctx, dtype=torch.bool)
    mask[0, :tokens] = True
    mask[1, :2] = True  # the empty negative prompt: start and end tokens
    args = (
        torch.randn(2, cfg.clip_dim, generator=g),
        torch.tensor([500, 500]),
        torch.randn(2, cfg.clip_dim, generator=g),
        torch.randn(2, cfg.text_ctx, cfg.clip_dim, generator=g),
        mask,
    )
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            prior(*args)
            best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=12, help="the short prompt's CLIP tokens")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    prior = Prior(KANDINSKY_2_1.prior).eval()
    full = KANDINSKY_2_1.prior.text_ctx
    short_s = forward_seconds(prior, args.tokens, args.repeats)
    full_s = forward_seconds(prior, full, args.repeats)
    result = {
        "threads": torch.get_num_threads(),
        "short_tokens": args.tokens,
        "short_seconds": round(short_s, 3),
        "full_tokens": full,
        "full_seconds": round(full_s, 3),
        "speedup": round(full_s / short_s, 2),
    }
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "prior_padding.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "prior_padding.md").write_text(
        "| prompt | tokens | prior forward (batch 2, fp32 CPU, best of "
        f"{args.repeats}) |\n|---|---:|---:|\n"
        f"| short | {args.tokens} | {short_s:.2f} s |\n| fills the context | {full} | {full_s:.2f} s |\n"
        f"\n{result['threads']} threads; the short prompt is {result['speedup']}× faster.\n"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
