"""A user's uploads in progress are limited across app processes when Redis is shared.

Two `UploadSlots` on one Redis stand for two replicas behind the proxy (each process
builds its own from settings). Real Redis (ATELIER_TEST_REDIS_URL, default the local
server), a unique namespace per test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from fastapi import HTTPException

from chat_app.settings import Settings
from chat_app.shared_slots import MemorySlots, RedisSlots, slots_for
from chat_app.upload_route import UploadSlots

REDIS_URL = os.environ.get("ATELIER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
LIMIT = 3


@pytest.fixture
async def redis_client() -> AsyncIterator:
    from redis.asyncio import Redis

    client = Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except OSError as exc:
        pytest.fail(f"Redis is not reachable at {REDIS_URL}: {exc}")
    namespace = f"atelier-test-{uuid.uuid4().hex[:8]}"
    yield client, namespace
    async for key in client.scan_iter(match=f"{namespace}*"):
        await client.delete(key)
    await client.aclose()


async def test_a_users_uploads_are_counted_across_processes(redis_client) -> None:
    client, namespace = redis_client
    first, second = (UploadSlots(RedisSlots(client, namespace=namespace)) for _ in range(2))
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(LIMIT):  # alice's three uploads, all on the first replica
            await stack.enter_async_context(first.hold("alice", LIMIT))
        with pytest.raises(HTTPException) as refused:
            async with second.hold("alice", LIMIT):
                pass
        assert refused.value.status_code == 429
        assert "3 uploads running" in refused.value.detail
        assert refused.value.headers == {"Retry-After": "5"}
        async with second.hold("bob", LIMIT):  # another user is not held up
            pass
    async with second.hold("alice", LIMIT):  # hers ended: a slot is free again
        pass


async def test_a_dead_processes_uploads_free_their_slots(redis_client) -> None:
    client, namespace = redis_client
    lease = 0.4
    dead = RedisSlots(client, lease, namespace=namespace)
    for _ in range(LIMIT):  # taken, then the process died: never renewed nor given back
        assert await dead.take("alice", LIMIT) is not None
    live = UploadSlots(RedisSlots(client, lease, namespace=namespace))
    with pytest.raises(HTTPException):
        async with live.hold("alice", LIMIT):
            pass
    deadline = time.monotonic() + 10
    while True:
        try:
            async with live.hold("alice", LIMIT):
                break
        except HTTPException:
            assert time.monotonic() < deadline, "the dead process's slots never lapsed"
            await asyncio.sleep(0.05)


def test_slots_are_shared_only_when_redis_is_configured() -> None:
    assert isinstance(slots_for(Settings(redis_url=None), "atelier-uploads"), MemorySlots)
    assert isinstance(slots_for(Settings(redis_url=REDIS_URL), "atelier-uploads"), RedisSlots)
