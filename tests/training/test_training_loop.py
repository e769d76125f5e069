"""The training loop on a toy task: learning, exact resume, kills, atomic checkpoints,
gradient accumulation, EMA, logs, and 2-process DDP on CPU."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from kandinsky.training.checkpoint import read_state
from kandinsky.training.config import DataConfig, OptimConfig, TrainConfig
from kandinsky.training.loop import EMA, make_optimizer, train

TOY = '''
import torch
import torch.nn.functional as F


class ToyTask:
    """A tiny conv net learning to mirror its (noised) input image."""

    name = "toy"

    def __init__(self, fail_at_call=None, noise=0.1):
        self.fail_at_call, self.noise, self.calls, self.keys = fail_at_call, noise, 0, []

    def setup(self, cfg, accelerator):
        self.model = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(8, 3, 3, padding=1)
        )

    def trainable(self):
        return self.model

    def set_trainable(self, module):
        self.model = module

    def loss(self, batch, generator):
        self.calls += 1
        if self.calls == self.fail_at_call:
            raise RuntimeError("killed")
        self.keys += list(batch["key"])
        x = batch["image"]
        noise = torch.randn(x.shape, generator=generator, device=x.device) * self.noise
        return F.mse_loss(self.model(x + noise), x.flip(-1)), {"noise_std": float(noise.std())}

    def sample(self, step, folder):
        from PIL import Image

        path = folder / f"step-{step}.png"
        Image.new("RGB", (8, 8), (step, 0, 0)).save(path)
        return [path]

    def save_weights(self, folder, state):
        folder.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.clone() for k, v in state.items()}, folder / "weights.pt")


def toy_data(n=16, size=8):
    g = torch.Generator().manual_seed(0)
    return [
        {"image": torch.rand(3, size, size, generator=g) * 2 - 1, "caption": f"c{i}", "key": f"k{i}"}
        for i in range(n)
    ]
'''

_namespace: dict = {}
exec(compile(TOY, "toy_task", "exec"), _namespace)
ToyTask, toy_data = _namespace["ToyTask"], _namespace["toy_data"]


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def _cfg(out: Path, **changes) -> TrainConfig:
    optim = changes.pop("optim", OptimConfig(name="adamw", lr=1e-2))
    base = dict(
        task="prior",
        model="scratch:toy",
        output_dir=str(out),
        data=DataConfig(source="<toy>"),
        optim=optim,
        batch_size=2,
        max_steps=20,
        checkpoint_every=10,
        log_every=5,
    )
    base.update(changes)
    return TrainConfig(**base)


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "final" / "weights.pt")


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_loss_falls_and_logs_are_written(tmp_path: Path) -> None:
    result = train(_cfg(tmp_path, max_steps=40, sample_every=20), ToyTask(), dataset=toy_data())
    assert result.steps == 40 and len(result.losses) == 40
    assert sum(result.losses[-5:]) < 0.9 * sum(result.losses[:5])
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert rows[0] == "step,loss,lr,images_per_s,max_memory_mb,noise_std"  # + the task's numbers
    assert len(rows) == 1 + 8
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [
        "step-20.png",
        "step-40.png",
    ]
    assert list((tmp_path / "tensorboard").rglob("events.out.tfevents*"))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step-000010",
        "step-000020",
        "step-000030",
        "step-000040",
    ]


def test_resume_gives_the_same_weights_as_one_straight_run(tmp_path: Path) -> None:
    """The original recipe (Adafactor, constant lr): 20 steps vs 10 + resume + 10, fp32."""
    recipe = OptimConfig(lr=1e-3)  # Adafactor; a larger lr so 20 steps move the weights
    train(_cfg(tmp_path / "straight", optim=recipe), ToyTask(), dataset=toy_data())
    train(_cfg(tmp_path / "split", optim=recipe, max_steps=10), ToyTask(), dataset=toy_data())
    result = train(
        _cfg(tmp_path / "split", optim=recipe, resume="latest"), ToyTask(), dataset=toy_data()
    )
    assert result.steps == 20 and len(result.losses) == 10
    _assert_same(_weights(tmp_path / "straight"), _weights(tmp_path / "split"))


def test_killed_run_resumes_exactly_with_every_knob_on(tmp_path: Path) -> None:
    """AdamW, cosine + warm-up, grad accumulation, clipping, EMA; killed at step 10 of 12."""
    knobs = dict(
        optim=OptimConfig(
            name="adamw", lr=1e-2, schedule="cosine", warmup_steps=3, max_grad_norm=0.5
        ),
        grad_accum=2,
        ema_decay=0.8,
        max_steps=12,
        checkpoint_every=4,
    )
    straight = train(_cfg(tmp_path / "straight", **knobs), ToyTask(), dataset=toy_data())
    killed = tmp_path / "killed"
    with pytest.raises(RuntimeError, match="killed"):
        train(_cfg(killed, **knobs), ToyTask(fail_at_call=2 * 9 + 2), dataset=toy_data())
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == [
        "step-000004",
        "step-000008",
    ]
    task = ToyTask()
    resumed = train(_cfg(killed, resume="latest", **knobs), task, dataset=toy_data())
    assert resumed.losses == straight.losses[8:]
    _assert_same(_weights(tmp_path / "straight"), _weights(killed))  # the EMA weights


class SlowToyTask(ToyTask):
    def loss(self, batch, generator):
        time.sleep(0.05)
        return super().loss(batch, generator)


def test_training_seconds_add_up_across_a_resume_without_the_redone_steps(tmp_path: Path) -> None:
    """Killed after step 6 of 8 (checkpoint at 4): the resumed run counts the 4 checkpointed
    steps of the first run, not steps 5–6 it redoes."""
    knobs = dict(max_steps=8, checkpoint_every=4)
    with pytest.raises(RuntimeError, match="killed"):
        train(_cfg(tmp_path, **knobs), SlowToyTask(fail_at_call=7), dataset=toy_data())
    first = read_state(tmp_path / "checkpoints" / "step-000004").seconds
    assert first >= 4 * 0.05
    resumed = train(_cfg(tmp_path, resume="latest", **knobs), SlowToyTask(), dataset=toy_data())
    assert resumed.resumed_seconds == first
    assert resumed.seconds >= first + 4 * 0.05
    assert read_state(tmp_path / "checkpoints" / "step-000008").seconds <= resumed.seconds


def test_failed_save_leaves_no_partial_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from accelerate import Accelerator

    def broken_save_state(self, output_dir=None, **kwargs):
        Path(output_dir, "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(Accelerator, "save_state", broken_save_state)
    with pytest.raises(OSError, match="disk full"):
        train(_cfg(tmp_path, max_steps=4, checkpoint_every=2), ToyTask(), dataset=toy_data())
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_latest_ignores_an_unfinished_checkpoint_folder(tmp_path: Path) -> None:
    train(_cfg(tmp_path, max_steps=4, checkpoint_every=2), ToyTask(), dataset=toy_data())
    (tmp_path / "checkpoints" / ".tmp-step-000006").mkdir()
    (tmp_path / "checkpoints" / "step-000008").mkdir()  # no trainer_state.json: incomplete
    result = train(_cfg(tmp_path, max_steps=6, resume="latest"), ToyTask(), dataset=toy_data())
    assert len(result.losses) == 2


def test_gradient_accumulation_matches_a_bigger_batch(tmp_path: Path) -> None:
    data = toy_data()
    big = _cfg(
        tmp_path / "big", batch_size=4, max_steps=3, data=DataConfig(source="-", shuffle=False)
    )
    small = _cfg(
        tmp_path / "small",
        batch_size=2,
        grad_accum=2,
        max_steps=3,
        data=DataConfig(source="-", shuffle=False),
    )
    train(big, ToyTask(noise=0.0), dataset=data)
    train(small, ToyTask(noise=0.0), dataset=data)
    a, b = _weights(tmp_path / "big"), _weights(tmp_path / "small")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_ema_averages_and_is_exported(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 1)
    ema = EMA(model, decay=0.5)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(2.0)
    ema.update(model)
    torch.testing.assert_close(ema.shadow["weight"], start + 1.0)
    saved = ema.copy_to(model)
    torch.testing.assert_close(model.weight, start + 1.0)
    ema.restore(model, saved)
    torch.testing.assert_close(model.weight, start + 2.0)

    task = ToyTask()
    train(_cfg(tmp_path, max_steps=5, ema_decay=0.9), task, dataset=toy_data())
    raw = task.model.state_dict()
    exported = _weights(tmp_path)
    assert not torch.equal(raw["0.weight"], exported["0.weight"])


def test_adamw_runs_fused_on_cpu_with_the_per_tensor_update(tmp_path: Path) -> None:
    def net() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 3))

    ours, reference = net(), net()
    cfg = _cfg(tmp_path, optim=OptimConfig(name="adamw", lr=1e-2, weight_decay=0.01))
    optimizer = make_optimizer(cfg, list(ours.parameters()))
    assert optimizer.defaults["fused"]
    per_tensor = torch.optim.AdamW(
        reference.parameters(), lr=1e-2, weight_decay=0.01, foreach=False
    )
    x = torch.randn(4, 8)
    for _ in range(3):
        for model, opt in ((ours, optimizer), (reference, per_tensor)):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    for a, b, start in zip(
        ours.parameters(), reference.parameters(), net().parameters(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        assert (a - start).abs().max() > 1e-3  # three real steps were taken


def test_bad_data_folder_trains_and_reports_the_skips(tmp_path: Path) -> None:
    import io

    from PIL import Image

    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(4):
        Image.new("RGB", (12, 12), (40 * i, 90, 200)).save(folder / f"good{i}.png")
        (folder / f"good{i}.txt").write_text(f"good {i}")
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buffer, format="JPEG")
    (folder / "truncated.jpg").write_bytes(buffer.getvalue()[:300])
    (folder / "truncated.txt").write_text("cut short")
    Image.new("RGB", (12, 12)).save(folder / "captionless.png")
    Image.new("RGB", (1, 1)).save(folder / "dot.png")
    (folder / "dot.txt").write_text("one pixel")
    cfg = _cfg(tmp_path / "out", data=DataConfig(source=str(folder), image_size=8), max_steps=6)
    result = train(cfg, ToyTask())
    assert result.steps == 6
    assert set(result.report.counts) == {"corrupt", "no_caption", "too_small"}
    summary = result.report.summary()
    for word in ("corrupt", "truncated", "no_caption", "captionless", "too_small", "dot"):
        assert word in summary
    assert "captionless" in (tmp_path / "out" / "skip_report.json").read_text()


def test_bf16_and_gradient_checkpointing_knobs_run(tmp_path: Path) -> None:
    class Flagged(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gradient_checkpointing = False
            self.conv = torch.nn.Conv2d(3, 3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x)

    class FlaggedTask(ToyTask):
        def setup(self, cfg, accelerator):
            self.model = Flagged()

    task = FlaggedTask()
    cfg = _cfg(tmp_path, max_steps=2, mixed_precision="bf16", gradient_checkpointing=True)
    result = train(cfg, task, dataset=toy_data())
    assert result.steps == 2
    assert getattr(task.model, "module", task.model).gradient_checkpointing is True


DDP_SCRIPT = """
import hashlib, sys
from pathlib import Path
import torch
from accelerate import PartialState
from kandinsky.training.config import DataConfig, OptimConfig, TrainConfig
from kandinsky.training.loop import train
{toy}
out = Path(sys.argv[1])
cfg = TrainConfig(task="prior", model="scratch:toy", output_dir=str(out), data=DataConfig(source="-"),
                  optim=OptimConfig(name="adamw", lr=1e-2), batch_size=2, max_steps=2,
                  checkpoint_every=2, log_every=1)
task = ToyTask()
train(cfg, task, dataset=toy_data())
rank = PartialState().process_index
state = getattr(task.model, "module", task.model).state_dict()
digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in state.values())).hexdigest()
(out / f"rank{{rank}}.txt").write_text(digest + " " + ",".join(task.keys))
"""


def _launch_two_cpu_processes(script: Path, *args: Path) -> subprocess.CompletedProcess:
    """`accelerate launch` of `script` as 2 CPU processes (gloo), one thread each."""
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    command += ["--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    command += ["--dynamo_backend", "no", "--main_process_port", "0", str(script)]
    command += [str(a) for a in args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def test_two_process_ddp_on_cpu_keeps_ranks_in_sync(tmp_path: Path) -> None:
    script = tmp_path / "ddp_toy.py"
    script.write_text(DDP_SCRIPT.format(toy=textwrap.dedent(TOY)))
    out = tmp_path / "out"
    done = _launch_two_cpu_processes(script, out)
    assert done.returncode == 0, done.stderr[-3000:]
    (hash0, keys0), (hash1, keys1) = (
        (out / f"rank{r}.txt").read_text().split(" ") for r in range(2)
    )
    assert hash0 == hash1
    assert not set(keys0.split(",")) & set(keys1.split(","))  # each rank saw its own part
    assert len(list((out / "checkpoints" / "step-000002").glob("random_states_*.pkl"))) == 2
    assert hashlib.sha256(b"").hexdigest() not in (hash0, hash1)


GAN_DDP_SCRIPT = """
import hashlib, sys
from pathlib import Path
import torch
from accelerate import PartialState
from kandinsky.testing import write_tiny_model
from kandinsky.training.config import DataConfig, OptimConfig, TrainConfig
from kandinsky.training.loop import train
from kandinsky.training.tasks import make_task

out, model = Path(sys.argv[1]), Path(sys.argv[2])
options = {"quantize": False, "disc_weight": 0.8, "disc_start": 0, "disc_width": 8,
           "disc_layers": 2}
cfg = TrainConfig(task="movq", model=str(model), output_dir=str(out),
                  data=DataConfig(source="-", image_size=16), optim=OptimConfig(lr=1e-3),
                  batch_size=2, max_steps=2, grad_accum=2, checkpoint_every=2, log_every=1,
                  task_options=options)
g = torch.Generator().manual_seed(0)
items = [{"image": torch.rand(3, 16, 16, generator=g) * 2 - 1, "caption": "", "key": str(i)}
         for i in range(16)]
task = make_task("movq", cfg)
train(cfg, task, dataset=items)
rank = PartialState().process_index
digest = hashlib.sha256()
for net in (task.net, task.adversary().module):
    for v in net.state_dict().values():
        digest.update(v.numpy().tobytes())
(out / f"rank{rank}.txt").write_text(digest.hexdigest())
"""


def test_two_process_ddp_trains_movq_and_its_discriminator_in_sync(tmp_path: Path) -> None:
    from kandinsky.testing import write_tiny_model

    model = write_tiny_model(tmp_path / "model")
    script = tmp_path / "ddp_gan.py"
    script.write_text(GAN_DDP_SCRIPT)
    out = tmp_path / "out"
    done = _launch_two_cpu_processes(script, out, model)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "rank0.txt").read_text() == (out / "rank1.txt").read_text()
    assert (out / "final" / "movq" / "diffusion_pytorch_model.safetensors").is_file()
    assert (out / "checkpoints" / "step-000002" / "model_1.safetensors").is_file()
