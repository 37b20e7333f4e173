"""Logs are one JSON object per line, carry the ids bound at the edge, and hide secrets."""

from __future__ import annotations

import json

import structlog

from core.logging_setup import configure_logging, get_logger


def test_json_lines_with_ids_and_no_secrets(capsys):
    configure_logging(json_output=True)
    structlog.contextvars.bind_contextvars(thread_id="t-1", user_id="u-1", request_id="r-1")
    try:
        get_logger("test").info("generated", api_key="sk-live-123", prompt="a fox")
    finally:
        structlog.contextvars.clear_contextvars()
        configure_logging(json_output=False)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    event = json.loads(line)
    assert event["event"] == "generated"
    assert (event["thread_id"], event["user_id"], event["request_id"]) == ("t-1", "u-1", "r-1")
    assert event["api_key"] == "[redacted]" and "sk-live-123" not in line
