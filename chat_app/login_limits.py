"""How many failed logins an account, and a client address, may have in a window.

Counting is done by the `limits` library's moving window (exact, unlike a fixed window
that resets on the clock), in memory by default or in Redis when `ATELIER_REDIS_URL` is
set (so several app processes share the counts). Only failed attempts count; attempts
still being checked count too, so a burst of simultaneous guesses cannot slip past the
limit before the first of them has failed. Once an account or address reaches its
limit every login for it is refused, the right password included, until the oldest
failure leaves the window: that is what stops guessing.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from limits import RateLimitItemPerSecond
from limits.aio.storage import Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import ConfigurationError
from limits.storage import storage_from_string

from chat_app.settings import Settings
from core.errors import ConfigError
from core.logging_setup import get_logger

log = get_logger(__name__)

_NAMESPACE = "atelier-login"


@dataclass(frozen=True)
class Lockout:
    scope: str  # "account" | "address"
    retry_after_s: int
    message: str


# Refused only after waiting this long for logins being checked to finish.
PENDING_WAIT_S = 15.0
_PENDING_POLL_S = 0.05
_PENDING = Lockout("pending", 0, "")
_BUSY = Lockout("pending", 1, "Too many logins at once. Try again in a moment.")


def _in_words(seconds: int) -> str:
    if seconds < 90:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    minutes = math.ceil(seconds / 60)
    return f"{minutes} minutes"


def storage_for(redis_url: str | None) -> Storage:
    """Memory storage, or Redis (async, via the `redis` extra) when a URL is given."""
    if not redis_url:
        return storage_from_string("async+memory://")
    try:
        return storage_from_string("async+" + redis_url)
    except ConfigurationError as exc:
        raise ConfigError(
            "ATELIER_REDIS_URL: Redis storage for login limits needs "
            "`pip install 'atelier[redis]'` (" + str(exc) + ")."
        ) from None


class LoginLimiter:
    def __init__(
        self,
        storage: Storage,
        per_account: int,
        per_address: int,
        window_s: int,
        pending_wait_s: float = PENDING_WAIT_S,
    ) -> None:
        self._limiter = MovingWindowRateLimiter(storage)
        self._pending_wait_s = pending_wait_s
        self._items = {
            "account": RateLimitItemPerSecond(per_account, window_s),
            "address": RateLimitItemPerSecond(per_address, window_s),
        }
        self._checking: Counter[tuple[str, str]] = Counter()

    @classmethod
    def from_settings(cls, settings: Settings) -> LoginLimiter:
        return cls(
            storage_for(settings.redis_url),
            per_account=settings.login_max_failures,
            per_address=settings.login_max_failures_per_address,
            window_s=settings.login_window_s,
        )

    def _keys(self, account: str, address: str) -> list[tuple[str, str]]:
        return [("account", account[:128]), ("address", address)]

    async def refusal(self, account: str, address: str) -> Lockout | None:
        """Why a login for this account from this address may not be tried now, if so.

        When only attempts still being checked fill a limit, this waits for them (up to
        `pending_wait_s`) instead of refusing: a team behind one address logging in at
        once is served in turn, while a burst of guesses is still checked no faster
        than its failures are counted.
        """
        deadline = time.monotonic() + self._pending_wait_s
        while True:
            lockout = await self._refusal_now(account, address)
            if lockout is None or lockout.retry_after_s > 0 or time.monotonic() >= deadline:
                return lockout if lockout is None or lockout.retry_after_s > 0 else _BUSY
            await asyncio.sleep(_PENDING_POLL_S)

    async def _refusal_now(self, account: str, address: str) -> Lockout | None:
        """A lockout, or `_PENDING` when only attempts still being checked fill a limit."""
        for scope, key in self._keys(account, address):
            stats = await self._limiter.get_window_stats(self._items[scope], _NAMESPACE, scope, key)
            if stats.remaining > 0 and stats.remaining > self._checking[(scope, key)]:
                continue
            if stats.remaining > 0:  # only attempts still being checked fill the limit
                return _PENDING
            wait = max(1, math.ceil(stats.reset_time - time.time()))
            who = "this account" if scope == "account" else "your network address"
            return Lockout(
                scope,
                wait,
                f"Too many failed logins for {who}. Try again in {_in_words(wait)}.",
            )
        return None

    @contextmanager
    def checking(self, account: str, address: str) -> Iterator[None]:
        """Count an attempt as pending while its password is being verified."""
        keys = self._keys(account, address)
        self._checking.update(keys)
        try:
            yield
        finally:
            self._checking.subtract(keys)
            for key in keys:
                if self._checking[key] <= 0:
                    del self._checking[key]

    async def failed(self, account: str, address: str) -> None:
        """Record a failure; log `login_locked` when it is the one that reaches a limit."""
        for scope, key in self._keys(account, address):
            item = self._items[scope]
            if not await self._limiter.hit(item, _NAMESPACE, scope, key):
                continue  # already locked: counted once, when it locked
            stats = await self._limiter.get_window_stats(item, _NAMESPACE, scope, key)
            if stats.remaining <= 0:
                log.warning(
                    "login_locked",
                    scope=scope,
                    user=account[:128],
                    address=address,
                    failures=item.amount,
                    retry_after_s=max(1, math.ceil(stats.reset_time - time.time())),
                )

    async def succeeded(self, account: str) -> None:
        """A right password clears the account's failures (not the address's)."""
        await self._limiter.clear(self._items["account"], _NAMESPACE, "account", account[:128])
