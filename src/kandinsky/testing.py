"""Tiny random-weight models in the real file layouts, for tests and for trying things offline.

`write_original_layout(folder)` writes the files of the original release
(`decoder_fp16.ckpt`, `inpainting_fp16.ckpt`, `prior_fp16.ckpt`, `ViT-L-14_stats.th`,
`movq_final.ckpt`, `text_encoder/`, plus an OpenAI-style `ViT-L-14.pt` for CLIP) with the
structure of `config` (default `TINY`) and random weights; `random_networks` gives the same
networks in memory. The tokenizers are tiny but real (trained with `tokenizers`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from kandinsky.checkpoints.layouts import NETWORKS
from kandinsky.checkpoints.original import STATS_MEAN, STATS_STD, to_original
from kandinsky.config import TINY, ModelConfig

CORPUS = [
    "a red circle on the left of a blue square",
    "красный круг слева от синего квадрата",
    "a green triangle at the top, yellow background",
    "зелёный треугольник сверху на жёлтом фоне",
    "a photo of a cat in the style of van gogh",
    "two stars and a small purple square",
]


def randomize_(module: nn.Module, seed: int, std: float = 0.05) -> nn.Module:
    """Random weights everywhere (zero-initialised output layers included), norms near 1."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=generator) * std
            is_norm_scale = name.endswith("weight") and param.ndim == 1
            param.copy_(noise + 1.0 if is_norm_scale else noise)
    return module


def random_networks(config: ModelConfig = TINY, seed: int = 0) -> dict[str, nn.Module]:
    """Every network of `config`, randomly initialised, in eval mode."""
    from kandinsky.loading import build_network

    networks = {}
    for i, name in enumerate(NETWORKS):
        module = randomize_(build_network(name, config), seed + i)
        if name == "prior":  # realistic stats: std must stay positive
            with torch.no_grad():
                module.clip_std.abs_().add_(0.5)
        networks[name] = module.eval()
    return networks


def write_original_layout(
    folder: str | Path,
    config: ModelConfig = TINY,
    seed: int = 0,
    networks: dict[str, nn.Module] | None = None,
) -> dict[str, nn.Module]:
    """Write every file of the original release (random weights) and return the networks used."""
    from kandinsky.loading import original_key_map

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    networks = networks or random_networks(config, seed)

    def original(name: str) -> dict[str, torch.Tensor]:
        state = networks[name].state_dict()
        return to_original(state, original_key_map(name, config, state))

    torch.save(_half_convs(original("unet")), folder / "decoder_fp16.ckpt")
    torch.save(_half_convs(original("inpaint_unet")), folder / "inpainting_fp16.ckpt")
    prior = original("prior")
    torch.save((prior.pop(STATS_MEAN), prior.pop(STATS_STD)), folder / "ViT-L-14_stats.th")
    torch.save({k: v.half() for k, v in prior.items()}, folder / "prior_fp16.ckpt")
    torch.save(original("movq"), folder / "movq_final.ckpt")
    clip = {**original("clip_text"), **original("clip_vision")}
    clip["logit_scale"] = torch.tensor(4.6052)
    torch.save(clip, folder / "ViT-L-14.pt")

    text_dir = folder / "text_encoder"
    text_dir.mkdir(exist_ok=True)
    torch.save(networks["text_encoder"].state_dict(), text_dir / "pytorch_model.bin")
    from kandinsky.checkpoints.diffusers_text import mclip_to_json

    (text_dir / "config.json").write_text(json.dumps(mclip_to_json(config.text_encoder), indent=2))
    xlmr_tokenizer(config.text_encoder.vocab_size).save_pretrained(str(text_dir))
    return networks


def _half_convs(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Like the released *_fp16.ckpt: convolution kernels in fp16, the rest fp32."""
    return {k: v.half() if v.ndim >= 3 else v for k, v in state.items()}


def xlmr_tokenizer(vocab_size: int = 1000, corpus: list[str] = CORPUS):
    """A tiny XLM-R style tokenizer (Unigram, <s>=0 <pad>=1 </s>=2 <unk>=3, max length 77)."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    trainer = trainers.UnigramTrainer(
        vocab_size=min(vocab_size - 1, 200),
        special_tokens=specials,
        unk_token="<unk>",
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    tok.add_special_tokens(["<mask>"])
    return as_xlmr_tokenizer(tok)


def as_xlmr_tokenizer(tok):
    """A `tokenizers.Tokenizer` with XLM-R's specials (<s>=0 … </s>=2) as XLMRobertaTokenizerFast:
    `<s> text </s>` framing, max length 77 (the M-CLIP context)."""
    from tokenizers import processors
    from transformers import XLMRobertaTokenizerFast

    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    return XLMRobertaTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=77,
    )


def clip_tokenizer(folder: str | Path):
    """A tiny CLIP BPE tokenizer over bytes (no merges), pads with '!' (id 0) like Kandinsky's."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = byte_symbols()
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(
        json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False)
    )
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(
        vocab_file=str(folder / "vocab.json"),
        merges_file=str(folder / "merges.txt"),
        pad_token="!",
        model_max_length=77,
    )


def byte_symbols() -> list[str]:
    """GPT-2/CLIP byte-level BPE alphabet: printable bytes as themselves, the rest shifted past 255."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    symbols = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + shift)
            shift += 1
    return [symbols[b] for b in printable] + [symbols[b] for b in range(256) if b not in printable]


def write_tiny_model(folder: str | Path, config: ModelConfig = TINY, seed: int = 0) -> Path:
    """A complete tiny model in the diffusers layout (all three pipelines, both tokenizers).

    Random weights: the pictures are noise, but every mode, the CLI and the server run on it
    exactly as on the real model. Returns `folder`.
    """
    import tempfile

    from kandinsky.conversion import convert

    folder = Path(folder)
    with tempfile.TemporaryDirectory() as tmp:
        original = Path(tmp) / "original"
        write_original_layout(original, config, seed=seed)
        prior_tokenizer = write_clip_tokenizer_folder(Path(tmp) / "clip")
        return convert([original, prior_tokenizer], folder, config=config)


def write_clip_tokenizer_folder(folder: str | Path) -> Path:
    """A partial diffusers prior folder holding only the CLIP tokenizer (the original release
    has none: OpenAI's package tokenized); add it as a second source when converting."""
    import shutil

    folder = Path(folder)
    clip_tokenizer(folder / "vocab").save_pretrained(str(folder / "tokenizer"))
    shutil.rmtree(folder / "vocab")
    (folder / "model_index.json").write_text(
        json.dumps({"tokenizer": ["transformers", "CLIPTokenizer"]})
    )
    return folder


def write_random_model(
    folder: str | Path,
    config: ModelConfig = TINY,
    *,
    seed: int = 0,
    components: Iterable[str] | None = None,
    device: str | torch.device = "cpu",
) -> Path:
    """Every network of `config` with its own default initialisation, straight into the
    diffusers layout, with the tiny test tokenizers. Returns `folder`.

    Unlike `write_tiny_model` (which goes through the original layout and `convert`), this
    writes each network once and links it into the other pipelines that share it, and it
    builds the networks on `device` (a GPU initialises the released sizes in seconds): the
    structure of the released model for benchmarks, where the values do not matter.
    """
    import os
    import shutil
    import tempfile

    from kandinsky.conversion import save_network, write_pipelines
    from kandinsky.loading import build_network

    folder = Path(folder)
    present = (
        list(components) if components is not None else [*NETWORKS, "tokenizer", "clip_tokenizer"]
    )
    written: dict[str, Path] = {}

    def write(name: str, sub: Path) -> None:
        if name in written:  # the same network in a second pipeline: link its files
            shutil.copytree(written[name], sub, copy_function=os.link)
            return
        if name == "tokenizer":
            xlmr_tokenizer(config.text_encoder.vocab_size).save_pretrained(str(sub))
        elif name == "clip_tokenizer":
            with tempfile.TemporaryDirectory() as tmp:
                clip_tokenizer(tmp).save_pretrained(str(sub))
        else:
            with torch.random.fork_rng(devices=[]), torch.device(device):
                torch.manual_seed(seed + NETWORKS.index(name))
                module = build_network(name, config)
            save_network(name, module.cpu(), config, sub)
            del module
        written[name] = sub

    folder.mkdir(parents=True, exist_ok=True)
    write_pipelines(folder, present, config, write)
    return folder
