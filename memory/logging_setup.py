"""structlog configured once for the whole process.

Context (thread_id, user_id, request_id) is bound with contextvars at the edge, so every
event below it carries the ids without passing them around. A processor drops values of
keys that look like secrets, as a last line of defence.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_SECRET_MARKERS = ("password", "secret", "api_key", "token", "authorization", "cookie")
_configured = False


def _redact_secrets(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in list(event):
        if any(marker in key.lower() for marker in _SECRET_MARKERS):
            event[key] = "[redacted]"
    return event


def configure_logging(json_output: bool = False, level: str = "info") -> None:
    """Idempotent: later calls only change the format and level."""
    global _configured
    numeric = getattr(logging, level.upper(), logging.INFO)
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_output
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # Looked up per logger, not captured once: the stream may be swapped (pytest).
        logger_factory=lambda *_: structlog.PrintLogger(sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Libraries that use stdlib logging (uvicorn, chainlit, httpx) stay quieter.
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr)
    _configured = True


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    if not _configured:
        configure_logging()
    return structlog.get_logger(name)
