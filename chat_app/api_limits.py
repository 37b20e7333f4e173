"""Per-token limits of the HTTP API: requests per minute, concurrent jobs, body size.

- Requests per minute (`ATELIER_API_RATE_PER_MINUTE`): the `limits` library's moving
  window, as for logins (chat_app/login_limits.py): exact, and atomic per key in memory
  (a lock) and in Redis (a script), so N requests at once cannot slip past the limit.
- Concurrent jobs (`ATELIER_API_CONCURRENT_JOBS`): slots per token
  (chat_app/shared_slots.py: leases in Redis, renewed while held, taken atomically;
  without Redis an in-process set).
- Request bodies (`ATELIER_API_MAX_REQUEST_MB`): `limit_body` stops a body at the limit
  while it arrives (ApiRoute applies it to every API route), so an oversized upload
  costs nothing.

Every refusal is OpenAI's 429 (`type "requests"`, `code "rate_limit_exceeded"`) with
Retry-After, which the openai SDK honours when it retries (shared/notes/hosted-apis.md).

With ATELIER_REDIS_URL set, every app process shares the counts and slots.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Request
from limits import RateLimitItemPerMinute
from limits.aio.storage import Storage
from limits.aio.strategies import MovingWindowRateLimiter
from starlette.types import Message

from chat_app.api_errors import ApiError, retry_after
from chat_app.login_limits import storage_for
from chat_app.settings import Settings
from chat_app.shared_slots import SLOT_LEASE_S, HeldSlots, Slots, slots_for
from core.logging_setup import get_logger
from memory.api_tokens import ApiCaller

log = get_logger(__name__)

_NAMESPACE = "atelier-api"
MB = 1024 * 1024
# When all slots are taken nothing says when one frees (a job takes as long as it takes):
# clients are asked to come back after this long.
SLOT_RETRY_S = 5
DEFAULT_MAX_REQUEST_MB = 25


class ApiLimits:
    """The API's limits for one app (built from settings with the runtime)."""

    def __init__(
        self,
        storage: Storage,
        slots: Slots,
        *,
        per_minute: int,
        concurrent_jobs: int,
        max_request_bytes: int,
        lease_s: float = SLOT_LEASE_S,
    ) -> None:
        self._limiter = MovingWindowRateLimiter(storage)
        self._rate = RateLimitItemPerMinute(per_minute)
        self._slots = HeldSlots(slots, lease_s)
        self.concurrent_jobs = concurrent_jobs
        self.max_request_bytes = max_request_bytes

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiLimits:
        return cls(
            storage_for(settings.redis_url),
            slots_for(settings, _NAMESPACE),
            per_minute=settings.api_rate_per_minute,
            concurrent_jobs=settings.api_concurrent_jobs,
            max_request_bytes=settings.api_max_request_mb * MB,
        )

    async def admit(self, caller: ApiCaller) -> None:
        """Count one request of the token; ApiError(429) once it is over its rate."""
        if await self._limiter.hit(self._rate, _NAMESPACE, "rate", caller.token_id):
            return
        stats = await self._limiter.get_window_stats(
            self._rate, _NAMESPACE, "rate", caller.token_id
        )
        wait = max(1.0, stats.reset_time - time.time())
        log.info("api_rate_limited", token=caller.token_id, retry_after_s=math.ceil(wait))
        raise ApiError(
            429,
            f"Rate limit reached for this API token: {self._rate.amount} requests per "
            f"minute. Try again in {math.ceil(wait)} s.",
            type="requests",
            code="rate_limit_exceeded",
            headers=retry_after(wait),
        )

    async def acquire_slot(self, caller: ApiCaller) -> str:
        """Take one of the token's job slots (renewed until released); else ApiError(429)."""
        slot_id = await self._slots.take(caller.token_id, self.concurrent_jobs)
        if slot_id is None:
            log.info("api_slots_full", token=caller.token_id)
            raise ApiError(
                429,
                f"This API token already has {self.concurrent_jobs} jobs running, the most "
                "allowed at once. Try again when one has finished.",
                type="requests",
                code="rate_limit_exceeded",
                headers=retry_after(SLOT_RETRY_S),
            )
        return slot_id

    async def release_slot(self, caller: ApiCaller, slot_id: str) -> None:
        """Give a slot back (once; a second release changes nothing)."""
        await self._slots.give_back(caller.token_id, slot_id)

    @asynccontextmanager
    async def job_slot(self, caller: ApiCaller) -> AsyncIterator[None]:
        slot_id = await self.acquire_slot(caller)
        try:
            yield
        finally:
            await self.release_slot(caller, slot_id)


# ------------------------------------------------------------------ the app's limits


def _limits() -> ApiLimits:
    from chat_app.runtime import get_runtime

    return get_runtime().api_limits


async def admit(caller: ApiCaller) -> None:
    """Per-token requests per minute; ApiError(429, Retry-After) when over."""
    await _limits().admit(caller)


@asynccontextmanager
async def job_slot(caller: ApiCaller) -> AsyncIterator[None]:
    """One of the token's concurrent-job slots for the block; ApiError(429) when full."""
    async with _limits().job_slot(caller):
        yield


async def acquire_slot(caller: ApiCaller) -> str:
    """A slot for a job that outlives its request (jobs API); give it back with
    `release_slot` when the job ends."""
    return await _limits().acquire_slot(caller)


async def release_slot(caller: ApiCaller, slot_id: str) -> None:
    await _limits().release_slot(caller, slot_id)


def max_request_bytes() -> int:
    """The setting's limit; the default when no app is running (a route tested alone)."""
    from chat_app.runtime import get_runtime

    try:
        return get_runtime().api_limits.max_request_bytes
    except RuntimeError:
        return DEFAULT_MAX_REQUEST_MB * MB


def _size(limit: int) -> str:
    if limit >= MB and limit % MB == 0:
        return f"{limit // MB} MB"
    return f"{limit} bytes"


def too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"The request body is larger than {_size(limit)}, the most this server accepts.",
        code="request_too_large",
    )


def limit_body(request: Request, limit: int) -> Request:
    """The same request, its body refused with 413 once it passes `limit` bytes.

    Checked on the declared length first, then while the body arrives (a body sent
    without a length, or with a false one), so an oversized upload is never read in
    whole. ApiRoute applies it to every API route before FastAPI parses JSON or forms.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    receive = request.receive
    seen = 0

    async def limited() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise too_large(limit)
        return message

    return Request(request.scope, limited)
