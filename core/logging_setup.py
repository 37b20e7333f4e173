"""structlog configured once for the whole process.

Context (thread_id, user_id, request_id) is bound with contextvars at the edge, so every
event below it carries the ids without passing them around. A processor drops values of
keys that look like secrets, as a last line of defence; another hides passwords inside
URLs in every value, tracebacks included (`core.redact`), and stdlib log records from
the libraries (uvicorn, httpx, openai) get the same treatment before any handler sees
them.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import structlog

from core.redact import redact_urls

_SECRET_MARKERS = ("password", "secret", "api_key", "token", "authorization", "cookie")
_configured = False


def _redact_secrets(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in list(event):
        if any(marker in key.lower() for marker in _SECRET_MARKERS):
            event[key] = "[redacted]"
    return event


def _redact_url_secrets(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """After exceptions are formatted: `http://user:pass@host` anywhere becomes user:***."""
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = redact_urls(value)
        elif isinstance(value, list | tuple):
            event[key] = [redact_urls(v) if isinstance(v, str) else v for v in value]
    return event


def _redacting_record_factory(
    make: Callable[..., logging.LogRecord],
) -> Callable[..., logging.LogRecord]:
    """Wrap the stdlib record factory so library log lines lose URL passwords too.

    Records are made only once they pass the level check. A message that quotes a URL
    password is replaced by its rendered, redacted text (others are left untouched, args
    and all); an exception's traceback is formatted and redacted here, so no handler can
    print it raw.
    """

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            message = record.getMessage()
            redacted = redact_urls(message)
            if redacted != message:
                record.msg, record.args = redacted, None
            if record.exc_info and not record.exc_text:
                record.exc_text = redact_urls(_FORMATTER.formatException(record.exc_info))
        except Exception:  # logging must never raise into the caller
            return record
        return record

    factory.redacts = True  # type: ignore[attr-defined]
    return factory


_FORMATTER = logging.Formatter()


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
            _redact_url_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # Looked up per logger, not captured once: the stream may be swapped (pytest).
        logger_factory=lambda *_: structlog.PrintLogger(sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Libraries that use stdlib logging (uvicorn, chainlit, httpx) stay quieter.
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr)
    if not getattr(logging.getLogRecordFactory(), "redacts", False):
        logging.setLogRecordFactory(_redacting_record_factory(logging.getLogRecordFactory()))
    _configured = True


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    if not _configured:
        configure_logging()
    return structlog.get_logger(name)
