"""The chat model's clients: one per event loop and settings, closed when let go.

Each client holds an aiohttp session with pooled connections. One evicted because the
settings changed (more than chat_model keeps) must have its session closed, not left
open with its connections until the process ends.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from chat_app import chat_model as chat_models
from chat_app.settings import Settings


def _settings(tmp_path: Path, model: str) -> Settings:
    return Settings(
        data_dir=tmp_path,
        llm_model=model,
        llm_base_url="http://127.0.0.1:9/v1",
        llm_api_key="sk-test",
    )


async def test_an_evicted_client_is_closed_and_a_kept_one_is_reused(tmp_path: Path) -> None:
    await chat_models.close_chat_models()
    first = chat_models.chat_model(_settings(tmp_path, "model-0"), streaming=True)
    assert chat_models.chat_model(_settings(tmp_path, "model-0"), streaming=True) is first
    others = [
        chat_models.chat_model(_settings(tmp_path, f"model-{i}"), streaming=True)
        for i in range(1, chat_models._KEEP + 1)
    ]
    for _ in range(5):  # the close runs as a task of this loop
        await asyncio.sleep(0)
    assert first.root_async_client.is_closed()
    assert not any(llm.root_async_client.is_closed() for llm in others)
    await chat_models.close_chat_models()
    assert all(llm.root_async_client.is_closed() for llm in others)
