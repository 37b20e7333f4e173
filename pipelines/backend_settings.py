"""What backend factories may read from the app's settings, as a typed protocol.

Backends live below the chat app and must not import its Settings class; they declare
here what they read instead, and `chat_app.settings.Settings` satisfies this protocol
structurally. A factory that needs a new setting adds it here first, so what every
backend depends on is listed in one place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from pydantic import SecretStr


class BackendSettings(Protocol):
    # Hosted APIs
    openai_api_key: SecretStr | None
    openai_base_url: str | None
    image_model: str
    replicate_api_token: SecretStr | None
    replicate_base_url: str | None
    replicate_model: str
    replicate_video_model: str
    replicate_poll_interval_s: float
    request_timeout_s: float
    max_retries: int
    fetch_allow_hosts: str  # hosts the guarded downloader may reach beyond public ones
    # Local pipelines
    local_enabled: bool
    local_model: str
    local_video_model: str
    local_device: str
    local_models_dir: Path | None

    @property
    def resolved_lora_dir(self) -> Path: ...
