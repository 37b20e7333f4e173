"""The listening sockets, bound before anything else of the app exists.

uvicorn binds its port only after the app's start-up has run, and start-up creates the
first account and prints its one-time password. A busy port then killed the process
with uvicorn's raw "address already in use" after the password was shown, and the next
start showed none (the account existed by then). Binding first, here, turns a busy port
into a clear message before any file, account or password is made; the bound sockets
are handed to uvicorn, so nothing can take the port in between.

The addresses are those asyncio's `create_server(host=..., port=...)` (what uvicorn
uses) would bind: every address the host name resolves to, IPv6 ones IPv6-only.
"""

from __future__ import annotations

import errno
import socket

from core.errors import ConfigError


def bind(host: str, port: int) -> list[socket.socket]:
    """Listening-ready sockets on `host`:`port`; ConfigError saying why they cannot be."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(
            f"--host {host}: not an address this machine has ({exc.strerror})."
        ) from None
    bound: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            bound.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except OSError as exc:
        for sock in bound:
            sock.close()
        raise ConfigError(_why(host, port, exc)) from None
    return bound


def _why(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (
            f"Port {port} on {host} is already in use (another Atelier, or another "
            f"program). Stop it, or start on another port: atelier run --port {port + 1}. "
            "Nothing was created."
        )
    if exc.errno == errno.EACCES:
        return (
            f"Port {port} on {host} needs privileges this user lacks; use a port above "
            "1023 (atelier run --port 8000). Nothing was created."
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"--host {host}: not an address of this machine. Nothing was created."
    return f"Cannot listen on {host}:{port} ({exc.strerror}). Nothing was created."
