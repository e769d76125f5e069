"""A model folder's generation_defaults.json: the sampling settings every front end starts from."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kandinsky.conversion import convert
from kandinsky.defaults import (
    FILENAME,
    GenerationDefaults,
    pipeline_settings,
    read_defaults,
    write_defaults,
)
from kandinsky.errors import WeightsError
from kandinsky.loading import load
from kandinsky.pipeline import Kandinsky21
from kandinsky.results import read_params

# what the tiny model's folders recommend here: the prior's settings in the prior folder,
# the decoder's in the decoder and inpainting folders
CHOSEN = GenerationDefaults(
    guidance_scale=2.5, num_steps=3, sampler="dpmpp_2m", prior_guidance_scale=2.0, prior_steps=2
)
RECORDED = ("guidance_scale", "num_steps", "sampler", "prior_guidance_scale", "prior_steps")


@pytest.fixture(scope="module")
def model(tiny_diffusers: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("defaults") / "model"
    shutil.copytree(tiny_diffusers, folder)
    for pipeline in ("kandinsky-2-1-prior", "kandinsky-2-1", "kandinsky-2-1-inpaint"):
        write_defaults(folder / pipeline, CHOSEN, pipeline_settings(pipeline))
    return folder


@pytest.fixture(scope="module")
def pipe(model: Path) -> Kandinsky21:
    return Kandinsky21.from_pretrained(model, inpainting=True)


def recorded(params: dict) -> dict:
    return {key: params[key] for key in RECORDED}


def test_each_pipeline_folder_holds_only_its_own_settings(model: Path) -> None:
    prior = json.loads((model / "kandinsky-2-1-prior" / FILENAME).read_text())
    decoder = json.loads((model / "kandinsky-2-1" / FILENAME).read_text())
    assert prior == {"prior_guidance_scale": 2.0, "prior_steps": 2}
    assert decoder == {"guidance_scale": 2.5, "num_steps": 3, "sampler": "dpmpp_2m"}
    assert (model / "kandinsky-2-1-inpaint" / FILENAME).read_text() == json.dumps(
        decoder, indent=1
    ) + "\n"


def test_a_folder_without_the_file_gets_the_original_settings(tiny_diffusers: Path) -> None:
    pipe = Kandinsky21.from_pretrained(tiny_diffusers)
    assert pipe.defaults == GenerationDefaults()
    assert (pipe.defaults.guidance_scale, pipe.defaults.num_steps) == (4.0, 50)
    assert (pipe.defaults.prior_guidance_scale, pipe.defaults.prior_steps) == (4.0, 25)


def test_left_out_settings_are_the_models_and_the_image_records_them(pipe) -> None:
    assert pipe.defaults == CHOSEN
    implicit = pipe.text2img("a red circle", seed=3, height=64, width=64)
    explicit = pipe.text2img(
        "a red circle",
        seed=3,
        height=64,
        width=64,
        guidance_scale=2.5,
        num_steps=3,
        sampler="dpmpp_2m",
        prior_guidance_scale=2.0,
        prior_steps=2,
    )
    assert (
        recorded(implicit.params[0])
        == recorded(explicit.params[0])
        == {
            "guidance_scale": 2.5,
            "num_steps": 3,
            "sampler": "dpmpp_2m",
            "prior_guidance_scale": 2.0,
            "prior_steps": 2,
        }
    )
    assert np.array_equal(np.asarray(implicit.images[0]), np.asarray(explicit.images[0]))


def test_an_explicit_argument_wins_over_the_model(pipe) -> None:
    result = pipe.text2img("a", seed=0, height=64, width=64, guidance_scale=6.0, prior_steps=3)
    params = result.params[0]
    assert (params["guidance_scale"], params["prior_steps"]) == (6.0, 3)
    assert (params["num_steps"], params["prior_guidance_scale"]) == (3, 2.0)


@pytest.mark.parametrize("mode", ["inpaint", "variations"])
def test_every_mode_starts_from_the_models_settings(pipe, mode) -> None:
    from PIL import Image

    image = Image.new("RGB", (64, 64), (200, 30, 30))
    if mode == "inpaint":
        mask = np.zeros((64, 64), dtype=np.float32)
        mask[:, 32:] = 1
        result = pipe.inpaint(image, mask, "a blue square", seed=0)
    else:
        result = pipe.variations(image, seed=0)
    assert (result.params[0]["guidance_scale"], result.params[0]["num_steps"]) == (2.5, 3)


def test_the_first_folder_that_names_a_setting_wins(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    for folder, values in (
        (first, {"guidance_scale": 3}),
        (second, {"guidance_scale": 7, "num_steps": 9}),
    ):
        folder.mkdir()
        (folder / FILENAME).write_text(json.dumps(values))
    assert read_defaults([first, second]) == GenerationDefaults(guidance_scale=3.0, num_steps=9)


def test_writing_the_original_settings_removes_a_stale_file(tmp_path: Path) -> None:
    assert write_defaults(tmp_path, GenerationDefaults(guidance_scale=3.0)) == tmp_path / FILENAME
    assert write_defaults(tmp_path, GenerationDefaults()) is None
    assert not (tmp_path / FILENAME).exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not readable JSON"),
        ("[1, 2]", "must hold a JSON object"),
        ('{"guidance": 3}', "unknown setting(s) ['guidance']"),
        ('{"guidance_scale": -1}', "guidance_scale must be between 0.0 and 100.0"),
        ('{"num_steps": 2.5}', "num_steps"),
        ('{"sampler": "fast"}', "unknown sampler 'fast'"),
        ('{"prior_sampler": "ddim"}', "prior_sampler 'ddim' is unknown"),
    ],
)
def test_a_broken_file_is_named_at_load_time(tiny_diffusers, tmp_path, content, message) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_diffusers / "kandinsky-2-1-prior", folder / "kandinsky-2-1-prior")
    (folder / "kandinsky-2-1-prior" / FILENAME).write_text(content)
    with pytest.raises(WeightsError) as error:
        load(folder, components=["prior"])
    assert message in str(error.value)
    assert FILENAME in str(error.value) and "fix or delete it" in str(error.value)


def test_convert_carries_the_settings_and_diffusers_still_loads_the_folders(model, tmp_path):
    from diffusers import KandinskyPriorPipeline

    out = convert(model, tmp_path / "converted")
    assert Kandinsky21.from_pretrained(out).defaults == CHOSEN
    assert (out / "kandinsky-2-1-prior" / FILENAME).is_file()
    KandinskyPriorPipeline.from_pretrained(out / "kandinsky-2-1-prior")  # an extra file is fine


def test_the_cli_uses_the_models_settings_unless_told(model: Path, tmp_path: Path) -> None:
    def generate(*extra: str) -> dict:
        out = tmp_path / str(len(extra))
        result = subprocess.run(
            [sys.executable, "-m", "kandinsky.cli", "generate", "a red circle", "--model"]
            + [str(model), "--seed", "1", "--height", "64", "--width", "64", "--no-progress"]
            + ["--out", str(out), *extra],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        return read_params(next(out.glob("*.png")))

    assert recorded(generate()) == recorded(CHOSEN.to_dict())
    told = generate("--guidance", "5", "--prior-steps", "3")
    assert (told["guidance_scale"], told["prior_steps"], told["num_steps"]) == (5.0, 3, 3)


def test_the_server_lists_and_applies_the_models_settings(pipe) -> None:
    from fastapi.testclient import TestClient

    from kandinsky.server.app import ServerSettings, create_app

    app = create_app(pipe, ServerSettings(ui=False, api_key=None))
    with TestClient(app) as client:
        info = client.get("/v1/models").json()
        assert info["models"][0]["defaults"] == CHOSEN.to_dict()
        answer = client.post("/v1/text2img", json={"prompt": "a", "seed": 0}).json()
        assert recorded(answer["params"][0]) == recorded(CHOSEN.to_dict())
    app.state.worker.close(wait=True)
    # the server's step limit applies to the model's own step count too
    strict = create_app(pipe, ServerSettings(ui=False, api_key=None, max_steps=2))
    with TestClient(strict) as client:
        refused = client.post("/v1/text2img", json={"prompt": "a", "seed": 0})
        assert refused.status_code == 400
        assert "num_steps is 3; this server allows at most 2 steps" in refused.json()["detail"]
    strict.state.worker.close(wait=True)


def test_the_page_starts_its_sliders_at_the_models_settings(pipe) -> None:
    pytest.importorskip("gradio")
    from types import SimpleNamespace

    from kandinsky.server.ui import build_ui

    page = build_ui(SimpleNamespace(pipe=pipe, run=None))
    values = {
        block.elem_id: block.value
        for block in page.blocks.values()
        if getattr(block, "elem_id", None) and hasattr(block, "value")
    }
    assert values["t2i-guidance"] == 2.5 and values["t2i-prior-guidance"] == 2.0
    assert (values["t2i-steps"], values["t2i-prior-steps"], values["t2i-sampler"]) == (
        3,
        2,
        "dpmpp_2m",
    )


def test_info_names_the_models_sampling_settings(model: Path, tiny_diffusers: Path) -> None:
    def info(folder: Path) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "kandinsky.cli", "info", "--model", str(folder)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert (
        "sampling defaults (generation_defaults.json): guidance 2.5, 3 steps dpmpp_2m; "
        "prior guidance 2, 2 steps original" in info(model)
    )
    assert "sampling defaults (the original's): guidance 4, 50 steps ddim" in info(tiny_diffusers)
