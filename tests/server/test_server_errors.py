"""The caller's mistakes get a 4xx JSON {error, detail} that says what was wrong; never a 5xx."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from server_helpers import FAST, b64, huge_png, mask_bytes, png_bytes

IMAGE = b64(png_bytes((64, 64)))
MASK = b64(mask_bytes((64, 64)))
I2I = {"image": IMAGE, "prompt": "x", **FAST}


def check_error(response, status: int, error: str, *words: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}, body
    assert body["error"] == error, body
    for word in words:
        assert word in str(body["detail"]), body
    return body


def test_invalid_base64(client):
    response = client.post("/v1/img2img", json={**I2I, "image": "not base64 !!!"})
    check_error(response, 400, "invalid_image", "image", "base64")
    response = client.post("/v1/img2img", json={**I2I, "image": "data:image/png,abc"})
    check_error(response, 400, "invalid_image", "data URL")
    check_error(client.post("/v1/img2img", json={**I2I, "image": ""}), 400, "invalid_image")


def test_not_an_image(client):
    response = client.post("/v1/img2img", json={**I2I, "image": b64(b"%!PS-Adobe-3.0 EPSF")})
    check_error(response, 400, "invalid_image", "not an image")
    truncated = b64(png_bytes((256, 256))[:60])
    check_error(client.post("/v1/img2img", json={**I2I, "image": truncated}), 400, "invalid_image")
    response = client.post("/v1/mix", json={"items": [{"image": "AAAA"}], "weights": [1]})
    check_error(response, 400, "invalid_image", "items[0]")
    lab = io.BytesIO()
    Image.new("LAB", (64, 64)).save(lab, format="TIFF")
    body = {**I2I, "mask": b64(lab.getvalue())}
    check_error(client.post("/v1/inpaint", json=body), 400, "invalid_image", "mask", "LAB")


def test_mask_of_another_size(client):
    body = {**I2I, "mask": b64(mask_bytes((32, 48)))}
    check_error(client.post("/v1/inpaint", json=body), 400, "invalid_input", "mask", "32×48")


def test_huge_images_are_refused_before_decoding(client, make_client):
    # 56 MP in a 7 kB PNG: over the default 16.7 MP limit
    body = {**I2I, "image": b64(huge_png(8000, 7000))}
    check_error(client.post("/v1/img2img", json=body), 413, "image_too_large", "16777216")
    # 400 MP: over PIL's own decompression-bomb limit too
    body = {**I2I, "mask": b64(huge_png(20000, 20000)), "image": IMAGE}
    check_error(client.post("/v1/inpaint", json=body), 413, "image_too_large", "mask")
    small = make_client(max_image_pixels=64 * 64)
    body = {**I2I, "image": b64(png_bytes((65, 64)))}
    check_error(small.post("/v1/img2img", json=body), 413, "image_too_large", "4096")
    # max_image_pixels is for inputs only: outputs have their own limit
    assert small.post("/v1/text2img", json={"prompt": "x", **FAST}).status_code == 200


def test_output_size_is_limited_before_queueing(client, make_client, tiny_pipe, monkeypatch):
    """4096² output needs >100 GB in the (uninterruptible) MoVQ decode: refused up front."""
    calls = []
    for mode in ("text2img", "img2img", "outpaint"):
        monkeypatch.setattr(tiny_pipe, mode, lambda *a, **k: calls.append(k))
    body = {"prompt": "x", "height": 4096, "width": 4096, "num_steps": 1}
    check_error(
        client.post("/v1/text2img", json=body),
        400,
        "invalid_input",
        "4096×4096",
        "2359296",
        "max_output_pixels",
    )
    body = {"prompt": "x", "height": 1536, "width": 1536, "num_images": 8}
    check_error(
        client.post("/v1/text2img", json=body), 400, "invalid_input", "9437184", "fewer images"
    )
    body = {"prompt": ["a", "b"], "height": 1536, "width": 1536, "num_images": 3}
    check_error(client.post("/v1/text2img", json=body), 400, "invalid_input", "6 images")
    # img2img's size defaults to the input's: a 2048² input (allowed) means a 2048² output
    big = b64(huge_png(2048, 2048))
    body = {"image": big, "prompt": "x"}
    check_error(client.post("/v1/img2img", json=body), 400, "invalid_input", "image's size")
    body = {"image": IMAGE, "prompt": "x", "size": [2048, 2048]}
    check_error(client.post("/v1/outpaint", json=body), 400, "invalid_input", "canvas", "2359296")
    assert calls == [] and client.app.state.worker.pending == 0
    monkeypatch.undo()
    # the same big input, with an output size inside the limit, is fine
    assert client.post("/v1/img2img", json={**I2I, "image": big}).status_code == 200
    info = client.get("/v1/models").json()["limits"]
    assert info["max_output_pixels"] == 1536**2 and info["max_total_output_pixels"] == 4 * 1536**2
    assert info["max_image_pixels"] == 4096**2

    small = make_client(max_output_pixels=64 * 64, max_total_output_pixels=2 * 64 * 64)
    body = {"prompt": "x", "height": 72, "width": 64}
    check_error(small.post("/v1/text2img", json=body), 400, "invalid_input", "4096", "64×64")
    body = {"image": IMAGE, "prompt": "x", "extend": [8, 0, 0, 0]}
    check_error(small.post("/v1/outpaint", json=body), 400, "invalid_input", "canvas")
    body = {**I2I, "num_images": 3}
    check_error(small.post("/v1/img2img", json=body), 400, "invalid_input", "8192")
    assert small.post("/v1/img2img", json={**I2I, "num_images": 2}).status_code == 200


def test_server_limits(client):
    body = {"prompt": "x", "num_steps": 10000}
    check_error(client.post("/v1/text2img", json=body), 400, "invalid_input", "num_steps", "250")
    body = {"prompt": "x", "prior_steps": 251}
    check_error(client.post("/v1/text2img", json=body), 400, "invalid_input", "prior_steps")
    body = {"prompt": ["a", "b", "c"], "num_images": 3}
    check_error(client.post("/v1/text2img", json=body), 400, "invalid_input", "at most 8")


def test_unknown_and_mistyped_fields(client):
    body = {"prompt": "x", "num_step": 2}
    check_error(client.post("/v1/text2img", json=body), 422, "validation_error", "num_step")
    check_error(client.post("/v1/text2img", json={}), 422, "validation_error", "prompt")
    body = {"prompt": "x", "height": "tall"}
    check_error(client.post("/v1/text2img", json=body), 422, "validation_error", "height")
    response = client.post(
        "/v1/text2img", content=b"{not json", headers={"content-type": "application/json"}
    )
    check_error(response, 422, "validation_error", "not valid JSON")
    response = client.post("/v1/text2img", files={"image": ("a.png", b"x")})
    check_error(response, 422, "validation_error", "/v1/text2img/upload")
    response = client.post("/v1/img2img/upload", json=I2I)
    check_error(response, 415, "unsupported_media_type", "multipart")
    response = client.post(
        "/v1/img2img/upload",
        data={"prompt": "x", "colour": "red"},
        files={"image": ("a.png", png_bytes(), "image/png")},
    )
    check_error(response, 422, "validation_error", "colour")
    response = client.post("/v1/img2img/upload", files={"prompt": ("p.txt", b"x")})
    check_error(response, 400, "invalid_input", "prompt")
    check_error(client.get("/v1/nothing"), 404, "not_found")
    check_error(client.get("/v1/text2img"), 405, "method_not_allowed")
    check_error(client.delete("/health"), 405, "method_not_allowed")


def test_other_http_errors_are_named_by_their_phrase():
    import asyncio
    import json

    from starlette.exceptions import HTTPException

    from kandinsky.server.app import _http_error

    response = asyncio.run(_http_error(None, HTTPException(409, "taken")))
    assert json.loads(response.body) == {"error": "conflict", "detail": "taken"}
    response = asyncio.run(_http_error(None, HTTPException(503)))
    assert json.loads(response.body) == {
        "error": "service_unavailable",
        "detail": "Service Unavailable",
    }


# Inputs the pipeline itself refuses: each must come back as a 4xx naming the argument.
BAD = [
    ("text2img", {"prompt": "x", "seed": -1}, "seed"),
    ("text2img", {"prompt": "x", "seed": 2**70}, "seed"),
    ("text2img", {"prompt": "x", "seed": [1, 2]}, "seed"),
    ("text2img", {"prompt": "x", "num_images": 0}, "num_images"),
    ("text2img", {"prompt": [], "num_images": 1}, "prompt"),
    ("text2img", {"prompt": ["a", "b"], "negative_prompt": ["c"]}, "negative_prompt"),
    ("text2img", {"prompt": "x", "height": 65}, "height"),
    ("text2img", {"prompt": "x", "width": 8192}, "width"),
    ("text2img", {"prompt": "x", "guidance_scale": -1}, "guidance_scale"),
    ("text2img", {"prompt": "x", "num_steps": 0}, "num_steps"),
    ("text2img", {"prompt": "x", "sampler": "magic"}, "sampler"),
    ("text2img", {"prompt": "x", "prior_sampler": "magic"}, "prior_sampler"),
    ("text2img", {"prompt": "x", "seed": "abc"}, "seed"),
    ("text2img", {"prompt": "x", "height": 0}, "height"),
    ("mix", {"items": [], "weights": []}, "items"),
    ("mix", {"items": ["a", "b"], "weights": [0.5, -0.5]}, "weights"),
    ("mix", {"items": ["a"], "weights": [1, 2]}, "weights"),
    ("mix", {"items": [{"color": "red"}], "weights": [1]}, "items"),
    ("variations", {"image": b64(png_bytes((4, 4)))}, "image"),
    ("img2img", {**I2I, "strength": 2}, "strength"),
    ("img2img", {**I2I, "strength_convention": "mine"}, "strength_convention"),
    ("inpaint", {**I2I, "mask": MASK, "mask_polarity": "black"}, "polarity"),
    ("inpaint", {**I2I}, "mask"),
    ("outpaint", {"image": IMAGE, "prompt": "x"}, "extend"),
    ("outpaint", {"image": IMAGE, "prompt": "x", "extend": [-8, 0, 0, 0]}, "extend"),
    ("outpaint", {"image": IMAGE, "prompt": "x", "extend": [8, 0, 0]}, "extend"),
    ("outpaint", {"image": IMAGE, "prompt": "x", "size": [32, 32]}, "size"),
    ("outpaint", {"image": IMAGE, "prompt": "x", "extend": [0, 0, 0, 0]}, "extend"),
    ("outpaint", {"image": IMAGE, "prompt": "x", "size": [96, 64], "max_step": 0}, "max_step"),
    ("outpaint", {"image": IMAGE, "prompt": "x", "size": [96, 64], "overlap": 100}, "overlap"),
]


@pytest.mark.parametrize(("mode", "body", "word"), BAD, ids=[f"{m}-{w}" for m, _, w in BAD])
def test_bad_parameters_are_4xx(client, mode, body, word):
    response = client.post(f"/v1/{mode}", json={**FAST, **body} if mode != "outpaint" else body)
    assert 400 <= response.status_code < 500, response.text
    assert set(response.json()) == {"error", "detail"}
    assert word in response.json()["detail"]


def test_nan_guidance_is_400(client):
    response = client.post(
        "/v1/text2img",
        content=b'{"prompt": "x", "guidance_scale": NaN}',
        headers={"content-type": "application/json"},
    )
    assert 400 <= response.status_code < 500 and "guidance_scale" in response.json()["detail"]


def test_body_too_large(make_client):
    client = make_client(max_request_bytes=2000)
    body = {**I2I, "image": b64(png_bytes((64, 64))) + "A" * 4000}
    check_error(client.post("/v1/img2img", json=body), 413, "request_too_large", "2000")

    def chunks():  # no Content-Length: counted while reading
        for _ in range(10):
            yield b" " * 500

    response = client.post(
        "/v1/text2img", content=chunks(), headers={"content-type": "application/json"}
    )
    check_error(response, 413, "request_too_large")
    ok = client.post("/v1/text2img", json={"prompt": "x", **FAST})
    assert ok.status_code == 200


def test_api_key(make_client, monkeypatch):
    monkeypatch.setenv("KANDINSKY_API_KEY", "s3cret")
    client = make_client(api_key=None)  # None here means: not set (the env var is read by default)
    assert client.app.state.settings.api_key is None
    from kandinsky.server.app import ServerSettings

    assert ServerSettings().api_key == "s3cret"
    client = make_client(api_key="s3cret")
    assert client.get("/health").json()["status"] == "ok"  # open
    for path in ("/v1/models", "/docs", "/openapi.json"):
        response = client.get(path)
        body = check_error(response, 401, "unauthorized", "Authorization: Bearer")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert body
    # 401 before the body is even looked at
    response = client.post("/v1/text2img", json={"garbage": True})
    check_error(response, 401, "unauthorized")
    wrong = {"Authorization": "Bearer nope"}
    response = client.post("/v1/text2img", json={"prompt": "x", **FAST}, headers=wrong)
    check_error(response, 401, "unauthorized", "wrong API key")
    assert "invalid_token" in response.headers["WWW-Authenticate"]
    basic = {"Authorization": "Basic czNjcmV0"}
    check_error(client.get("/v1/models", headers=basic), 401, "unauthorized")
    good = {"Authorization": "Bearer s3cret"}
    assert client.get("/v1/models", headers=good).status_code == 200
    response = client.post("/v1/text2img", json={"prompt": "x", **FAST}, headers=good)
    assert response.status_code == 200
    response = client.post(
        "/v1/img2img/upload",
        data={"prompt": "x", **{k: str(v) for k, v in FAST.items()}},
        files={"image": ("a.png", png_bytes(), "image/png")},
        headers=good,
    )
    assert response.status_code == 200
    spec = client.get("/openapi.json", headers=good).json()
    assert "HTTPBearer" in spec["components"]["securitySchemes"]


def test_missing_size_is_the_models_own(client, tiny_pipe, monkeypatch):
    """No height/width: the model's native size (64×64 for the demo model), not a fixed 512."""
    monkeypatch.setattr(type(tiny_pipe), "native_size", property(lambda self: (64, 72)))
    body = {k: v for k, v in {"prompt": "x", **FAST}.items() if k not in ("height", "width")}
    response = client.post("/v1/text2img", json=body)
    assert response.status_code == 200, response.text
    image = response.json()["images"][0]
    assert (image["height"], image["width"]) == (64, 72)
