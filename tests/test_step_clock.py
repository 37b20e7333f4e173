"""Chainlit's per-message sleep is gone and its messages still get distinct, ordered stamps."""

from __future__ import annotations

import importlib
import threading
from datetime import datetime

from chat_app import step_clock


def _parse(stamp: str) -> datetime:
    assert stamp.endswith("Z")
    return datetime.fromisoformat(stamp[:-1])


def test_stamps_strictly_increase_even_when_the_clock_does_not_move() -> None:
    stamps = [step_clock.utc_now() for _ in range(5000)]
    parsed = [_parse(s) for s in stamps]
    assert all(a < b for a, b in zip(parsed, parsed[1:], strict=False))


def test_stamps_from_threads_never_repeat() -> None:
    seen: list[str] = []

    def take() -> None:
        seen.extend(step_clock.utc_now() for _ in range(2000))

    threads = [threading.Thread(target=take) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(seen)) == len(seen) == 8000


def test_installed_into_this_chainlit_whose_stamps_stay_ordered(monkeypatch) -> None:
    """Fails when a Chainlit upgrade moves the sleep or the stamp: then look again."""
    message = importlib.import_module("chainlit.message")
    step = importlib.import_module("chainlit.step")
    emitter = importlib.import_module("chainlit.emitter")
    patched = [(message, "time"), (step, "time"), (message, "utc_now"), (step, "utc_now")]
    for module, name in [*patched, (emitter, "utc_now")]:
        monkeypatch.setattr(module, name, getattr(module, name))  # put back afterwards
    assert step_clock.install()
    assert message.utc_now is step_clock.utc_now and step.utc_now is step_clock.utc_now
    assert message.time.monotonic() > 0  # the rest of `time` is still there
    stamps = [message.utc_now() for _ in range(100)] + [step.utc_now() for _ in range(100)]
    assert stamps == sorted(stamps, key=_parse) and len(set(stamps)) == 200
