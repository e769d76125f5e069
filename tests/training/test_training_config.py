"""Run configs: YAML/TOML files, typed `KEY=VALUE` overrides, the `kandinsky train` command."""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import pytest
import torch

from kandinsky.errors import InvalidInput
from kandinsky.training.config import TrainConfig, load_config

YAML = """
task: decoder
model: scratch:tiny
output_dir: runs/a
data:
  source: images/
  image_size: 128
  buckets: true
optim:
  name: adamw
  lr: 1.0e-4
  betas: [0.9, 0.95]
  schedule: cosine
  warmup_steps: 10
batch_size: 4
ema_decay: 0.999
sample_prompts: [a red cat, a blue dog]
task_options:
  drop_text_prob: 0.5
"""

TOML = """
task = "decoder"
model = "scratch:tiny"
output_dir = "runs/a"
batch_size = 4
ema_decay = 0.999
sample_prompts = ["a red cat", "a blue dog"]

[data]
source = "images/"
image_size = 128
buckets = true

[optim]
name = "adamw"
lr = 1e-4
betas = [0.9, 0.95]
schedule = "cosine"
warmup_steps = 10

[task_options]
drop_text_prob = 0.5
"""


def test_yaml_and_toml_load_the_same_config(tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_text(YAML)
    (tmp_path / "run.toml").write_text(TOML)
    from_yaml = load_config(tmp_path / "run.yaml")
    from_toml = load_config(tmp_path / "run.toml")
    assert from_yaml == from_toml
    assert from_yaml.optim.betas == (0.9, 0.95)
    assert from_yaml.optim.lr == 1e-4 and from_yaml.data.buckets is True
    assert from_yaml.task_options == {"drop_text_prob": 0.5}


def test_defaults_are_the_original_recipe(tmp_path: Path) -> None:
    cfg = load_config(None, ["task=prior", "model=scratch:tiny", "output_dir=o", "data.source=d"])
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay) == ("adafactor", 5e-6, 0.0)
    assert (cfg.optim.schedule, cfg.optim.warmup_steps, cfg.optim.max_grad_norm) == (
        "constant",
        0,
        None,
    )
    assert cfg.ema_decay is None and cfg.mixed_precision == "no" and cfg.batch_size == 1


def test_overrides_are_typed_by_the_field(tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_text(YAML)
    cfg = load_config(
        tmp_path / "run.yaml",
        [
            "optim.lr=1e-5",
            "data.image_size=64",
            "data.buckets=false",
            "task_options.rank=8",
            "task_options.drop_image_prob=1e-1",
            "ema_decay=none",
            "optim.max_grad_norm=1",
            "optim.betas=[0.8, 0.9]",
            "sample_prompts=[x, y, z]",
            "mixed_precision=bf16",
        ],
    )
    assert cfg.optim.lr == 1e-5 and isinstance(cfg.optim.lr, float)
    assert cfg.data.image_size == 64 and cfg.data.buckets is False
    assert cfg.task_options == {"drop_text_prob": 0.5, "rank": 8, "drop_image_prob": 0.1}
    assert cfg.ema_decay is None
    assert cfg.optim.max_grad_norm == 1.0 and isinstance(cfg.optim.max_grad_norm, float)
    assert cfg.optim.betas == (0.8, 0.9)
    assert cfg.sample_prompts == ["x", "y", "z"]
    assert cfg.mixed_precision == "bf16"


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("optim.lrr=1", "optim.lrr"),
        ("dataa.source=x", "dataa"),
        ("data.image_size=big", "data.image_size"),
        ("mixed_precision=fp8", "mixed_precision"),
        ("optim", "KEY=VALUE"),
    ],
)
def test_bad_keys_and_values_are_named(tmp_path: Path, override: str, words: str) -> None:
    (tmp_path / "run.yaml").write_text(YAML)
    with pytest.raises(InvalidInput, match=words.replace(".", r"\.")):
        load_config(tmp_path / "run.yaml", [override])


def test_unknown_key_in_the_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text(TOML + "\n[optim2]\nlr = 1\n")
    with pytest.raises(InvalidInput, match="optim2"):
        load_config(tmp_path / "run.toml")


def test_missing_required_key_is_named() -> None:
    with pytest.raises(InvalidInput, match="'model'"):
        load_config(None, ["task=prior", "output_dir=o", "data.source=d"])
    with pytest.raises(InvalidInput, match="data.source"):
        load_config(None, ["task=prior", "model=m", "output_dir=o"])


def _parser() -> argparse.ArgumentParser:
    from kandinsky.cli_train import add_commands

    parser = argparse.ArgumentParser(prog="kandinsky")
    commands = parser.add_subparsers(dest="command")

    def factory(name: str, help_text: str, examples: str | None = None) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, epilog=examples)
        sub.add_argument("--debug", action="store_true")
        return sub

    add_commands(commands, factory)
    return parser


def test_train_command_parses_task_config_overrides_and_resume() -> None:
    args = _parser().parse_args(
        [
            "train",
            "lora",
            "--config",
            "r.yaml",
            "--set",
            "optim.lr=1",
            "--set",
            "seed=3",
            "--resume",
        ]
    )
    assert (args.task, args.config, args.overrides, args.resume) == (
        "lora",
        "r.yaml",
        ["optim.lr=1", "seed=3"],
        "latest",
    )
    args = _parser().parse_args(["train", "prior", "--resume", "ckpt/step-000010"])
    assert args.resume == "ckpt/step-000010"
    with pytest.raises(SystemExit):
        _parser().parse_args(["train", "unet"])


def test_train_command_runs_the_task_from_make_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        Image.new("RGB", (16, 16), (i * 60, 0, 0)).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text(f"caption {i}")
    (tmp_path / "run.yaml").write_text(
        f"task: prior\nmodel: scratch:tiny\ndata:\n  source: {data}\n  image_size: 8\n"
        "optim:\n  name: adamw\n  lr: 0.01\nmax_steps: 2\nlog_every: 1\n"
    )
    made: list[tuple[str, TrainConfig]] = []

    class Linear:
        name = "linear"

        def setup(self, cfg, accelerator):
            self.model = torch.nn.Linear(3, 3)

        def trainable(self):
            return self.model

        def set_trainable(self, module):
            self.model = module

        def loss(self, batch, generator):
            return self.model(batch["image"].mean((2, 3))).pow(2).mean(), {}

        def sample(self, step, folder):
            return []

        def save_weights(self, folder, state):
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "done").write_text("ok")

    def make_task(name: str, cfg: TrainConfig) -> Linear:
        made.append((name, cfg))
        return Linear()

    fake = types.ModuleType("kandinsky.training.tasks")
    fake.make_task = make_task  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "kandinsky.training.tasks", fake)
    out = tmp_path / "out"
    args = _parser().parse_args(
        ["train", "prior", "--config", str(tmp_path / "run.yaml"), "--output-dir", str(out)]
    )
    assert args.run(args) == 0
    assert made[0][0] == "prior" and made[0][1].output_dir == str(out)
    assert (out / "final" / "done").read_text() == "ok"

    args = _parser().parse_args(["train", "decoder", "--config", str(tmp_path / "run.yaml")])
    with pytest.raises(InvalidInput, match="'prior' config"):
        args.run(args)


def test_yaml_bare_no_is_read_as_the_word_for_string_choices(tmp_path) -> None:
    from kandinsky.training.config import load_config

    path = tmp_path / "run.yaml"
    path.write_text(
        "task: prior\nmodel: scratch:tiny\noutput_dir: out\nmixed_precision: no\ndata:\n  source: data\n"
    )
    assert load_config(path).mixed_precision == "no"
    assert load_config(path, ["mixed_precision=no"]).mixed_precision == "no"
