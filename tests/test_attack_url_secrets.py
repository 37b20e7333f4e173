"""Attack: reading credentials out of a configured base URL (issue 12, #10).

An operator may configure `http://user:pass@host/v1` (a proxy in front of a model server)
or a database URL with a password. Those URLs reach error messages shown to every user,
log events, library exception texts and `atelier doctor`; each must show `user:***@`.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import BackendUnavailable
from core.logging_setup import configure_logging, get_logger
from core.redact import redact_urls
from tests.app_process import add_user, free_port
from tests.chat_client import ChatSession, login_cookie, outputs

SECRET = "s3cr3t-Pa55"
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("http://user:pw@host/v1", "http://user:***@host/v1"),
        ("https://user:p@ss@host:8443/v1", "https://user:***@host:8443/v1"),  # "@" inside
        (
            "postgresql+asyncpg://postgres:pw@db.internal:5432/atelier",
            "postgresql+asyncpg://postgres:***@db.internal:5432/atelier",
        ),
        (
            "ConnectError: http://a:b@h1/x failed, then http://c:d@h2/y",
            "ConnectError: http://a:***@h1/x failed, then http://c:***@h2/y",
        ),
        (
            "https://cdn/x.png?X-Amz-Signature=abc&size=2&api_key=k1",
            "https://cdn/x.png?X-Amz-Signature=***&size=2&api_key=***",
        ),
        ("http://host/v1", "http://host/v1"),  # nothing to hide: unchanged
        ("http://[::1]:8080/v1", "http://[::1]:8080/v1"),
        ("sqlite+aiosqlite:////data/atelier.db", "sqlite+aiosqlite:////data/atelier.db"),
        ("plain words, no link", "plain words, no link"),
    ],
)
def test_redaction_keeps_the_user_and_host_and_hides_the_password(text: str, shown: str) -> None:
    assert redact_urls(text) == shown


def test_an_error_message_never_carries_a_url_password() -> None:
    error = BackendUnavailable(f"Could not reach http://agent:{SECRET}@10.0.0.5:8000/v1.")
    assert SECRET not in str(error) and SECRET not in error.message
    assert "http://agent:***@10.0.0.5:8000/v1" in error.message


def test_log_events_tracebacks_and_library_logs_hide_url_passwords(capsys, caplog) -> None:
    url = f"http://agent:{SECRET}@127.0.0.1:9/v1"
    configure_logging(json_output=True)
    get_logger("attack").warning("llm_unreachable", base_url=url, tried=[url])
    logging.getLogger("httpx").warning("HTTP Request: POST %s", url)  # a library's record
    try:
        raise ConnectionError(f"cannot connect to {url}")
    except ConnectionError:
        get_logger("attack").exception("turn_failed")
        logging.getLogger("openai").exception("request failed")
    # structlog prints to stderr; stdlib records go to whatever handler is installed
    # (pytest's here), so both are read, tracebacks included.
    written = capsys.readouterr().err + caplog.text
    assert SECRET not in written
    assert written.count("agent:***@127.0.0.1") >= 5


def _atelier(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "ATELIER_", "REPLICATE_"))
    }
    return subprocess.run(
        [sys.executable, "-m", "chat_app.cli", *args],
        capture_output=True,
        text=True,
        env={**clean, **env},
        cwd=ROOT,
        timeout=120,
    )


def test_doctor_prints_no_url_password(tmp_path, fake_openai) -> None:
    reachable = fake_openai.base_url.replace("http://", f"http://images:{SECRET}@")
    closed = free_port()
    result = _atelier(
        "doctor",
        "--data-dir",
        str(tmp_path),
        env={
            "OPENAI_API_KEY": "sk-test",
            "OPENAI_BASE_URL": reachable,
            "ATELIER_LLM_BASE_URL": f"http://agent:{SECRET}@127.0.0.1:{closed}/v1",
            "REPLICATE_API_TOKEN": "r8_test",
            "REPLICATE_BASE_URL": f"http://rep:{SECRET}@127.0.0.1:{closed}",
            "ATELIER_DATABASE_URL": f"postgresql+asyncpg://postgres:{SECRET}@127.0.0.1:{closed}/x",
        },
    )
    shown = result.stdout + result.stderr
    assert SECRET not in shown
    assert f"http://agent:***@127.0.0.1:{closed}/v1 unreachable" in result.stdout, shown
    assert "http://images:***@127.0.0.1:" in result.stdout, shown  # reached, still hidden
    assert f"postgresql+asyncpg://postgres:***@127.0.0.1:{closed}/x" in result.stdout, shown


@pytest.mark.slow
async def test_users_and_the_log_never_see_a_base_url_password(make_app) -> None:
    llm_port, replicate_port = free_port(), free_port()  # nothing listens: both fail
    app = make_app(
        ATELIER_LLM_BASE_URL=f"http://agent:{SECRET}@127.0.0.1:{llm_port}/v1",
        REPLICATE_API_TOKEN="r8_test_token",
        REPLICATE_BASE_URL=f"http://rep:{SECRET}@127.0.0.1:{replicate_port}",
        ATELIER_MAX_RETRIES="0",
        ATELIER_LOG_LEVEL="debug",
        ATELIER_LOCAL_ENABLED="0",
    )
    add_user(app, "bob", "bobs-password")
    chat = ChatSession(app.base_url, login_cookie(app.base_url, "bob", "bobs-password"))
    await chat.connect()
    agent = outputs(await chat.send("hello there"))
    hosted = outputs(await chat.send("/image a fox --backend replicate"))
    await chat.close()

    shown = "\n".join(outputs([chat.messages[i] for i in chat.order]))
    assert SECRET not in shown
    assert any(f"agent:***@127.0.0.1:{llm_port}" in text for text in agent), agent
    assert any("Could not reach Replicate" in text for text in hosted), hosted
    assert SECRET not in str(chat.events)  # nothing else sent over the socket either
    assert SECRET not in app.log()
