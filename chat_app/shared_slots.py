"""Counted slots ("at most N at once per key") that every app process can share.

Used for an API token's concurrent jobs (chat_app/api_limits.py) and a user's uploads
in progress (chat_app/upload_route.py). Counted in memory, such a limit holds per
process: behind a proxy with two replicas a user had twice the uploads. With
ATELIER_REDIS_URL set the slots live in Redis and hold across every process.

A slot is a lease: its id in a Redis sorted set per key, scored by when it lapses, and
renewed every third of the lease while it is held (`HeldSlots`), so a process that dies
gives its slots back within one lease. Taking one is one Lua script (drop lapsed
leases, count, add), so two processes cannot take the last slot twice. In memory a slot
is an id in a set, counted and added with no await in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections import defaultdict
from typing import TYPE_CHECKING, Protocol

from core.errors import ConfigError
from core.logging_setup import get_logger

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from chat_app.settings import Settings

log = get_logger(__name__)

# A slot's lease: only a dead process's slots lapse, within this long.
SLOT_LEASE_S = 60.0


class Slots(Protocol):
    """Where the slots of each key are counted."""

    async def take(self, key: str, limit: int) -> str | None: ...
    async def renew(self, key: str, slot_id: str) -> None: ...
    async def give_back(self, key: str, slot_id: str) -> None: ...


class MemorySlots:
    """Slots of this process only: a set per key (no await between count and add)."""

    def __init__(self) -> None:
        self._held: defaultdict[str, set[str]] = defaultdict(set)

    async def take(self, key: str, limit: int) -> str | None:
        held = self._held[key]
        if len(held) >= limit:
            return None
        slot_id = uuid.uuid4().hex
        held.add(slot_id)
        return slot_id

    async def renew(self, key: str, slot_id: str) -> None:
        return None  # nothing lapses in memory

    async def give_back(self, key: str, slot_id: str) -> None:
        held = self._held.get(key)
        if held is not None:
            held.discard(slot_id)
            if not held:
                del self._held[key]


# KEYS[1] the key's sorted set; ARGV: now, lease end, limit, slot id.
_TAKE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('PEXPIRE', KEYS[1], math.ceil((tonumber(ARGV[2]) - tonumber(ARGV[1])) * 1000))
return 1
"""


class RedisSlots:
    """Slots shared by every app process: leases in a sorted set per key."""

    def __init__(self, redis: Redis, lease_s: float = SLOT_LEASE_S, *, namespace: str) -> None:
        self._redis = redis
        self._lease_s = lease_s
        self._namespace = namespace
        self._take = redis.register_script(_TAKE)

    def _key(self, key: str) -> str:
        return f"{self._namespace}:slots:{key}"

    async def take(self, key: str, limit: int) -> str | None:
        slot_id = uuid.uuid4().hex
        now = time.time()
        args = [now, now + self._lease_s, limit, slot_id]
        taken = await self._take(keys=[self._key(key)], args=args)
        return slot_id if int(taken) == 1 else None

    async def renew(self, key: str, slot_id: str) -> None:
        name = self._key(key)
        lapses = time.time() + self._lease_s
        # XX: only a slot still held is renewed (one given back stays given back).
        await self._redis.zadd(name, {slot_id: lapses}, xx=True)
        await self._redis.pexpire(name, math.ceil(self._lease_s * 1000))

    async def give_back(self, key: str, slot_id: str) -> None:
        await self._redis.zrem(self._key(key), slot_id)


def slots_for(settings: Settings, namespace: str, lease_s: float = SLOT_LEASE_S) -> Slots:
    """Redis slots when ATELIER_REDIS_URL is set (shared by all processes), else memory."""
    if not settings.redis_url:
        return MemorySlots()
    try:
        from redis.asyncio import Redis
    except ImportError as exc:
        raise ConfigError(
            "ATELIER_REDIS_URL is set but the Redis client is not installed: "
            "`pip install 'atelier[redis]'`."
        ) from exc
    return RedisSlots(Redis.from_url(settings.redis_url), lease_s, namespace=namespace)


class HeldSlots:
    """Slots taken and given back, with their leases renewed while they are held."""

    def __init__(self, slots: Slots, lease_s: float = SLOT_LEASE_S) -> None:
        self._slots = slots
        self._lease_s = lease_s
        self._renewals: dict[str, asyncio.Task[None]] = {}

    async def take(self, key: str, limit: int) -> str | None:
        """A slot of `key`'s `limit`, renewed until given back; None if all are taken."""
        slot_id = await self._slots.take(key, limit)
        if slot_id is not None:
            self._renewals[slot_id] = asyncio.create_task(
                self._keep(key, slot_id), name=f"slot-{slot_id[:8]}"
            )
        return slot_id

    async def give_back(self, key: str, slot_id: str) -> None:
        """Give a slot back (once; a second call changes nothing)."""
        renewal = self._renewals.pop(slot_id, None)
        if renewal is not None:
            renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewal
        await self._slots.give_back(key, slot_id)

    async def _keep(self, key: str, slot_id: str) -> None:
        while True:
            await asyncio.sleep(self._lease_s / 3)
            try:
                await self._slots.renew(key, slot_id)
            except Exception:  # Redis away for a moment: the next renewal tries again
                log.warning("slot_renew_failed", key=key)
