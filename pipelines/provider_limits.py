"""How many requests each image provider gets at once, and one shared pause on a 429.

One gate per provider per process (per event loop, since asyncio objects cannot move
between loops): every image request to a provider holds one of its slots while it runs,
so a batch of 100 goes out `limit` at a time instead of one after another, and all the
sessions of a process together never have more than `limit` requests in flight. The
limits are settings (`ATELIER_OPENAI_CONCURRENCY` 4, `ATELIER_REPLICATE_CONCURRENCY` 4,
`ATELIER_LOCAL_CONCURRENCY` 1: the local backend runs one job per device anyway), given
to `configure` at start-up; a backend id without a setting gets `OTHER_LIMIT`.

A rate-limit answer pauses the whole gate, not the one request that got it: until
`Retry-After` has passed (or `DEFAULT_PAUSE_S` when the answer names no wait) no request
to that provider starts, and the refused one is sent again after the pause. The gate
hears of a 429 in two ways:

- `call()`: a request that ends in `RateLimited` (the backend's own retries exhausted,
  or none configured) pauses the gate and is tried again, up to `RATE_LIMIT_RETRIES`
  times; a wait longer than `MAX_PAUSE_S` is not waited for, the error stands;
- `http_hooks()`: httpx event hooks for a backend's own client. The response hook pauses
  the gate on every 429 the client sees (also those it retries itself), and the request
  hook holds every request, retries included, while the gate is paused.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

from core.errors import RateLimited
from core.logging_setup import get_logger

log = get_logger(__name__)

T = TypeVar("T")

DEFAULT_LIMITS: dict[str, int] = {"openai": 4, "replicate": 4, "local": 1}
OTHER_LIMIT = 4  # a backend id with no setting of its own
DEFAULT_PAUSE_S = 1.0  # a 429 that does not say how long to wait
MAX_PAUSE_S = 60.0  # asked to wait longer, give up at once (the error says how long)
RATE_LIMIT_RETRIES = 3

_limits: dict[str, int] = dict(DEFAULT_LIMITS)
_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, ProviderGate]] = (
    weakref.WeakKeyDictionary()
)


def configure(limits: Mapping[str, int]) -> None:
    """Set providers' limits (the app's settings); gates already open follow at once."""
    for provider, limit in limits.items():
        if int(limit) < 1:
            raise ValueError(f"the concurrency limit for {provider} must be at least 1")
        _limits[provider] = int(limit)
    for gates in list(_gates.values()):
        for provider, found in gates.items():
            found.set_limit(limit_for(provider))


def limit_for(provider: str) -> int:
    return _limits.get(provider, OTHER_LIMIT)


def gate(provider: str) -> ProviderGate:
    """This process's (this event loop's) gate for `provider`."""
    loop = asyncio.get_running_loop()
    gates = _gates.get(loop)
    if gates is None:
        gates = _gates[loop] = {}
    found = gates.get(provider)
    if found is None:
        found = gates[provider] = ProviderGate(provider, limit_for(provider))
    return found


class ProviderGate:
    """At most `limit` requests in flight, and none started while paused.

    Everything runs on one event loop, so the counters need no lock; waiters sleep on
    futures that a release, a new limit or the end of a pause wakes.
    """

    def __init__(self, provider: str, limit: int) -> None:
        self.provider = provider
        self.limit = limit
        self.in_flight = 0
        self.peak = 0  # the most in flight at once so far (logs, tests)
        self.paused_until = 0.0  # loop time
        self.pauses: list[tuple[float, float]] = []  # (from, until), loop time
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def queued(self) -> int:
        """Requests waiting for a slot or for a pause to end."""
        return len(self._waiters)

    def set_limit(self, limit: int) -> None:
        self.limit = limit
        self._wake()

    def paused_for(self) -> float:
        return max(0.0, self.paused_until - asyncio.get_running_loop().time())

    def pause(self, seconds: float) -> None:
        """No request starts for `seconds` (a longer pause already set stands)."""
        now = asyncio.get_running_loop().time()
        until = now + max(0.0, seconds)
        if until <= self.paused_until:
            return
        if now < self.paused_until and self.pauses:
            # Still paused: the same refusal seen again (by the client's hook, then by the
            # caller) or a later one extends this pause rather than starting another.
            self.pauses[-1] = (self.pauses[-1][0], until)
        else:
            self.pauses.append((now, until))
            log.info("provider_paused", provider=self.provider, seconds=round(seconds, 3))
        self.paused_until = until

    async def wait_open(self) -> None:
        """Return once the gate is not paused (a request already holding a slot)."""
        while (left := self.paused_for()) > 0:
            await self._wait(left)

    async def acquire(self) -> None:
        while True:
            left = self.paused_for()
            if left > 0:
                await self._wait(left)
            elif self.in_flight < self.limit:
                self.in_flight += 1
                self.peak = max(self.peak, self.in_flight)
                return
            else:
                await self._wait(None)

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self.acquire()
        try:
            yield
        finally:
            self.release()

    async def _wait(self, seconds: float | None) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            if seconds is None:
                await waiter
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(seconds):
                        await waiter
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


async def call(
    provider: str,
    make: Callable[[], Awaitable[T]],
    *,
    retries: int = RATE_LIMIT_RETRIES,
    waiting: Callable[[float, int], None] | None = None,
) -> T:
    """`make()` in one of the provider's slots; a rate limit pauses the gate, then retries.

    A refused request made nothing and cost nothing, so sending it again is safe.
    `waiting(paused_s, ahead)` hears when the request has to wait (for a progress bar):
    the pause left, or else how many requests are ahead of it for a slot.
    """
    found = gate(provider)
    for attempt in range(retries + 1):
        if waiting is not None and (found.paused_for() > 0 or found.in_flight >= found.limit):
            waiting(found.paused_for(), found.queued + 1)
        async with found.slot():
            try:
                return await make()
            except RateLimited as exc:
                wait = exc.retry_after_s if exc.retry_after_s is not None else DEFAULT_PAUSE_S
                if attempt == retries or wait > MAX_PAUSE_S:
                    raise
                found.pause(wait)
        # The slot is free again; the next acquire waits out the pause with everyone else.
    raise AssertionError("unreachable")  # the loop returns or raises


def retry_after_seconds(value: str | None) -> float | None:
    """`Retry-After` as seconds (a number or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def http_hooks(provider: str) -> dict[str, list[Callable[[Any], Awaitable[None]]]]:
    """httpx `event_hooks` that put a backend's own client (and its retries) behind the
    provider's pause: pass them to the `httpx.AsyncClient` the backend's SDK uses."""

    async def before(request: Any) -> None:
        await gate(provider).wait_open()

    async def after(response: Any) -> None:
        if response.status_code == 429:
            asked = retry_after_seconds(response.headers.get("retry-after"))
            wait = asked if asked is not None else DEFAULT_PAUSE_S
            gate(provider).pause(min(wait, MAX_PAUSE_S))

    return {"request": [before], "response": [after]}
