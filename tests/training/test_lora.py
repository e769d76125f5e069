"""LoRA adapters: they change the output once trained, save small, reload exactly, scale to 0."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from kandinsky.config import TINY
from kandinsky.errors import CorruptWeights, InvalidInput, MissingWeights
from kandinsky.loading import build_network
from kandinsky.testing import randomize_, write_tiny_model
from kandinsky.training.lora import (
    PRIOR_TARGETS,
    UNET_TARGETS,
    LoRAInfo,
    add_lora,
    has_lora,
    load_lora,
    lora_state_dict,
    parse_lora_argument,
    read_lora,
    remove_lora,
    save_lora,
    set_lora_scale,
)


def tiny_unet(seed: int = 0) -> torch.nn.Module:
    # frozen like a loaded network: requires_grad alone can change which CPU kernel runs
    return randomize_(build_network("unet", TINY), seed).eval().requires_grad_(False)


def unet_inputs() -> tuple:
    g = torch.Generator().manual_seed(1)
    cfg = TINY.unet
    x = torch.randn(2, 4, 8, 8, generator=g)
    image = torch.randn(2, cfg.image_embed_dim, generator=g)
    states = torch.randn(2, 5, cfg.text_dim, generator=g)
    pooled = torch.randn(2, cfg.pooled_text_dim, generator=g)
    return x, torch.tensor([10.0, 500.0]), image, states, pooled


@torch.no_grad()
def run(unet: torch.nn.Module, inputs: tuple) -> torch.Tensor:
    x, t, image, states, pooled = inputs
    return unet(x, t, unet.condition(image, states, pooled))


def train_adapter(unet: torch.nn.Module, inputs: tuple, steps: int = 5) -> None:
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    x, t, image, states, pooled = inputs
    target = torch.randn(2, 8, 8, 8, generator=torch.Generator().manual_seed(2))
    for _ in range(steps):
        loss = (unet(x, t, unet.condition(image, states, pooled)) - target).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor, torch.Tensor]:
    """An adapter trained on the tiny UNet: (file, base output, adapted output)."""
    inputs = unet_inputs()
    unet = tiny_unet()
    base = run(unet, inputs)
    add_lora(unet, rank=4, alpha=8, targets=UNET_TARGETS)
    torch.testing.assert_close(run(unet, inputs), base, rtol=0, atol=0)  # B starts at zero
    unet.train()
    train_adapter(unet, inputs)
    unet.eval().requires_grad_(False)
    adapted = run(unet, inputs)
    path = save_lora(
        unet, tmp_path_factory.mktemp("lora") / "a.safetensors", LoRAInfo("unet", 4, 8.0)
    )
    return path, base, adapted


def test_only_the_adapter_trains_and_it_changes_the_output(trained):
    _, base, adapted = trained
    assert (adapted - base).abs().max() > 1e-3
    unet = add_lora(tiny_unet(), rank=2)
    names = [n for n, p in unet.named_parameters() if p.requires_grad]
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    layers = {n.rsplit(".lora_", 1)[0].rsplit(".", 1)[-1] for n in names}
    assert layers == {"to_q", "to_k", "to_v", "0", "add_k_proj", "add_v_proj"}


def test_the_saved_adapter_is_small_and_describes_itself(trained):
    path, _, _ = trained
    base_bytes = sum(v.numel() * 4 for v in tiny_unet().state_dict().values())
    assert path.stat().st_size < 0.05 * base_bytes
    info, tensors = read_lora(path)
    assert info == LoRAInfo("unet", 4, 8.0, UNET_TARGETS, "")
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in tensors)


def test_reloading_gives_identical_outputs_and_scale_zero_gives_the_base(trained):
    path, base, adapted = trained
    inputs = unet_inputs()
    unet = tiny_unet()
    info = load_lora(unet, path)
    assert info.rank == 4
    assert torch.equal(run(unet, inputs), adapted)
    set_lora_scale(unet, 0.0)
    assert torch.equal(run(unet, inputs), base)
    set_lora_scale(unet, 0.5)
    half = run(unet, inputs)
    assert not torch.equal(half, base) and not torch.equal(half, adapted)
    load_lora(unet, path, scale=0.0)  # loading again replaces the adapter
    assert torch.equal(run(unet, inputs), base)


def test_removing_the_adapter_restores_the_original_layers(trained):
    path, base, _ = trained
    unet = tiny_unet()
    keys = list(unet.state_dict())
    load_lora(unet, path)
    assert has_lora(unet)
    remove_lora(unet)
    assert not has_lora(unet) and list(unet.state_dict()) == keys
    assert torch.equal(run(unet, unet_inputs()), base)


def test_prior_adapters_use_the_prior_attention():
    prior = randomize_(build_network("prior", TINY), 0)
    add_lora(prior, rank=2, targets=PRIOR_TARGETS)
    assert len(lora_state_dict(prior)) == 2 * 4 * TINY.prior.num_layers
    with pytest.raises(InvalidInput, match="already"):
        add_lora(prior)
    with pytest.raises(InvalidInput, match="no layer"):
        add_lora(build_network("prior", TINY), targets=("add_k_proj",))


def test_bad_files_are_refused(trained, tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(MissingWeights):
        read_lora(tmp_path / "nope.safetensors")
    save_file({"x": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CorruptWeights, match="no Kandinsky LoRA metadata"):
        read_lora(tmp_path / "plain.safetensors")
    path, _, _ = trained
    prior = build_network("prior", TINY)
    with pytest.raises(CorruptWeights, match="does not fit"):
        load_lora(prior, path)  # a UNet adapter on the prior
    assert not has_lora(prior)


def test_cli_argument_parsing():
    assert parse_lora_argument("style.safetensors") == ("style.safetensors", 1.0)
    assert parse_lora_argument("out/final/lora.safetensors:0.6") == (
        "out/final/lora.safetensors",
        0.6,
    )
    assert parse_lora_argument("C:\\loras\\a.safetensors") == ("C:\\loras\\a.safetensors", 1.0)


def test_pipeline_loads_and_unloads_an_adapter(trained, tmp_path):
    from kandinsky.pipeline import Kandinsky21

    path, _, _ = trained
    folder = write_tiny_model(tmp_path / "model")
    pipe = Kandinsky21.from_pretrained(folder)
    unet = pipe.parts.unet
    original = copy.deepcopy(unet.state_dict())

    def image() -> torch.Tensor:
        result = pipe.text2img(
            "a cat", seed=0, height=64, width=64, num_steps=2, prior_steps=2, output_type="pt"
        )
        return result.pixels

    before = image()
    pipe.load_lora(path, scale=0.0)
    assert has_lora(unet)
    assert torch.equal(image(), before)
    pipe.load_lora(path, scale=1.0)
    assert not torch.equal(image(), before)
    pipe.unload_lora()
    assert not has_lora(unet)
    assert unet.state_dict().keys() == original.keys()
    assert torch.equal(image(), before)
