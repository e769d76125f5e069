"""The shipped demo model (src/kandinsky/demo/weights): it loads offline, keeps drawing what it
drew when it was shipped (docs/demo/report.md), and the README's main command draws what its
prompt names."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from kandinsky.demo import evaluate as ev
from kandinsky.demo.config import DEMO
from kandinsky.demo.judge import Judge
from kandinsky.demo.train import MAX_WEIGHTS_BYTES, PACKAGE_JUDGE, PACKAGE_WEIGHTS
from kandinsky.pipeline import Kandinsky21

ROOT = Path(__file__).resolve().parents[2]

# The quick gate table (16 prompts per group, seed 0) of the weights as shipped (run 14, at the
# sampling settings its generation_defaults.json names: prior guidance 2, decoder guidance
# 2.5, 25 steps), one prompt's worth (1/16) below, for float drift between machines. A
# regression here means the weights, their settings or the generation code changed what the
# model draws. At 16 prompts every gate passes; at 64 (docs/demo/report.md) mixing is one
# prompt short. These floors are not the gates.
SHIPPED_FLOORS = {
    "text2img EN 1-object adherence": 0.9375 - 1 / 16,
    "text2img EN 2-object adherence": 0.75 - 1 / 16,
    "inpaint masked region adherence": 0.875 - 1 / 16,
    "outpaint new region adherence": 0.8125 - 1 / 16,
    "variations keep kind/colour/background": 0.958 - 1 / 16,
    "mix: both objects or a blend": 0.875 - 1 / 16,
}
# gates the shipped model passes with a prompt to spare at 16 prompts, which must keep passing
# (EN one and two objects and outpainting pass at 16 with none to spare, so one flipped image
# would fail them: their floors above guard them; the EN-RU gap for one object is one prompt,
# 0.0625, at 16: too coarse here)
PASSING = (
    "text2img EN-RU gap, 2-object",
    "inpaint unmasked change (max, /255)",
    "inpaint masked region adherence",
    "outpaint seam excess (mean abs step, /255)",
    "variations keep kind/colour/background",
    "mix: both objects or a blend",
)


def test_shipped_demo_weights_are_fp16_safetensors_within_the_budget():
    files = [f for f in PACKAGE_WEIGHTS.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= MAX_WEIGHTS_BYTES
    weights = [f for f in files if f.suffix == ".safetensors"]
    assert len(weights) == 9  # prior, CLIP ×2, UNet, inpaint UNet, MoVQ ×2, M-CLIP ×2
    from safetensors import safe_open

    for f in weights:
        with safe_open(f, "pt") as st:
            dtypes = {st.get_slice(k).get_dtype() for k in st.keys()}  # noqa: SIM118
        assert dtypes <= {"F16", "I64"}, (f, dtypes)


@pytest.mark.slow
def test_shipped_demo_model_keeps_its_measured_quality(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    pipe = Kandinsky21.demo()
    assert pipe.parts.config.unet == DEMO.unet
    rows = ev.evaluate(pipe, Judge.load(PACKAGE_JUDGE), n_prompts=16, seed=0, untrained=False)
    table = ev.format_table(rows)
    by_name = {r["name"]: r for r in rows}
    for name, floor in SHIPPED_FLOORS.items():
        assert by_name[name]["value"] >= floor - 1e-9, f"{name} fell below {floor}\n{table}"
    for name in PASSING:
        assert by_name[name]["passed"], f"{name} stopped passing\n{table}"


def _readme_main_command() -> list[str]:
    """The `kandinsky generate …` part of the README's main set-up command, as argv."""
    import shlex

    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    main = next(b.strip() for b in blocks if "venv" in b and "pytest" not in b)
    last = main.split("&&")[-1].strip()
    argv = shlex.split(last)
    assert argv[0].endswith("kandinsky") and argv[1] == "generate", last
    return argv[1:]


def test_readme_main_command_draws_a_red_circle_left_of_a_blue_square(tmp_path):
    args = _readme_main_command()
    assert "--model" in args and args[args.index("--model") + 1] == "demo"
    result = subprocess.run(
        [sys.executable, "-m", "kandinsky.cli", *args, "--out", str(tmp_path), "--no-progress"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (png,) = tmp_path.glob("*.png")
    image = Image.open(png).convert("RGB")
    assert image.size == (64, 64)  # the demo model's native size
    (seen,) = Judge.load(PACKAGE_JUDGE).predict([image])
    # "слева от" allows (left, center), (left, right) and (center, right), as the data does.
    # The kinds are the model's open gap (docs/demo/README.md): the README's seed is one of
    # the 53 of 64 at which the judge sees both right (run 14 at its own sampling settings).
    drawn = {(s.kind, s.color): s.position for s in seen.shapes}
    row = ("left", "center", "right")
    assert set(drawn) == {("circle", "red"), ("square", "blue")}, seen
    assert row.index(drawn[("circle", "red")]) < row.index(drawn[("square", "blue")]), seen
