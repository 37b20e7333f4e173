"""The model catalogue through the real app: what a fresh install sends, and what a
retired default does to a user's request, the admin's welcome and a bad catalogue file.

The app runs as a subprocess against the fake OpenAI server (chat model and images);
`ATELIER_MODELS_DATE` fixes the catalogue's day so the test means the same on any date.
"""

from __future__ import annotations

import pytest

from tests.app_process import ADMIN_PASSWORD, app_rows
from tests.chat_client import ChatSession, login_cookie, outputs
from tests.test_settings_and_cli import atelier

pytestmark = pytest.mark.slow


def _welcome(chat: ChatSession) -> str:
    texts = outputs([chat.messages[i] for i in chat.order])
    return next(text for text in texts if "Welcome to Atelier" in text)


async def test_a_fresh_install_draws_with_gpt_image_2(make_app, fake_openai):
    app = make_app(ATELIER_LLM_MODEL="", ATELIER_MODELS_DATE="2026-12-01")
    chat = ChatSession(app.base_url, login_cookie(app.base_url, "admin", ADMIN_PASSWORD))
    await chat.connect()
    welcome = _welcome(chat)
    assert "image model (openai): gpt-image-2 — live" in welcome
    assert "chat model (openai): gpt-6.1-terra — live" in welcome

    await chat.send("/image a fox in the snow --quality low")
    await chat.send("draw a heron")
    sent = [r.json["model"] for r in fake_openai.requests_to("/images/generations")]
    assert sent == ["gpt-image-2", "gpt-image-2"]
    chat_models = {r.json["model"] for r in fake_openai.requests_to("/chat/completions")}
    assert chat_models == {"gpt-6.1-terra"}
    entries = app_rows(app, "SELECT model, status, source FROM ledger_entries")
    assert [tuple(e) for e in entries] == [("gpt-image-2", "settled", "reported")] * 2
    await chat.close()


async def test_a_retired_default_is_refused_before_anything_is_sent(make_app, fake_openai):
    app = make_app(ATELIER_IMAGE_MODEL="gpt-image-1.5", ATELIER_MODELS_DATE="2026-12-01")
    chat = ChatSession(app.base_url, login_cookie(app.base_url, "admin", ADMIN_PASSWORD))
    await chat.connect()
    welcome = _welcome(chat)
    assert "image model (openai): gpt-image-1.5 — retired on 2026-12-01 → gpt-image-2" in welcome

    reply = " ".join(outputs(await chat.send("/image a fox in the snow")))
    assert "gpt-image-1.5 was shut down by its provider on 2026-12-01" in reply
    assert "`/backend openai:gpt-image-2`" in reply
    assert fake_openai.requests_to("/images/generations") == []
    assert app_rows(app, "SELECT * FROM ledger_entries") == []

    # The way out the message names works at once.
    reply = " ".join(outputs(await chat.send("/backend openai:gpt-image-2")))
    assert "gpt-image-2" in reply
    await chat.send("/image a fox in the snow --quality low")
    [sent] = fake_openai.requests_to("/images/generations")
    assert sent.json["model"] == "gpt-image-2"
    await chat.close()


async def test_a_retiring_model_carries_its_warning_in_the_caption(make_app, fake_openai):
    app = make_app(ATELIER_IMAGE_MODEL="gpt-image-1.5", ATELIER_MODELS_DATE="2026-11-30")
    chat = ChatSession(app.base_url, login_cookie(app.base_url, "admin", ADMIN_PASSWORD))
    await chat.connect()
    reply = " ".join(outputs(await chat.send("/image a fox in the snow --quality low")))
    assert "gpt-image-1.5 shuts down on 2026-12-01 (tomorrow)" in reply
    [sent] = fake_openai.requests_to("/images/generations")
    assert sent.json["model"] == "gpt-image-1.5"
    await chat.close()


def test_run_refuses_a_catalogue_file_with_a_bad_row(tmp_path):
    models = tmp_path / "my-models.toml"
    models.write_text(
        '[[model]]\nbackend = "openai"\nkind = "image"\nid = "house"\n'
        'released = "2026-05-01"\nshutdown = "2026-01-01"\nsource = "me"\n'
        'checked = "2026-11-30"\n'
    )
    result = atelier(
        "run", "--data-dir", str(tmp_path / "d"), env={"ATELIER_MODELS_FILE": str(models)}
    )
    assert result.returncode == 2, result.stderr
    assert "my-models.toml, line 1" in result.stderr
    assert "shutdown 2026-01-01 on or before its release 2026-05-01" in result.stderr
