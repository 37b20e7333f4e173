"""A small sticky-session reverse proxy for HTTP and WebSocket, for replica tests.

Chainlit keeps each socket's session in the memory of the process that accepted it, so
several `atelier run` replicas must sit behind a proxy that sends a browser back to the
same replica every time (nginx's `sticky cookie`, `ip_hash`, a load balancer's session
affinity). CI cannot rely on nginx being installed, so the tests use this instead: plain
asyncio streams, no dependency, one request per client connection.

The rule is the one production proxies follow. The first response to a client without
the cookie names the replica that answered (`Set-Cookie: atelier_replica=r0`); later
requests carrying it go there. When that replica does not accept the connection (it was
killed), the request goes to the next live one and the response re-pins the client to
it: the client fails over on its next request, and what it had open on the dead one
(its socket) is simply cut, as a browser sees it.

Each request is forwarded with `Connection: close` (upgrades excepted), so the proxy
never has to find where one response ends and the next begins: it pipes bytes until the
replica closes. `X-Forwarded-For` carries the client's address, which uvicorn honours
from 127.0.0.1 (its default `FORWARDED_ALLOW_IPS`), so login limits per address still
see the real client.

Run by hand: python -m tests.sticky_proxy --port 8000 127.0.0.1:8001 127.0.0.1:8002
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie

COOKIE = "atelier_replica"
_HEAD_LIMIT = 64 * 1024
_HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer"}
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Backend:
    name: str  # the cookie's value: "r0", "r1", ...
    host: str
    port: int


@dataclass(frozen=True)
class Routed:
    """One forwarded request, for tests to see where each went."""

    method: str
    path: str
    backend: str
    pinned: str | None  # the replica the client's cookie named, if any
    upgrade: bool


class StickyProxy:
    def __init__(self, backends: list[tuple[str, int]], cookie: str = COOKIE) -> None:
        if not backends:
            raise ValueError("StickyProxy needs at least one backend.")
        self.backends = [Backend(f"r{i}", host, port) for i, (host, port) in enumerate(backends)]
        self.cookie = cookie
        self.routed: list[Routed] = []
        self._next = itertools.cycle(range(len(self.backends)))
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def backend(self, name: str) -> Backend:
        return next(b for b in self.backends if b.name == name)

    async def start(self, port: int = 0) -> StickyProxy:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", port, limit=_HEAD_LIMIT
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> StickyProxy:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ one connection

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a client or replica went away mid-request: its connection just ends
        except asyncio.CancelledError:
            pass  # stop(): ended here, as asyncio's server callback expects a result
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, headers = _parse_head(head)
        method, path, _ = request_line.split(b" ", 2)
        upgrade = b"upgrade" in _tokens(headers, b"connection")
        pinned = self._pinned(headers)
        picked = await self._connect(pinned)
        if picked is None:
            writer.write(_unavailable())
            await writer.drain()
            return
        backend, up_reader, up_writer = picked
        self.routed.append(Routed(method.decode(), path.decode(), backend.name, pinned, upgrade))
        client = writer.get_extra_info("peername") or ("unknown", 0)
        up_writer.write(_forward_head(request_line, headers, client[0], upgrade))
        await up_writer.drain()
        upstream = asyncio.create_task(_pipe(reader, up_writer))
        try:
            response = await up_reader.readuntil(b"\r\n\r\n")
            if backend.name != pinned:
                response = _with_cookie(response, self.cookie, backend.name)
            writer.write(response)
            await writer.drain()
            await _pipe(up_reader, writer)
        finally:
            upstream.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await upstream
            up_writer.close()

    def _pinned(self, headers: list[tuple[bytes, bytes]]) -> str | None:
        jar = SimpleCookie()
        for name, value in headers:
            if name.lower() == b"cookie":
                with contextlib.suppress(CookieError):
                    jar.load(value.decode("latin-1"))
        morsel = jar.get(self.cookie)
        names = {b.name for b in self.backends}
        return morsel.value if morsel is not None and morsel.value in names else None

    async def _connect(
        self, pinned: str | None
    ) -> tuple[Backend, asyncio.StreamReader, asyncio.StreamWriter] | None:
        """The pinned replica if it accepts, else the next live one (round-robin)."""
        start = next(self._next)
        order = [self.backends[(start + i) % len(self.backends)] for i in range(len(self.backends))]
        if pinned is not None:
            order.sort(key=lambda b: b.name != pinned)
        for backend in order:
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection(backend.host, backend.port, limit=_HEAD_LIMIT), 5
                )
            except (OSError, TimeoutError):
                continue
            return backend, up_reader, up_writer
        return None


# ---------------------------------------------------------------------- HTTP heads


def _parse_head(head: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    lines = head.rstrip(b"\r\n").split(b"\r\n")
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name.strip(), value.strip()))
    return lines[0], headers


def _tokens(headers: list[tuple[bytes, bytes]], name: bytes) -> set[bytes]:
    return {
        token.strip().lower()
        for key, value in headers
        if key.lower() == name
        for token in value.split(b",")
    }


def _forward_head(
    request_line: bytes, headers: list[tuple[bytes, bytes]], client: str, upgrade: bool
) -> bytes:
    kept = [
        (name, value)
        for name, value in headers
        if name.lower() not in _HOP_BY_HOP and name.lower() != b"x-forwarded-for"
    ]
    forwarded_for = [v for n, v in headers if n.lower() == b"x-forwarded-for"]
    kept.append((b"X-Forwarded-For", b", ".join([*forwarded_for, client.encode()])))
    kept.append((b"X-Forwarded-Proto", b"http"))
    kept.append((b"Connection", b"Upgrade" if upgrade else b"close"))
    lines = [request_line, *(name + b": " + value for name, value in kept)]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _with_cookie(response: bytes, cookie: str, value: str) -> bytes:
    status, _, rest = response.partition(b"\r\n")
    line = f"Set-Cookie: {cookie}={value}; Path=/; HttpOnly; SameSite=Lax".encode()
    return status + b"\r\n" + line + b"\r\n" + rest


def _unavailable() -> bytes:
    body = b"No replica is available.\n"
    return (
        b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nConnection: close\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy bytes until EOF (or the other side goes away)."""
    with contextlib.suppress(ConnectionError, OSError):
        while chunk := await reader.read(_CHUNK):
            writer.write(chunk)
            await writer.drain()


# ---------------------------------------------------------------------- by hand


async def _main(port: int, backends: list[tuple[str, int]]) -> None:
    proxy = await StickyProxy(backends).start(port)
    print(f"sticky proxy on {proxy.base_url} -> {[f'{h}:{p}' for h, p in backends]}")
    try:
        await asyncio.Event().wait()
    finally:
        await proxy.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("backends", nargs="+", help="host:port of each replica")
    args = parser.parse_args()
    backends = [(b.rsplit(":", 1)[0], int(b.rsplit(":", 1)[1])) for b in args.backends]
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args.port, backends))


if __name__ == "__main__":
    main()
