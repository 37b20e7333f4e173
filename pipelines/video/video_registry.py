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

from core.errors import BackendNotConfigured
from pipelines.backend_table import BackendTable
from pipelines.images.registry import BACKEND_MODULES
from pipelines.video.video_base import VideoBackend

# In order of preference when the conversation's image backend makes no video: hosted
# first, as for images (a local model may mean a multi-gigabyte download).
VIDEO_BACKEND_MODULES: dict[str, str] = {
    "replicate": "pipelines.video.replicate_video",
    "local": "pipelines.video.local_video",
}

HOW_TO_ENABLE: dict[str, str] = {
    "local": "install the local extra and restart (`make run-local` does both; see the README)",
    "replicate": "set REPLICATE_API_TOKEN (in the environment or .env) and restart",
}


class VideoBackendRegistry(BackendTable[VideoBackend]):
    kind = "video"
    modules = VIDEO_BACKEND_MODULES
    how_to_enable = HOW_TO_ENABLE
    factory = "create_video_backend"  # (settings, image registry): local reuses its queue

    def unknown(self, backend_id: str) -> str:
        known = ", ".join(sorted(VIDEO_BACKEND_MODULES))
        if backend_id in BACKEND_MODULES:
            return (
                f"The {backend_id} backend makes images only, not video. Video backends: {known}."
            )
        return f"Unknown video backend {backend_id!r}. Video backends: {known}."

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
