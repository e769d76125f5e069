"""`kandinsky convert / info / selftest` end to end in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kandinsky.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_convert_command_writes_a_loadable_folder(tiny_original, tmp_path: Path) -> None:
    out = tmp_path / "converted"
    result = run(
        "convert",
        str(tiny_original[0]),
        str(out),
        "--config",
        "tiny",
        "--components",
        "unet",
        "movq",
        "--dtype",
        "fp16",
    )
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout

    info = run("info", "--model", str(out))
    assert info.returncode == 0, info.stderr
    assert "unet" in info.stdout and "movq" in info.stdout and "diffusers" in info.stdout


def test_failure_is_one_line_with_exit_code_1(tmp_path: Path) -> None:
    result = run("convert", str(tmp_path / "missing"), str(tmp_path / "out"))
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error:") and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_usage_exits_2() -> None:
    assert run("convert").returncode == 2
    assert run().returncode == 2


def test_selftest_round_trip_and_modes_pass(tmp_path: Path) -> None:
    result = run("selftest", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "DIFFERENT" not in result.stdout and result.stdout.count("params  identical") == 7
    modes = ("text2img", "mix", "variations", "img2img", "inpaint", "outpaint")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{m}-00000.png" for m in modes)
