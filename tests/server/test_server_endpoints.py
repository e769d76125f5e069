"""Every route answers with real PNGs of the asked size, carrying their parameters; seeds reproduce."""

from __future__ import annotations

import inspect
import sys
import types

import pytest
from server_helpers import FAST, b64, decode_png, mask_bytes, png_bytes, png_params, settings

from kandinsky.pipeline import Kandinsky21
from kandinsky.server.app import create_app
from kandinsky.server.schemas import REQUESTS

IMAGE = png_bytes((64, 64))
MASK = mask_bytes((64, 64))

BODIES = {
    "text2img": {"prompt": "a red cat", "seed": 1, **FAST},
    "mix": {
        "items": ["a castle", {"image": b64(IMAGE)}, {"text": "van gogh"}],
        "weights": [0.4, 0.3, 0.3],
        "seed": 2,
        **FAST,
    },
    "variations": {"image": "data:image/png;base64," + b64(IMAGE), "seed": 3, **FAST},
    "img2img": {"image": b64(IMAGE), "prompt": "a blue cat", "strength": 0.5, "seed": 4, **FAST},
    "inpaint": {"image": b64(IMAGE), "mask": b64(MASK), "prompt": "a hat", "seed": 5, **FAST},
    "outpaint": {
        "image": b64(IMAGE),
        "prompt": "a wide field",
        "extend": [16, 0, 16, 0],
        "seed": 6,
        "num_steps": 2,
        "prior_steps": 2,
    },
}
SIZES = {mode: (64, 64) for mode in BODIES} | {"outpaint": (96, 64)}


@pytest.mark.parametrize("mode", list(BODIES))
def test_each_mode_returns_pngs_with_parameters(client, mode):
    response = client.post(f"/v1/{mode}", json=BODIES[mode])
    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer) == {"images", "params", "elapsed_s"}
    assert len(answer["images"]) == len(answer["params"]) == 1
    item = answer["images"][0]
    image = decode_png(item)
    assert image.size == SIZES[mode] == (item["width"], item["height"])
    params = png_params(image)
    assert params["mode"] == mode
    assert params["seed"] == item["seed"] == BODIES[mode]["seed"]
    assert params == answer["params"][0]
    assert "Steps: 2" in image.text["parameters"]
    assert answer["elapsed_s"] > 0


@pytest.mark.parametrize("mode", ["text2img", "inpaint"])
def test_same_request_same_bytes(client, mode):
    first = client.post(f"/v1/{mode}", json=BODIES[mode]).json()["images"][0]["png_base64"]
    second = client.post(f"/v1/{mode}", json=BODIES[mode]).json()["images"][0]["png_base64"]
    other = client.post(f"/v1/{mode}", json={**BODIES[mode], "seed": 99}).json()
    assert first == second
    assert other["images"][0]["png_base64"] != first


def test_several_images_and_seed_list(client):
    body = {"prompt": ["a", "b"], "num_images": 2, "seed": [7, 8, 9, 10], **FAST}
    answer = client.post("/v1/text2img", json=body).json()
    assert [i["seed"] for i in answer["images"]] == [7, 8, 9, 10]
    assert [p["prompt"] for p in answer["params"]][::2] == ["a", "b"]


def test_img2img_upload(client):
    response = client.post(
        "/v1/img2img/upload",
        data={"prompt": "a blue cat", "strength": "0.5", "seed": "4", "num_steps": "2"}
        | {"prior_steps": "2", "height": "64", "width": "64"},
        files={"image": ("cat.png", IMAGE, "image/png")},
    )
    assert response.status_code == 200, response.text
    # the same parameters as JSON give the same bytes
    as_json = client.post("/v1/img2img", json=BODIES["img2img"]).json()
    assert response.json()["images"][0]["png_base64"] == as_json["images"][0]["png_base64"]


def test_inpaint_upload(client):
    response = client.post(
        "/v1/inpaint/upload",
        data={
            "prompt": "a hat",
            "seed": "5",
            "paste_back": "true",
            "mask_polarity": "white_repaints",
        }
        | {k: str(v) for k, v in FAST.items()},
        files={"image": ("a.png", IMAGE, "image/png"), "mask": ("m.png", MASK, "image/png")},
    )
    assert response.status_code == 200, response.text
    as_json = client.post("/v1/inpaint", json=BODIES["inpaint"]).json()
    assert response.json()["images"][0]["png_base64"] == as_json["images"][0]["png_base64"]


def test_mix_and_outpaint_uploads(client):
    mix = client.post(
        "/v1/mix/upload",
        data={"items": ["a castle", "van gogh"], "weights": "[0.4, 0.3, 0.3]", "seed": "[2]"}
        | {k: str(v) for k, v in FAST.items()},
        files=[("items", ("p.png", IMAGE, "image/png"))],
    )
    assert mix.status_code == 200, mix.text
    assert mix.json()["params"][0]["items"] == ["a castle", "van gogh", "<image 64x64>"]
    out = client.post(
        "/v1/outpaint/upload",
        data={"prompt": "field", "extend": "[16, 0, 16, 0]", "num_steps": "2", "prior_steps": "2"},
        files={"image": ("a.png", IMAGE, "image/png")},
    )
    assert out.status_code == 200, out.text
    assert (out.json()["images"][0]["width"], out.json()["images"][0]["height"]) == (96, 64)


def test_health_models_docs(client, tiny_pipe):
    assert client.get("/health").json() == {"status": "ok", "queue": 0}
    info = client.get("/v1/models").json()
    model = info["models"][0]
    assert model["id"] == tiny_pipe.model_id
    assert {"unet", "prior", "movq", "inpaint_unet"} <= set(model["components"])
    assert (model["device"], model["dtype"]) == ("cpu", "float32")
    assert "ddim" in info["samplers"] and info["prior_samplers"] == ["original", "unclip"]
    assert info["limits"]["max_steps"] == 250
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    for mode in BODIES:
        assert f"/v1/{mode}" in spec["paths"]
        upload = spec["paths"][f"/v1/{mode}/upload"]["post"]["requestBody"]["content"]
        assert "multipart/form-data" in upload


@pytest.mark.parametrize("mode", list(REQUESTS))
def test_schemas_mirror_the_python_api(mode):
    """Every request field is a parameter of the method, with the method's default."""
    signature = inspect.signature(getattr(Kandinsky21, mode))
    for name, field in REQUESTS[mode].model_fields.items():
        assert name in signature.parameters, f"{mode}: {name} is not an API parameter"
        default = signature.parameters[name].default
        if default is inspect.Parameter.empty:
            assert field.is_required(), f"{mode}: {name} must be required"
        else:
            assert field.default == default, f"{mode}: {name} default differs"
    served = {"image", "mask", "items", "weights", "prompt", "seed", "num_images"}
    skipped = {"generator", "callback", "progress", "output_type", "latents", "prior_latents"}
    skipped |= {"image_embeds", "negative_image_embeds", "self"}
    missing = set(signature.parameters) - set(REQUESTS[mode].model_fields) - skipped
    assert not missing - served, f"{mode}: not served: {missing}"


def test_ui_is_mounted_when_present(tiny_pipe, monkeypatch):
    """settings.ui mounts kandinsky.server.ui.build_ui at "/" (a stand-in page here)."""
    gr = pytest.importorskip("gradio")
    from fastapi.testclient import TestClient

    seen = {}

    def build_ui(worker, server_settings):
        seen["worker"], seen["settings"] = worker, server_settings
        with gr.Blocks() as demo:
            gr.Markdown("stand-in")
        return demo

    monkeypatch.setitem(
        sys.modules, "kandinsky.server.ui", types.SimpleNamespace(build_ui=build_ui)
    )
    app = create_app(tiny_pipe, settings(ui=True, api_key="k"))
    with TestClient(app) as client:
        assert seen["worker"] is app.state.worker and seen["settings"].api_key == "k"
        assert client.get("/").status_code == 200  # Gradio's own login guards the page
        assert client.get("/health").status_code == 200
        assert client.get("/v1/models").status_code == 401
        assert client.get("/docs").status_code == 401
        headers = {"Authorization": "Bearer k"}
        assert client.get("/v1/models", headers=headers).status_code == 200
        # the catch-all page at "/" must not swallow the API's 404/405 (nor their shape)
        for method, path, status, error in [
            ("get", "/v1/text2img", 405, "method_not_allowed"),
            ("get", "/v1/text2img/upload", 405, "method_not_allowed"),
            ("delete", "/health", 405, "method_not_allowed"),
            ("get", "/v1/nothing", 404, "not_found"),
            ("get", "/no/such/page", 404, "not_found"),  # answered by Gradio's app
        ]:
            response = client.request(method, path, headers=headers)
            assert response.status_code == status, (path, response.text)
            assert response.json() == {"error": error, "detail": response.json()["detail"]}
        assert client.get("/", headers=headers).status_code == 200
    app.state.worker.close()


def test_variations_negative_prior_prompt(client):
    body = {**BODIES["variations"], "negative_prior_prompt": "blurry"}
    response = client.post("/v1/variations", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["params"][0]["negative_prior_prompt"] == "blurry"
    plain = client.post("/v1/variations", json=BODIES["variations"]).json()
    assert plain["images"][0]["png_base64"] != response.json()["images"][0]["png_base64"]
