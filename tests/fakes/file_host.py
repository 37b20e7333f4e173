"""A small HTTP file host on 127.0.0.1 that records every request it receives.

Two roles in the SSRF tests: an *internal-only* service the app must never reach (it
answers a real PNG, so a fetch that got through would visibly succeed), and an allowed
output host that misbehaves on purpose: redirects elsewhere, answers 404, or streams
far more than the download limit (counting what it actually sent).
"""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.threaded_server import ThreadedServer

CHUNK = 64 * 1024


def png_bytes(colour: tuple[int, int, int] = (10, 200, 10), size: int = 16) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(out, "PNG")
    return out.getvalue()


@dataclass(frozen=True)
class Seen:
    """One request as the host received it."""

    method: str
    path: str
    headers: dict[str, str]


class FileHost(ThreadedServer):
    """Serves `files[path]`, `redirects[path]` (302 to a URL), `streams[path]` (that many
    bytes, without a Content-Length, in 64 KiB chunks), else 404. Everything is recorded."""

    name = "recording file host"

    def __init__(self) -> None:
        self._init_server()
        self._lock = threading.Lock()
        self._seen: list[Seen] = []
        self.files: dict[str, tuple[bytes, str]] = {"/secret.png": (png_bytes(), "image/png")}
        self.redirects: dict[str, str] = {}
        self.streams: dict[str, int] = {}
        self.bytes_streamed = 0
        self.app = Starlette(
            routes=[Route("/{path:path}", self._serve, methods=["GET", "HEAD", "POST"])]
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[Seen]:
        with self._lock:
            return list(self._seen)

    async def _serve(self, request: Request) -> Response:
        path = request.url.path
        with self._lock:
            self._seen.append(Seen(request.method, path, dict(request.headers)))
        if path in self.redirects:
            return RedirectResponse(self.redirects[path], status_code=302)
        if path in self.streams:
            return StreamingResponse(self._stream(self.streams[path]), media_type="image/png")
        if path in self.files:
            data, mime = self.files[path]
            return Response(data, media_type=mime)
        return Response(b"not found", status_code=404)

    async def _stream(self, total: int) -> AsyncIterator[bytes]:
        sent = 0
        while sent < total:
            chunk = b"\0" * min(CHUNK, total - sent)
            sent += len(chunk)
            with self._lock:
                self.bytes_streamed += len(chunk)
            yield chunk
            await asyncio.sleep(0)
