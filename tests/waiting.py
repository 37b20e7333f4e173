"""Waiting in tests: on a condition, never for a fixed time, and failing loudly.

A fixed sleep is either too short on a busy machine (a flaky test) or too long everywhere
(a slow suite); `wait_until` returns as soon as the condition holds and, when it never
does, fails naming what it waited for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

POLL_S = 0.02


async def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll `predicate` until it is true; after `timeout` seconds fail saying `what`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"gave up after {timeout:g} s waiting for {what}")
        await asyncio.sleep(POLL_S)


def wait_until_sync(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """`wait_until` for code outside an event loop (threads, subprocesses)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"gave up after {timeout:g} s waiting for {what}")
        time.sleep(POLL_S)
