"""The one way the server downloads a URL that a provider or a model handed it.

Whoever owns a Replicate model chooses its output URL, and any user may name any model,
so an output link is attacker-controlled. Fetched naively it reaches whatever the server
can reach (the app itself, the LAN, cloud metadata), and the error text tells a port
from a path from a closed door. Here:

1. Only http and https; the URL is parsed once (httpx.URL) and redirects are followed by
   hand, at most `FetchPolicy.max_redirects` hops, each a new check.
2. Every connection goes through `_GuardedNetwork`, an httpcore network backend whose
   `connect_tcp` resolves the host itself, refuses unless every address it got is one
   `FetchPolicy.permits` (public, or on the operator's allow-list), and then connects to
   that checked address: a second DNS answer cannot swap in another (no rebinding
   window). TLS still verifies the certificate against the host name.
3. The size limit is enforced while reading (and on a declared Content-Length before
   it); the whole download, redirects included, has one deadline.
4. Whatever goes wrong (blocked address, refused connection, 404, timeout, too large,
   not an image: see `refused`) the user reads the same `DOWNLOAD_FAILED` text; what
   happened goes to the `provider_download_refused` log event for the operator.

httpcore (httpx's own transport layer) is used directly because its network backend is
a public extension point; no API token or cookie is ever sent to an output host.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any

import httpcore
import httpx

from core.errors import BackendFailed
from core.logging_setup import get_logger
from core.redact import redact_urls
from pipelines.downloads.fetch_policy import FetchPolicy, IPAddress

log = get_logger(__name__)

DOWNLOAD_FAILED = (
    "The model finished, but what it made could not be downloaded or is not a file "
    "Atelier can use, so nothing was kept. Try again; if it keeps happening, try "
    "another model."
)
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_HEADERS = [
    (b"Accept", b"*/*"),
    (b"Accept-Encoding", b"identity"),  # sizes are counted as sent; no decompression bombs
    (b"User-Agent", b"atelier"),
]
# What a failed download can raise below us; anything else is a bug and propagates.
_FAILURES = (
    httpcore.TimeoutException,
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.UnsupportedProtocol,
    httpx.InvalidURL,
    OSError,  # resolver and TLS errors
    UnicodeError,  # a host name IDNA cannot encode
    ValueError,
)


class _Refusal(Exception):
    """Raised inside the download; becomes `refused(...)` at its end."""

    def __init__(self, reason: str, **detail: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def refused(url: str, reason: str, **detail: Any) -> BackendFailed:
    """The neutral error for the user; the reason and detail go to the log only."""
    log.warning(
        "provider_download_refused", url=redact_urls(str(url))[:300], reason=reason, **detail
    )
    return BackendFailed(DOWNLOAD_FAILED)


class _GuardedNetwork(httpcore.AsyncNetworkBackend):
    """Resolve, check every address, connect to a checked one."""

    def __init__(self, policy: FetchPolicy) -> None:
        self._policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await _resolve(host, port, timeout)
        if not addresses:
            raise _Refusal("no address", host=host, port=port)
        blocked = [a for a in addresses if not self._policy.permits(host, port, a)]
        if blocked:  # one inside address is enough: the name is not to be trusted
            raise _Refusal("blocked address", host=host, port=port, addresses=_texts(blocked))
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        raise _Refusal("unix socket")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


async def _resolve(host: str, port: int, limit_s: float | None) -> list[IPAddress]:
    """Every address `host` resolves to (an IP literal in any form resolves to itself)."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(limit_s):
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found: list[IPAddress] = []
    for family, *_, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            found.append(ipaddress.ip_address(str(sockaddr[0])))
    return list(dict.fromkeys(found))


def _texts(addresses: list[IPAddress]) -> list[str]:
    return [str(address) for address in addresses]


class GuardedFetcher:
    """Downloads for one event loop (httpcore connections cannot move between loops)."""

    def __init__(self, policy: FetchPolicy) -> None:
        self.policy = policy
        self._pool = httpcore.AsyncConnectionPool(
            network_backend=_GuardedNetwork(policy),
            max_connections=32,
            keepalive_expiry=5.0,
            retries=0,
        )

    async def fetch(self, url: str, *, max_bytes: int) -> bytes:
        """The body at `url`, or BackendFailed(DOWNLOAD_FAILED); never a partial body."""
        try:
            async with asyncio.timeout(self.policy.timeout_s):
                return await self._follow(url, max_bytes)
        except _Refusal as exc:
            raise refused(url, exc.reason, **exc.detail) from None
        except TimeoutError:
            raise refused(url, "timed out", limit_s=self.policy.timeout_s) from None
        except _FAILURES as exc:
            raise refused(url, type(exc).__name__, error=redact_urls(str(exc))[:200]) from None

    async def post(
        self, url: str, body: bytes, headers: list[tuple[bytes, bytes]], *, timeout_s: float
    ) -> int:
        """POST `body` to `url` under the same address rules; the response's status.

        For webhooks (chat_app/webhooks.py): a user names the URL, so it is as untrusted
        as a provider's output link. No redirect is followed (a POST must not be
        replayed elsewhere) and the response body is not read past 64 KiB. Any failure,
        a blocked address included, raises `refused(...)`'s neutral BackendFailed.
        """
        current = httpx.URL(url)
        try:
            if current.scheme not in ("http", "https") or not current.host:
                raise _Refusal("not an http(s) URL", scheme=current.scheme)
            target = httpcore.URL(
                scheme=current.raw_scheme,
                host=current.raw_host,
                port=current.port,
                target=current.raw_path,
            )
            timeouts = dict.fromkeys(("read", "write", "pool"), timeout_s)
            timeouts["connect"] = min(timeout_s, self.policy.connect_timeout_s)
            async with asyncio.timeout(timeout_s):
                async with self._pool.stream(
                    "POST",
                    target,
                    headers=[*_HEADERS, *headers, (b"Content-Length", str(len(body)).encode())],
                    content=body,
                    extensions={"timeout": timeouts},
                ) as response:
                    await _read_capped(response, 64 * 1024)
                    return response.status
        except _Refusal as exc:
            raise refused(url, exc.reason, **exc.detail) from None
        except TimeoutError:
            raise refused(url, "timed out", limit_s=timeout_s) from None
        except _FAILURES as exc:
            raise refused(url, type(exc).__name__, error=redact_urls(str(exc))[:200]) from None

    async def permitted(self, url: str) -> bool:
        """Would a request to `url` be let through (scheme, and every address its host
        resolves to)? A check before accepting a URL to use later; the request itself
        checks again at connect time (DNS may change meanwhile)."""
        try:
            current = httpx.URL(url)
            if current.scheme not in ("http", "https") or not current.host:
                return False
            port = current.port or (443 if current.scheme == "https" else 80)
            addresses = await _resolve(current.host, port, self.policy.connect_timeout_s)
        except (TimeoutError, *_FAILURES):
            return False
        return bool(addresses) and all(
            self.policy.permits(current.host, port, a) for a in addresses
        )

    async def aclose(self) -> None:
        await self._pool.aclose()

    async def _follow(self, url: str, max_bytes: int) -> bytes:
        current = httpx.URL(url)
        for hop in range(self.policy.max_redirects + 1):
            if current.scheme not in ("http", "https") or not current.host:
                raise _Refusal("not an http(s) URL", hop=hop, scheme=current.scheme)
            target = httpcore.URL(
                scheme=current.raw_scheme,
                host=current.raw_host,
                port=current.port,
                target=current.raw_path,
            )
            timeouts = {
                "connect": self.policy.connect_timeout_s,
                "read": self.policy.timeout_s,
                "write": self.policy.timeout_s,
                "pool": self.policy.timeout_s,
            }
            async with self._pool.stream(
                "GET", target, headers=_HEADERS, extensions={"timeout": timeouts}
            ) as response:
                if response.status in _REDIRECTS:
                    location = _header(response, b"location")
                    if not location:
                        raise _Refusal("redirect without a location", hop=hop)
                    current = current.join(location)
                    log.info("provider_download_redirect", hop=hop + 1, to=_safe(current))
                    continue
                if not 200 <= response.status < 300:
                    raise _Refusal(f"HTTP {response.status}", hop=hop, at=_safe(current))
                return await _read_capped(response, max_bytes)
        raise _Refusal("too many redirects", limit=self.policy.max_redirects)


async def _read_capped(response: httpcore.Response, max_bytes: int) -> bytes:
    declared = _header(response, b"content-length")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _Refusal("too large (declared)", size=int(declared), limit=max_bytes)
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_stream():
        size += len(chunk)
        if size > max_bytes:
            raise _Refusal("too large", read=size, limit=max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def _header(response: httpcore.Response, name: bytes) -> str:
    for key, value in response.headers:
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return ""


def _safe(url: httpx.URL) -> str:
    return redact_urls(str(url))[:300]
