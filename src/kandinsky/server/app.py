"""The HTTP server: FastAPI routes over one `Worker` that owns the pipeline.

Routes (JSON in, JSON out; images as base64 PNG):

    GET  /health                   {"status": "ok", "queue": n}          (never needs a token)
    GET  /v1/models                the loaded model, components, device/dtype, samplers, limits
    POST /v1/<mode>                JSON body, <mode> in text2img mix variations img2img inpaint outpaint
    POST /v1/<mode>/upload         the same parameters as multipart/form-data fields, images as files
    GET  /docs, /redoc, /openapi.json
    /                              the Gradio page (kandinsky.server.ui), when installed and enabled

Multipart uploads (`/upload` routes): every parameter is a form field named as in JSON;
`image` and `mask` are files (base64 text is accepted too); numbers and booleans are plain
text (`num_steps=30`, `paste_back=false`), lists are JSON (`seed=[1,2]`, `extend=[0,0,128,0]`)
or, for prompts, repeated fields. For mix, repeat `items` in order: text fields are texts,
files are images (`-F items="a castle" -F items=@photo.png -F weights=[0.5,0.5]`).

Errors are always JSON `{"error": code, "detail": message}`, on every route (the Gradio
page's included): 400 invalid_input / invalid_image, 401 unauthorized, 404 not_found,
405 method_not_allowed, 413 request_too_large / image_too_large, 415 unsupported_media_type,
422 validation_error, 429 queue_full (with Retry-After), 503 missing_weights / shutting_down /
out_of_memory, 504 timeout (with Retry-After), 500 internal_error (a bug; logged).

Limits (`ServerSettings`, listed by /v1/models): output size per image (`max_output_pixels`)
and per request (`max_total_output_pixels`), checked before a job is queued, because the
MoVQ decode at the end of a job cannot be interrupted and its memory grows with the pixels;
input images (`max_image_pixels`, resized by the pipeline, so cheap), steps, images per
request, queue length, request bytes, and the per-request timeout. A request that times out
gets 504 at once; a job that had started may still finish (its result is dropped), and the
Retry-After of 429/504 answers grows with how long the running job has been running.

Auth: with an API key (`ServerSettings.api_key`, default `$KANDINSKY_API_KEY`) every route
except /health needs `Authorization: Bearer <key>`, the docs included. The Gradio page is
outside the bearer check (browsers cannot send the header); it is protected by Gradio's own
login instead, where the password is the same API key (any user name).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import logging
import math
import os
import re
import secrets
import time
import types
import typing
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from http import HTTPStatus
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Mount

from kandinsky.errors import InvalidInput, KandinskyError, MissingWeights
from kandinsky.results import png_info
from kandinsky.server.schemas import (
    IMAGE_FIELDS,
    REQUESTS,
    ErrorResponse,
    GenerationResponse,
    HealthResponse,
    Img2ImgRequest,
    InpaintRequest,
    MixRequest,
    ModelsResponse,
    OutpaintRequest,
    Text2ImgRequest,
    VariationsRequest,
)
from kandinsky.server.worker import JobCancelled, QueueFull, Worker, is_out_of_memory

log = logging.getLogger("kandinsky.server")

API_KEY_ENV = "KANDINSKY_API_KEY"
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")  # never EPS & co (external tools)
_GUARDED_WITH_UI = ("/v1", "/docs", "/redoc", "/openapi.json")
_API_PATHS = (*_GUARDED_WITH_UI, "/health")  # never handed to the Gradio page at "/"


@dataclass
class ServerSettings:
    """How the server listens and what it accepts; `kandinsky serve` fills it from flags."""

    host: str = "127.0.0.1"
    port: int = 7860
    api_key: str | None = field(default_factory=lambda: os.environ.get(API_KEY_ENV) or None)
    max_queue: int = 8
    timeout_s: float = 600
    max_request_bytes: int = 20_000_000
    # OUTPUT size: per image (1536², e.g. 1536×1536 or 2048×1152) and per request (all images
    # together, 4 × 1536²). The 4096² that the pipeline allows needs >100 GB in the MoVQ
    # decode, which no timeout can interrupt; raise these only for a GPU that fits them.
    max_output_pixels: int = 2_359_296
    max_total_output_pixels: int = 9_437_184
    max_image_pixels: int = 16_777_216  # INPUT images (4096²); the pipeline resizes them
    max_steps: int = 250
    max_images: int = 8
    ui: bool = True
    model_id: str = ""


class ApiError(Exception):
    """An error with its HTTP status, stable code and message; rendered as {error, detail}."""

    def __init__(self, status: int, error: str, detail: Any, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers


def _error_response(
    status: int, error: str, detail: Any, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


_ERRORS = {
    400: ErrorResponse,
    401: ErrorResponse,
    413: ErrorResponse,
    422: ErrorResponse,
    429: ErrorResponse,
    503: ErrorResponse,
    504: ErrorResponse,
}
_RESPONSES: dict[int | str, dict[str, Any]] = {code: {"model": m} for code, m in _ERRORS.items()}


# ---------------------------------------------------------------------------- the app


def create_app(
    pipe: Any, settings: ServerSettings | None = None, worker: Worker | None = None
) -> FastAPI:
    """The FastAPI app serving `pipe`; creates (and on shutdown closes) a Worker unless given one."""
    settings = settings if settings is not None else ServerSettings()
    own_worker = worker is None
    if worker is None:
        worker = Worker(pipe, max_queue=settings.max_queue, timeout_s=settings.timeout_s)
    model_id = settings.model_id or getattr(pipe, "model_id", "") or "kandinsky-2-1"

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        if own_worker:
            worker.close(wait=False)

    from kandinsky import __version__

    app = FastAPI(
        title="Kandinsky 2.1",
        version=__version__,
        description=_DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.worker = worker
    app.state.settings = settings
    app.state.pipe = pipe
    _install_error_handlers(app)

    guard = [Depends(HTTPBearer(auto_error=False))] if settings.api_key else []

    @app.get("/health", response_model=HealthResponse, tags=["server"])
    async def health() -> dict[str, Any]:
        """Liveness and queue length; open even when an API key is set."""
        return {"status": "closing" if worker.closed else "ok", "queue": worker.pending}

    @app.get("/v1/models", response_model=ModelsResponse, tags=["server"], dependencies=guard)
    async def models() -> dict[str, Any]:
        """The loaded model: id, components, device and dtype, samplers, this server's limits."""
        return _models_info(pipe, model_id, settings)

    service = _Service(worker, settings)

    def post(path: str, **kwargs: Any) -> Callable:
        return app.post(
            path,
            response_model=GenerationResponse,
            responses=_RESPONSES,
            tags=["generate"],
            dependencies=guard,
            **kwargs,
        )

    @post("/v1/text2img")
    async def text2img(body: Text2ImgRequest) -> dict[str, Any]:
        """Images from text."""
        return await service.generate("text2img", body)

    @post("/v1/mix")
    async def mix(body: MixRequest) -> dict[str, Any]:
        """A weighted mixture of texts and images."""
        return await service.generate("mix", body)

    @post("/v1/variations")
    async def variations(body: VariationsRequest) -> dict[str, Any]:
        """New images with the content and style of an image."""
        return await service.generate("variations", body)

    @post("/v1/img2img")
    async def img2img(body: Img2ImgRequest) -> dict[str, Any]:
        """Re-imagine an image towards a prompt."""
        return await service.generate("img2img", body)

    @post("/v1/inpaint")
    async def inpaint(body: InpaintRequest) -> dict[str, Any]:
        """Repaint the white part of a mask."""
        return await service.generate("inpaint", body)

    @post("/v1/outpaint")
    async def outpaint(body: OutpaintRequest) -> dict[str, Any]:
        """Grow the canvas around an image."""
        return await service.generate("outpaint", body)

    for mode, schema in REQUESTS.items():
        _add_upload_route(app, mode, schema, service, guard, post)

    ui_mounted = _mount_ui(app, worker, settings) if settings.ui else False
    app.add_middleware(_Guard, settings=settings, ui_mounted=ui_mounted)
    return app


def serve(pipe: Any, settings: ServerSettings | None = None) -> None:
    """Run the server in the foreground (blocks until Ctrl-C)."""
    import uvicorn

    settings = settings if settings is not None else ServerSettings()
    if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        log.warning(
            "serving on %s without an API key: anyone who can reach this port can use the model "
            "(set --api-key or $%s)",
            settings.host,
            API_KEY_ENV,
        )
    uvicorn.run(create_app(pipe, settings), host=settings.host, port=settings.port)


_DESCRIPTION = """
Kandinsky 2.1 over HTTP. One worker owns the model: requests run one at a time, in order,
from a bounded queue (429 with Retry-After when it is full).

* JSON: `POST /v1/<mode>` with the Python API's parameter names and defaults; images as
  base64 (raw or `data:image/png;base64,...`). Answers carry base64 PNGs whose text chunks
  hold every parameter.
* Uploads: `POST /v1/<mode>/upload` as `multipart/form-data`: the same fields as form fields,
  `image` / `mask` as files, lists as JSON text (`seed=[1,2]`). For mix, repeat `items`
  (text fields are texts, files are images).
* Errors: `{"error": code, "detail": message}`.
* Auth (when the server has an API key): `Authorization: Bearer <key>` on every route but
  `/health`.
"""


# ---------------------------------------------------------------------------- generation


class _Service:
    """Request → kwargs (images decoded, limits checked) → worker → response."""

    def __init__(self, worker: Worker, settings: ServerSettings):
        self.worker = worker
        self.settings = settings

    async def generate(self, mode: str, body: BaseModel) -> dict[str, Any]:
        started = time.monotonic()
        kwargs = await run_in_threadpool(self._prepare, mode, body)
        try:
            future = self.worker.submit(mode, kwargs)
        except QueueFull as e:
            raise ApiError(429, "queue_full", str(e), _retry_after(e.retry_after)) from None
        except RuntimeError as e:
            raise ApiError(503, "shutting_down", f"the server is shutting down ({e})") from None
        waiter = asyncio.wrap_future(future)
        remaining = max(self.settings.timeout_s - (time.monotonic() - started), 0.001)
        try:
            done, _ = await asyncio.wait({waiter}, timeout=remaining)
        except asyncio.CancelledError:  # the client went away: stop its job
            self.worker.cancel(future)
            waiter.add_done_callback(_consume)
            raise
        if not done:
            fate = self.worker.give_up(future)
            if fate != "finished":
                waiter.add_done_callback(_consume)
                raise self._timeout(fate)
            # it ended just now; its outcome reaches the event loop in a moment
        try:
            result = await waiter
        except asyncio.CancelledError:
            raise ApiError(503, "shutting_down", "the job was cancelled by shutdown") from None
        except Exception as e:
            raise _map_job_error(e) from e
        images = await run_in_threadpool(_encode_pngs, result)
        return {
            "images": images,
            "params": result.params,
            "elapsed_s": round(time.monotonic() - started, 4),
        }

    def _timeout(self, fate: str) -> ApiError:
        """504 saying truthfully what became of the job (see Worker.give_up)."""
        limit = f"timed out after {self.settings.timeout_s:g} s (the server's per-request timeout)"
        if fate == "running":
            detail = (
                f"{limit}; the job is still finishing and will be discarded (it stops at its "
                "next denoising step; the final decode cannot be interrupted)"
            )
        else:
            detail = f"{limit} while waiting in the queue; the job was cancelled before it started"
        return ApiError(504, "timeout", detail, _retry_after(self.worker.estimate_wait()))

    def _prepare(self, mode: str, body: BaseModel) -> dict[str, Any]:
        kwargs = body.model_dump()
        if mode in ("text2img", "mix", "variations"):  # a missing side: the model's own
            native = getattr(self.worker.pipe, "native_size", (512, 512))
            for key, side in zip(("height", "width"), native, strict=True):
                if kwargs.get(key) is None:
                    kwargs[key] = side
        self._check_limits(kwargs)
        pixels = self.settings.max_image_pixels
        for name in IMAGE_FIELDS:
            if name in kwargs:
                pixel_mode = "L" if name == "mask" else "RGB"
                kwargs[name] = decode_image(kwargs[name], name, pixels, pixel_mode)
        if mode == "mix":
            kwargs["items"] = [
                item
                if isinstance(item, str)
                else item["text"]
                if "text" in item
                else decode_image(item["image"], f"items[{i}]", pixels)
                for i, item in enumerate(kwargs["items"])
            ]
        if mode in ("img2img", "inpaint"):  # the size defaults to the image's
            image = kwargs["image"]
            height = kwargs["height"] or max(64, image.height // 8 * 8)
            width = kwargs["width"] or max(64, image.width // 8 * 8)
            self._check_output(height, width, kwargs, "the output (the image's size by default)")
        if mode == "outpaint":
            self._check_outpaint_canvas(kwargs)
            for key in ("extend", "size"):
                if kwargs[key] is not None:
                    kwargs[key] = tuple(kwargs[key])
        return kwargs

    def _check_limits(self, kwargs: dict[str, Any]) -> None:
        s = self.settings
        defaults = getattr(getattr(self.worker, "pipe", None), "defaults", None)
        for key in ("num_steps", "prior_steps"):
            value = kwargs.get(key)
            if value is None and defaults is not None:  # left out: the model's own count
                value = getattr(defaults, key)
            if isinstance(value, int) and value > s.max_steps:
                raise ApiError(
                    400,
                    "invalid_input",
                    f"{key} is {value}; this server allows at most {s.max_steps} steps",
                )
        count = _image_count(kwargs)
        if count > s.max_images:
            raise ApiError(
                400,
                "invalid_input",
                f"{count} images asked (num_images × prompts); this server allows at most "
                f"{s.max_images} per request",
            )
        height, width = kwargs.get("height"), kwargs.get("width")
        if isinstance(height, int) and isinstance(width, int):
            self._check_output(height, width, kwargs, "height × width")

    def _check_output(self, height: int, width: int, kwargs: dict[str, Any], what: str) -> None:
        """Output size limits: per image, then all the request's images together."""
        s = self.settings
        pixels = height * width
        if pixels > s.max_output_pixels:
            raise ApiError(
                400,
                "invalid_input",
                f"{what} is {width}×{height} = {pixels} pixels; this server allows at most "
                f"{s.max_output_pixels} pixels per output image (max_output_pixels, e.g. "
                f"{_square(s.max_output_pixels)}); ask for a smaller size",
            )
        count = _image_count(kwargs)
        if pixels * count > s.max_total_output_pixels:
            raise ApiError(
                400,
                "invalid_input",
                f"{count} images of {width}×{height} are {pixels * count} pixels; this server "
                f"allows at most {s.max_total_output_pixels} output pixels per request "
                "(max_total_output_pixels); ask for fewer images or a smaller size",
            )

    def _check_outpaint_canvas(self, kwargs: dict[str, Any]) -> None:
        image = kwargs["image"]
        if kwargs["size"] is not None:
            width, height = kwargs["size"]
        elif kwargs["extend"] is not None:
            left, top, right, bottom = kwargs["extend"]
            width, height = image.width + left + right, image.height + top + bottom
        else:
            return
        self._check_output(height, width, kwargs, "the outpainted canvas")


def _image_count(kwargs: dict[str, Any]) -> int:
    """Images a request makes: num_images per prompt."""
    prompts = kwargs.get("prompt")
    num_images = kwargs.get("num_images", 1)
    num_images = num_images if isinstance(num_images, int) and num_images > 0 else 1
    return num_images * (len(prompts) if isinstance(prompts, list) and prompts else 1)


def _square(pixels: int) -> str:
    side = math.isqrt(pixels)
    return f"{side}×{side}"


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def _consume(future: asyncio.Future) -> None:
    """Read an abandoned job's outcome so asyncio does not log 'exception never retrieved'."""
    if not future.cancelled():
        future.exception()


def _map_job_error(e: BaseException) -> ApiError:
    if isinstance(e, ApiError):
        return e
    if isinstance(e, InvalidInput):
        return ApiError(400, "invalid_input", str(e))
    if isinstance(e, MissingWeights):
        return ApiError(503, "missing_weights", str(e))
    if isinstance(e, JobCancelled):
        return ApiError(503, "cancelled", str(e))
    if is_out_of_memory(e):  # logged by the worker, which freed the memory and lives on
        return ApiError(
            503,
            "out_of_memory",
            f"the server ran out of memory on this request ({type(e).__name__}); "
            "try a smaller size or fewer images",
        )
    if isinstance(e, KandinskyError):
        log.error("model error: %s", e)
        return ApiError(503, "model_error", str(e))
    log.error("generation failed", exc_info=e)
    return ApiError(500, "internal_error", "the server failed on this request; see its log")


def _encode_pngs(result: Any) -> list[dict[str, Any]]:
    out = []
    for image, seed, params in zip(result.images, result.seeds, result.params, strict=True):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", pnginfo=png_info(params))
        out.append(
            {
                "png_base64": base64.b64encode(buffer.getvalue()).decode("ascii"),
                "seed": seed,
                "width": image.width,
                "height": image.height,
            }
        )
    return out


# ---------------------------------------------------------------------------- images in


def decode_base64(text: str, name: str) -> bytes:
    """Raw base64 (standard or URL-safe, padding optional) or a `data:...;base64,` URL → bytes."""
    data = text.strip()
    if data.startswith("data:"):
        header, comma, data = data.partition(",")
        if not comma or not header.endswith(";base64"):
            raise ApiError(
                400,
                "invalid_image",
                f"{name} is a data URL without base64 data; expected 'data:image/png;base64,...'",
            )
    data = "".join(data.split())
    if not data:
        raise ApiError(400, "invalid_image", f"{name} is empty; send the image as base64")
    altchars = b"-_" if ("-" in data or "_" in data) else None
    try:
        return base64.b64decode(data + "=" * (-len(data) % 4), altchars=altchars, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(
            400,
            "invalid_image",
            f"{name} is not valid base64; send the image file's bytes base64-encoded "
            "(or a data URL 'data:image/png;base64,...')",
        ) from None


def decode_image(value: str | bytes, name: str, max_pixels: int, mode: str = "RGB") -> Image.Image:
    """Bytes (or base64 text) of a PNG/JPEG/WebP/… → a PIL image in `mode`, with size limits.

    The size is read from the header and checked against `max_pixels` before any pixel is
    decoded, so small files that expand to huge images (decompression bombs) are refused.
    """
    data = decode_base64(value, name) if isinstance(value, str) else value
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as e:
        raise _too_large(name, str(e), max_pixels) from None
    except Exception:  # UnidentifiedImageError, OSError, SyntaxError, …: not an image we read
        raise ApiError(
            400,
            "invalid_image",
            f"{name} is not an image this server can read ({', '.join(IMAGE_FORMATS)})",
        ) from None
    width, height = image.size
    if width * height > max_pixels:
        raise _too_large(name, f"{width}×{height} = {width * height} pixels", max_pixels)
    try:
        image.load()
    except Image.DecompressionBombError as e:
        raise _too_large(name, str(e), max_pixels) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, MemoryError):
        raise ApiError(
            400, "invalid_image", f"{name} could not be decoded (truncated or corrupt file)"
        ) from None
    try:
        return image.convert(mode)
    except (ValueError, OSError):
        raise ApiError(
            400,
            "invalid_image",
            f"{name} has pixel mode {image.mode}, which cannot be converted to {mode}",
        ) from None


def _too_large(name: str, what: str, max_pixels: int) -> ApiError:
    return ApiError(
        413,
        "image_too_large",
        f"{name} is too large ({what}); this server accepts images of at most {max_pixels} pixels",
    )


# ---------------------------------------------------------------------------- uploads


def _add_upload_route(
    app: FastAPI,
    mode: str,
    schema: type[BaseModel],
    service: _Service,
    guard: list,
    post: Callable,
) -> None:
    async def upload(request: Request) -> dict[str, Any]:
        body = await _form_body(request, mode, schema, service.settings)
        return await service.generate(mode, body)

    upload.__doc__ = (
        f"`{mode}` with a multipart/form-data body: the JSON fields as form fields, images as "
        "files, lists as JSON text."
    )
    post(
        f"/v1/{mode}/upload",
        name=f"{mode}_upload",
        openapi_extra={"requestBody": _multipart_schema(schema)},
    )(upload)


async def _form_body(
    request: Request, mode: str, schema: type[BaseModel], settings: ServerSettings
) -> BaseModel:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"this route takes multipart/form-data (got {content_type or 'no content type'}); "
            f"send JSON to /v1/{mode}",
        )
    form = await request.form(max_part_size=settings.max_request_bytes)
    try:
        values: dict[str, list[Any]] = {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key not in ("items", *IMAGE_FIELDS):
                    raise ApiError(
                        400,
                        "invalid_input",
                        f"{key!r} was sent as a file; only image, mask (and mix items) can be files",
                    )
                encoded = base64.b64encode(await value.read()).decode("ascii")
                value = {"image": encoded} if key == "items" else encoded
            values.setdefault(key, []).append(value)
    finally:
        await form.close()
    fields = {}
    for key, items in values.items():
        info = schema.model_fields.get(key)
        if info is None or key in ("items", *IMAGE_FIELDS):  # unknown: let pydantic name it
            fields[key] = items if key == "items" or len(items) > 1 else items[0]
            continue
        if _accepts_str(info.annotation):
            fields[key] = items if len(items) > 1 else items[0]
            continue
        parsed = [_parse_form_value(v) for v in items if v != ""]
        if parsed:
            fields[key] = parsed if len(parsed) > 1 else parsed[0]
    try:
        return schema.model_validate(fields)
    except ValidationError as e:
        raise RequestValidationError(
            [{**err, "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)]
        ) from None


def _accepts_str(annotation: Any) -> bool:
    if annotation is str:
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return any(_accepts_str(a) for a in typing.get_args(annotation))
    return False


def _parse_form_value(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value  # pydantic names the field and the expected type


def _multipart_schema(schema: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema of `schema` as a form: image fields as binary files."""
    body = schema.model_json_schema(ref_template="#/components/schemas/{model}")
    body.pop("$defs", None)
    props = body.get("properties", {})
    for name in IMAGE_FIELDS:
        if name in props:
            props[name] = {"type": "string", "format": "binary", "description": "image file"}
    if "items" in props:
        props["items"] = {
            "type": "array",
            "items": {"type": "string"},
            "description": "repeat the field: text values are texts, files are images",
        }
    for key, prop in props.items():
        if key in (*IMAGE_FIELDS, "items"):
            continue
        if "anyOf" in prop or prop.get("type") == "array":  # travels as text: JSON for lists
            text = {"type": "string", "title": prop.get("title", key)}
            if _accepts_str(schema.model_fields[key].annotation):
                hint = "repeat the field to send a list"
                if prop.get("default") is not None:
                    text["default"] = prop["default"]
            else:
                hint = "as text, a number or a JSON list such as [1, 2]"
                if prop.get("default") is not None:
                    text["default"] = json.dumps(prop["default"])
            text["description"] = f"{prop.get('description', '')} Form field: {hint}.".strip()
            props[key] = text
    body.pop("examples", None)
    return {"content": {"multipart/form-data": {"schema": body}}, "required": True}


# ---------------------------------------------------------------------------- info


def _models_info(pipe: Any, model_id: str, settings: ServerSettings) -> dict[str, Any]:
    from kandinsky.defaults import PRIOR_SAMPLERS
    from kandinsky.diffusion.samplers import SAMPLERS

    parts = pipe.parts
    names = (
        "prior",
        "clip_text",
        "clip_tokenizer",
        "clip_vision",
        "text_encoder",
        "tokenizer",
        "unet",
        "inpaint_unet",
        "movq",
    )
    components = [n for n in names if getattr(parts, n, None) is not None]
    device, dtype = "cpu", "float32"
    for net in parts.networks().values():
        param = next(net.parameters(), None)
        if param is not None:
            device, dtype = str(param.device), str(param.dtype).removeprefix("torch.")
            break
    limits = asdict(settings)
    for key in ("host", "port", "api_key", "ui", "model_id"):
        limits.pop(key)
    return {
        "models": [
            {
                "id": model_id,
                "components": components,
                "device": device,
                "dtype": dtype,
                "inpainting": parts.inpaint_unet is not None,
                "defaults": pipe.defaults.to_dict(),
            }
        ],
        "samplers": list(SAMPLERS),
        "prior_samplers": list(PRIOR_SAMPLERS),
        "modes": list(REQUESTS),
        "limits": limits,
    }


# ---------------------------------------------------------------------------- errors


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
}


async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """404, 405 & co. as {error, detail}; also installed on the Gradio page's app."""
    code = _HTTP_CODES.get(exc.status_code)
    if code is None:
        try:
            phrase = HTTPStatus(exc.status_code).phrase
        except ValueError:
            phrase = "HTTP error"
        code = re.sub(r"[^a-z0-9]+", "_", phrase.lower()).strip("_")
    return _error_response(exc.status_code, code, exc.detail, exc.headers)


def _install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_error)

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc.status, exc.error, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        messages = []
        for err in exc.errors():
            if err.get("type") == "json_invalid":
                reason = (err.get("ctx") or {}).get("error", "JSON decode error")
                messages.append(f"the body is not valid JSON: {reason}")
                continue
            loc = [str(p) for p in err.get("loc", ()) if p != "body"]
            where = ".".join(loc) if loc else "body"
            messages.append(f"{where}: {err.get('msg', 'invalid')}")
        detail = "; ".join(messages) or "the request is not valid"
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/") and not request.url.path.endswith("/upload"):
            detail += (
                f" (this route takes JSON; send multipart uploads to {request.url.path}/upload)"
            )
        return _error_response(422, "validation_error", detail)

    @app.exception_handler(KandinskyError)
    async def kandinsky_error(_request: Request, exc: KandinskyError) -> JSONResponse:
        e = _map_job_error(exc)
        return _error_response(e.status, e.error, e.detail, e.headers)

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        return _error_response(500, "internal_error", "the server failed on this request")


# ---------------------------------------------------------------------------- auth + size


class _Guard:
    """ASGI middleware, before any body is read: bearer auth, then the request size limit."""

    def __init__(self, app: Any, settings: ServerSettings, ui_mounted: bool):
        self.app = app
        self.key = settings.api_key.encode() if settings.api_key else None
        self.max_bytes = settings.max_request_bytes
        self.ui_mounted = ui_mounted

    def _guarded(self, path: str) -> bool:
        if path == "/health":
            return False
        if self.ui_mounted:  # the Gradio page has its own login
            return any(path == p or path.startswith(p + "/") for p in _GUARDED_WITH_UI)
        return True

    async def __call__(
        self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        headers = dict(scope.get("headers") or [])
        if self.key is not None and self._guarded(path):
            problem = self._auth_problem(headers.get(b"authorization", b""))
            if problem:
                challenge = 'Bearer realm="kandinsky"'
                if "wrong" in problem:
                    challenge += ', error="invalid_token"'
                await _send_json(
                    scope, send, 401, "unauthorized", problem, {"WWW-Authenticate": challenge}
                )
                return
        if not path.startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await _send_json(scope, send, 400, "bad_request", "Content-Length is not a number")
                return
            if declared > self.max_bytes:
                await _send_json(scope, send, 413, "request_too_large", self._too_large(declared))
                return
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                await _send_json(scope, send, 413, "request_too_large", self._too_large(total))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _auth_problem(self, header: bytes) -> str | None:
        scheme, _, token = header.strip().partition(b" ")
        if not header or scheme.lower() != b"bearer" or not token.strip():
            return "this server needs an API key: send 'Authorization: Bearer <key>'"
        if not secrets.compare_digest(token.strip(), self.key or b""):
            return "wrong API key"
        return None

    def _too_large(self, size: int) -> str:
        return (
            f"the request body is {size} bytes or more; this server accepts at most "
            f"{self.max_bytes} bytes"
        )


async def _send_json(
    scope: dict,
    send: Callable,
    status: int,
    error: str,
    detail: str,
    headers: dict[str, str] | None = None,
) -> None:
    response = JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)
    await response(scope, _no_receive, send)


async def _no_receive() -> dict:  # pragma: no cover - JSONResponse never reads
    return {"type": "http.disconnect"}


# ---------------------------------------------------------------------------- the UI


def _mount_ui(app: FastAPI, worker: Worker, settings: ServerSettings) -> bool:
    """Mount kandinsky.server.ui's Gradio page at "/" when that module exists."""
    try:
        from kandinsky.server.ui import build_ui
    except ImportError as e:
        if getattr(e, "name", None) == "kandinsky.server.ui":
            log.info("no web UI module; the HTTP API is served alone")
        else:
            log.warning("the web UI could not be loaded (%s); the HTTP API is served alone", e)
        return False
    import gradio

    auth = None
    if settings.api_key:
        key = settings.api_key

        def auth(_username: str, password: str) -> bool:
            return secrets.compare_digest(password.encode(), key.encode())

    gradio.mount_gradio_app(
        app,
        build_ui(worker, settings),
        path="/",
        server_name=settings.host,
        server_port=settings.port,
        auth=auth,
        auth_message="Log in with any user name and the server's API key as the password."
        if auth
        else None,
    )
    mount = app.router.routes[-1]
    assert isinstance(mount, Mount), mount
    # A catch-all mount at "/" would answer the API's 404s and 405s (GET /v1/text2img) with
    # Gradio's {"detail": "Not Found"}: keep the API's paths away from it, and give the page's
    # own HTTP errors the API's {error, detail} shape.
    app.router.routes[-1] = _UiMount(mount.path or "/", app=mount.app, name=mount.name)
    mount.app.add_exception_handler(StarletteHTTPException, _http_error)
    return True


class _UiMount(Mount):
    """The Gradio page's mount at "/", which never matches the API's own paths."""

    def matches(self, scope: Any) -> tuple[Match, Any]:
        path = scope.get("path", "")
        if scope["type"] == "http" and any(
            path == p or path.startswith(p + "/") for p in _API_PATHS
        ):
            return Match.NONE, {}
        return super().matches(scope)
