"""Pytest fixtures for the fake Replicate server (a plugin loaded by tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pipelines.downloads.fetch_policy import FetchPolicy
from tests.fakes.replicate_server import FakeReplicate


def fetch_policy_for(fake: FakeReplicate, **limits: float) -> FetchPolicy:
    """The downloader's policy with this fake (on 127.0.0.1) on the allow-list, and nothing
    else private: every test that downloads the fake's outputs goes through the real guard."""
    return FetchPolicy.from_setting(fake.fetch_allow, **limits)


def replicate_app_env(fake: FakeReplicate, **more: str) -> dict[str, str]:
    """Settings for an app subprocess (`make_app(**...)`) that uses this fake: its token and
    URL, its host on the download allow-list, and quick polling; `more` adds or overrides."""
    return {
        "REPLICATE_API_TOKEN": fake.api_token or "",
        "REPLICATE_BASE_URL": fake.base_url,
        "ATELIER_FETCH_ALLOW_HOSTS": fake.fetch_allow,
        "ATELIER_REPLICATE_POLL_INTERVAL": "0.05",
        **more,
    }


@pytest.fixture(scope="session")
def _replicate_server() -> Iterator[FakeReplicate]:
    # One server for the session: starting and stopping uvicorn costs ~0.2 s a test.
    with FakeReplicate() as fake:
        yield fake


@pytest.fixture
def fake_replicate(_replicate_server: FakeReplicate) -> Iterator[FakeReplicate]:
    """The fake Replicate API on 127.0.0.1, reset for this test.

    `.base_url` has no /v1 (the client adds it); `.api_token` is the token it accepts.
    """
    _replicate_server.reset()
    yield _replicate_server
    _replicate_server.reset()
