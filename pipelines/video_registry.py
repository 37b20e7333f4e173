"""Which video backends exist, looked up by id ("local", "replicate").

Adding a video backend is one module with a `create_video_backend(settings, images)`
function (returning None when it is not configured) plus one line in
`VIDEO_BACKEND_MODULES`. `images` is the image registry: a backend that runs on this
machine's GPU takes the image backend's job queue from it, so a clip and an image never
share the device at once. Modules are imported only when the registry is built, and
must import heavy extras (torch, diffusers) lazily.

A spec names a backend and optionally a model: "replicate:minimax/video-01", "local".
"""

from __future__ import annotations

import importlib
from typing import Any

from memory.errors import BackendNotConfigured, InvalidInput
from pipelines.registry import BACKEND_MODULES, BackendRegistry
from pipelines.video_base import VideoBackend

# In order of preference when the conversation's image backend makes no video: hosted
# first, as for images (a local model may mean a multi-gigabyte download).
VIDEO_BACKEND_MODULES: dict[str, str] = {
    "replicate": "pipelines.replicate_video",
    "local": "pipelines.local_video",
}

HOW_TO_ENABLE: dict[str, str] = {
    "local": "install the local extra (pip install 'atelier[local]') and restart",
    "replicate": "set REPLICATE_API_TOKEN (in the environment or .env) and restart",
}


class VideoBackendRegistry:
    def __init__(self, backends: dict[str, VideoBackend]) -> None:
        self._backends = backends

    @classmethod
    def from_settings(
        cls, settings: Any, images: BackendRegistry | None = None
    ) -> VideoBackendRegistry:
        backends: dict[str, VideoBackend] = {}
        for backend_id, module_name in VIDEO_BACKEND_MODULES.items():
            module = importlib.import_module(module_name)
            backend = module.create_video_backend(settings, images)
            if backend is not None:
                backends[backend_id] = backend
        return cls(backends)

    def get(self, backend_id: str) -> VideoBackend:
        if backend_id in self._backends:
            return self._backends[backend_id]
        known = ", ".join(sorted(VIDEO_BACKEND_MODULES))
        if backend_id in VIDEO_BACKEND_MODULES:
            raise BackendNotConfigured(
                f"The {backend_id} video backend is not configured: "
                f"{HOW_TO_ENABLE.get(backend_id, 'see the README')}."
            )
        if backend_id in BACKEND_MODULES:
            raise InvalidInput(
                f"The {backend_id} backend makes images only, not video. Video backends: {known}."
            )
        raise InvalidInput(f"Unknown video backend {backend_id!r}. Video backends: {known}.")

    def resolve(self, spec: str) -> tuple[VideoBackend, str]:
        """A spec "backend[:model]" → (backend, model); the model defaults to the backend's."""
        backend_id, _, model = (spec or "").strip().partition(":")
        backend = self.get(backend_id.strip().lower())
        return backend, model.strip() or backend.default_model

    def available(self) -> list[VideoBackend]:
        return list(self._backends.values())

    def default_for(self, image_backend_id: str | None) -> VideoBackend:
        """The conversation's image backend when it also makes video, else the first."""
        if image_backend_id in self._backends:
            return self._backends[image_backend_id]
        if not self._backends:
            raise BackendNotConfigured(
                "No video backend is configured: set REPLICATE_API_TOKEN, or install the "
                "local extra (pip install 'atelier[local]'), and restart."
            )
        return next(iter(self._backends.values()))
