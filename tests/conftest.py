"""Shared fixtures: the fake OpenAI server and the app running as a subprocess."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.app_process import AppProcess
from tests.fakes.openai_server import FakeOpenAI

pytest_plugins = [
    "tests.replicate_fixtures",
    "tests.tiny_fixtures",
    "tests.clip_fixtures",
    "tests.lora_fixtures",
    "tests.video_fixtures",
]

# No test may reach the internet; the Hugging Face hub must fail at once, not retry.
os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def make_app(tmp_path: Path, fake_openai: FakeOpenAI) -> Iterator:
    """Start the app against the fake OpenAI (as chat model and image API)."""
    apps: list[AppProcess] = []

    def start(**env: str) -> AppProcess:
        settings = {
            "OPENAI_API_KEY": "sk-test-not-a-real-key",
            "OPENAI_BASE_URL": fake_openai.base_url,
            "ATELIER_LLM_MODEL": "gpt-test",
            **env,
        }
        settings = {k: v for k, v in settings.items() if v is not None and v != ""}
        app = AppProcess(tmp_path / f"data{len(apps)}", settings).start()
        apps.append(app)
        return app

    yield start
    for app in apps:
        app.stop()
        if "Traceback" in app.log():
            print(app.log())
