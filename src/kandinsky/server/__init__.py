"""The HTTP server (FastAPI + uvicorn) and the worker thread that owns the pipeline.

    from kandinsky.server import ServerSettings, serve
    serve(Kandinsky21.from_pretrained(...), ServerSettings(port=7860, api_key="secret"))

Importing this package is cheap; FastAPI is imported when `create_app`/`serve` is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kandinsky.server.worker import QueueFull, Worker

__all__ = ["QueueFull", "ServerSettings", "Worker", "create_app", "serve"]

if TYPE_CHECKING:
    from kandinsky.server.app import ServerSettings, create_app, serve


def __getattr__(name: str) -> Any:
    if name in ("ServerSettings", "create_app", "serve"):
        from kandinsky.server import app

        return getattr(app, name)
    raise AttributeError(f"module 'kandinsky.server' has no attribute {name!r}")
