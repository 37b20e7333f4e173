"""Chainlit's one-millisecond sleeps, replaced by a clock whose stamps never repeat.

Chainlit (2.12) starts every `Message` and `Step` constructor with `time.sleep(0.001)`, so
that two made back to back get different `created_at` stamps, its order of messages. The
sleep holds the event loop, and with it every other session: a plain agent turn makes at
least three such objects (the user's message and its step, the reply), and at 50 sessions
py-spy found these sleeps to be about a fifth of the server loop's busy time
(benchmarks/turn_latency.py).

The sleeps go, and the stamps Chainlit takes in those modules come from `utc_now` below,
which returns strictly increasing stamps within the process (a microsecond past the last
when the clock has not moved), in Chainlit's own format. So the order the sleep was
meant to give is kept, without waiting. Our data layer also orders steps by their
position as written, so equal stamps from two processes stay in order too.

Installed once at start-up (chat_app/server.py); a Chainlit whose modules no longer look
like this is left as it is, and that is logged.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from core.logging_setup import get_logger

log = get_logger(__name__)

_lock = threading.Lock()
_last: datetime | None = None
_TICK = timedelta(microseconds=1)


def utc_now() -> str:
    """Chainlit's `utc_now` format (naive UTC ISO 8601 plus "Z"), never the same twice."""
    global _last
    now = datetime.now(UTC).replace(tzinfo=None)
    with _lock:
        if _last is not None and now <= _last:
            now = _last + _TICK
        _last = now
    return now.isoformat() + "Z"


class _TimeWithoutSleep:
    """The `time` module as Chainlit's message and step modules see it: sleep does nothing."""

    @staticmethod
    def sleep(_seconds: float) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def install() -> bool:
    """Take the sleeps out of Chainlit's constructors; False if Chainlit has changed shape."""
    import importlib

    message, step, emitter = (
        importlib.import_module(f"chainlit.{name}") for name in ("message", "step", "emitter")
    )
    modules = (message, step)
    if not all(getattr(m, "time", None) is time and hasattr(m, "utc_now") for m in modules):
        log.warning("step_clock_not_installed", reason="chainlit's modules changed")
        return False
    for module in modules:
        module.time = _TimeWithoutSleep()  # type: ignore[attr-defined]
        module.utc_now = utc_now  # type: ignore[attr-defined]
    if hasattr(emitter, "utc_now"):
        emitter.utc_now = utc_now  # type: ignore[attr-defined]  # a user's message's stamp
    return True
