"""Which backends exist, looked up by id ("openai", "replicate", "local").

Adding a backend is one module with a `create_backend(settings)` function (returning None
when it is not configured) plus one line in `BACKEND_MODULES`. Modules are imported only
when the registry is built, and a module must itself import heavy extras lazily, so a
missing optional extra never breaks start-up.

A *spec* names a backend and optionally a model: "replicate:black-forest-labs/flux-dev",
"local:stabilityai/sd-turbo", or just "openai".
"""

from __future__ import annotations

import importlib
from typing import Any

from memory.errors import BackendNotConfigured, InvalidInput
from pipelines.base import ImageBackend

BACKEND_MODULES: dict[str, str] = {
    "openai": "pipelines.openai_images",
    "replicate": "pipelines.replicate_images",
    "local": "pipelines.local_diffusers",
}

# What to tell the user when a known backend is not configured.
HOW_TO_ENABLE: dict[str, str] = {
    "openai": "set OPENAI_API_KEY (in the environment or .env) and restart",
    "replicate": "set REPLICATE_API_TOKEN (in the environment or .env) and restart",
    "local": "install the local extra (pip install 'atelier[local]') and restart",
}


class BackendRegistry:
    def __init__(self, backends: dict[str, ImageBackend]) -> None:
        self._backends = backends

    @classmethod
    def from_settings(cls, settings: Any) -> BackendRegistry:
        backends: dict[str, ImageBackend] = {}
        for backend_id, module_name in BACKEND_MODULES.items():
            backend = importlib.import_module(module_name).create_backend(settings)
            if backend is not None:
                backends[backend_id] = backend
        return cls(backends)

    def get(self, backend_id: str) -> ImageBackend:
        if backend_id in self._backends:
            return self._backends[backend_id]
        if backend_id in BACKEND_MODULES:
            raise BackendNotConfigured(
                f"The {backend_id} image backend is not configured: "
                f"{HOW_TO_ENABLE.get(backend_id, 'see the README')}."
            )
        known = ", ".join(sorted(BACKEND_MODULES)) or "none"
        raise InvalidInput(f"Unknown image backend {backend_id!r}. Known backends: {known}.")

    def resolve(self, spec: str) -> tuple[ImageBackend, str]:
        """"backend[:model]" → (backend, model); the model defaults to the backend's."""
        backend_id, _, model = (spec or "").strip().partition(":")
        backend = self.get(backend_id.strip().lower())
        return backend, model.strip() or backend.default_model

    def available(self) -> list[ImageBackend]:
        return list(self._backends.values())

    def default_id(self) -> str:
        return next(iter(self._backends), next(iter(BACKEND_MODULES)))
