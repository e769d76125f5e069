"""Helpers for the server tests: request images, a tiny PNG decompression bomb, answer readers."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

from PIL import Image

from kandinsky.server.app import ServerSettings

# the fastest generation the tiny model allows
FAST = {"height": 64, "width": 64, "num_steps": 2, "prior_steps": 2}


def settings(**overrides) -> ServerSettings:
    return ServerSettings(**{"ui": False, "api_key": None, **overrides})


def png_bytes(size=(64, 64), color=(200, 30, 30), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def mask_bytes(size=(64, 64), box=(16, 16, 48, 48)) -> bytes:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return buffer.getvalue()


def huge_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of width × height pixels that is only a few kB on disk."""
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


def decode_png(item: dict) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(item["png_base64"])))
    assert image.format == "PNG"
    image.load()
    return image


def png_params(image: Image.Image) -> dict:
    assert "parameters" in image.text
    return json.loads(image.text["kandinsky"])
