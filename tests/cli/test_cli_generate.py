"""Every generation subcommand end to end in a subprocess, on the tiny model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FAST = ["--height", "64", "--width", "64", "--steps", "2", "--prior-steps", "2", "--no-progress"]


def kandinsky(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kandinsky.cli", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("inputs")
    gradient = np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None].repeat(64, 0).repeat(3, 2)
    Image.fromarray(gradient).save(folder / "photo.png")
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[:, 32:] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    (folder / "prompts.txt").write_text(
        "a red circle\n# a comment\n\nсиний квадрат\n", encoding="utf-8"
    )
    return {
        "photo": folder / "photo.png",
        "mask": folder / "mask.png",
        "prompts": folder / "prompts.txt",
    }


def pngs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.png"))


def test_generate_writes_numbered_pngs_and_never_overwrites(tiny_diffusers, tmp_path) -> None:
    for _ in range(2):
        result = kandinsky(
            "generate",
            "a red circle",
            "--model",
            str(tiny_diffusers),
            "-n",
            "2",
            "--seed",
            "3",
            "--out",
            str(tmp_path),
            *FAST,
        )
        assert result.returncode == 0, result.stderr
    files = pngs(tmp_path)
    assert [f.name for f in files] == [f"kandinsky-0000{i}.png" for i in range(4)]
    assert Image.open(files[0]).size == (64, 64)
    assert "Seed: 3" in Image.open(files[0]).text["parameters"]


def test_generate_from_png_reproduces_the_same_pixels(tiny_diffusers, tmp_path) -> None:
    first = kandinsky(
        "generate",
        "a blue square",
        "--model",
        str(tiny_diffusers),
        "-n",
        "2",
        "--out",
        str(tmp_path),
        *FAST,
    )
    assert first.returncode == 0, first.stderr
    source = pngs(tmp_path)[1]
    again = kandinsky(
        "generate",
        "--from",
        str(source),
        "--model",
        str(tiny_diffusers),
        "--out",
        str(tmp_path / "again"),
        "--no-progress",
    )
    assert again.returncode == 0, again.stderr
    copy = pngs(tmp_path / "again")[0]
    assert np.array_equal(np.asarray(Image.open(source)), np.asarray(Image.open(copy)))


def test_prompts_file_runs_each_line(tiny_diffusers, inputs, tmp_path) -> None:
    result = kandinsky(
        "generate",
        "--prompts",
        str(inputs["prompts"]),
        "--model",
        str(tiny_diffusers),
        "--out",
        str(tmp_path),
        *FAST,
    )
    assert result.returncode == 0, result.stderr
    assert len(pngs(tmp_path)) == 2


@pytest.mark.parametrize(
    ("command", "extra", "size"),
    [
        (
            "mix",
            ["{photo}", "in the style of van gogh", "--weights", "0.5", "0.5", *FAST],
            (64, 64),
        ),
        ("vary", ["{photo}", "-n", "2", *FAST], (64, 64)),
        ("img2img", ["{photo}", "a cat", "--strength", "0.5", *FAST], (64, 64)),
        ("inpaint", ["{photo}", "{mask}", "a hat", *FAST], (64, 64)),
        (
            "outpaint",
            [
                "{photo}",
                "a beach",
                "--extend",
                "0",
                "0",
                "64",
                "0",
                "--steps",
                "2",
                "--prior-steps",
                "2",
                "--no-progress",
            ],
            (128, 64),
        ),
    ],
)
def test_each_mode_subcommand_writes_images(
    tiny_diffusers, inputs, tmp_path, command, extra, size
) -> None:
    args = [a.format(photo=inputs["photo"], mask=inputs["mask"]) for a in extra]
    result = kandinsky(
        command, *args, "--model", str(tiny_diffusers), "--out", str(tmp_path), "--seed", "1"
    )
    assert result.returncode == 0, result.stderr
    files = pngs(tmp_path)
    assert files and all(Image.open(f).size == size for f in files)


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["generate", "x", "--steps", "0"], "num_steps", 2),
        (["generate", "x", "--height", "100"], "height", 2),
        (["generate", "x", "--sampler", "magic"], "sampler", 2),
        (["vary", "missing.png"], "not found", 2),
        (["mix", "typo.png", "x", "--weights", "0.5", "0.5"], "typo.png", 2),
        (["generate", "--from", "missing.png"], "missing.png", 2),
        (["generate", "x", "--model", "demo-missing"], "demo-missing", 1),
    ],
)
def test_bad_input_is_one_line_with_its_exit_code(
    tiny_diffusers, tmp_path, args, message, code
) -> None:
    model = [] if "--model" in args else ["--model", str(tiny_diffusers)]
    result = kandinsky(*args, *model, "--out", str(tmp_path), "--no-progress")
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]


def test_missing_arguments_exit_2() -> None:
    assert kandinsky("inpaint", "only-image.png").returncode == 2
    assert kandinsky("outpaint", "img.png", "prompt").returncode == 2  # needs --extend or --size


def test_lora_flag_applies_the_adapter_and_is_recorded(tiny_diffusers, tmp_path) -> None:
    from kandinsky import load
    from kandinsky.testing import randomize_
    from kandinsky.training.lora import LoRAInfo, add_lora, lora_layers, save_lora

    unet = load(tiny_diffusers, components=["unet"]).unet
    add_lora(unet, rank=2)
    for layer in lora_layers(unet).values():  # a non-zero adapter, so it changes the output
        randomize_(layer, seed=0, std=0.5)
    adapter = save_lora(unet, tmp_path / "style.safetensors", LoRAInfo(network="unet", rank=2))
    base = kandinsky(
        "generate",
        "a star",
        "--model",
        str(tiny_diffusers),
        "--seed",
        "1",
        "--out",
        str(tmp_path / "base"),
        *FAST,
    )
    styled = kandinsky(
        "generate",
        "a star",
        "--model",
        str(tiny_diffusers),
        "--seed",
        "1",
        "--lora",
        f"{adapter}:0.8",
        "--out",
        str(tmp_path / "lora"),
        *FAST,
    )
    assert base.returncode == 0 and styled.returncode == 0, styled.stderr
    a, b = (pngs(tmp_path / name)[0] for name in ("base", "lora"))
    assert not np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    assert f"{adapter}" in Image.open(b).text["kandinsky"]
