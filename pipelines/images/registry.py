"""Which backends exist, looked up by id ("openai", "replicate", "local").

Adding a backend is one module with a `create_backend(settings)` function (returning None
when it is not configured) plus one line in `BACKEND_MODULES`. Modules are imported only
when the registry is built, and a module must itself import heavy extras lazily, so a
missing optional extra never breaks start-up.

A *spec* names a backend and optionally a model: "replicate:black-forest-labs/flux-dev",
"local:stabilityai/sd-turbo", or just "openai".
"""

from __future__ import annotations

from pipelines.backend_settings import BackendSettings
from pipelines.backend_table import BackendTable, build
from pipelines.catalogue.model_catalogue import ModelCatalogue, ModelStatus
from pipelines.images.base import ImageBackend

BACKEND_MODULES: dict[str, str] = {
    "openai": "pipelines.images.openai_images",
    "replicate": "pipelines.images.replicate_images",
    "local": "pipelines.images.local_diffusers",
}

# What to tell the user when a known backend is not configured.
HOW_TO_ENABLE: dict[str, str] = {
    "openai": "set OPENAI_API_KEY (in the environment or .env) and restart",
    "replicate": "set REPLICATE_API_TOKEN (in the environment or .env) and restart",
    "local": "install the local extra and restart (`make run-local` does both; see the README)",
}


class BackendRegistry(BackendTable[ImageBackend]):
    """The configured image backends, and the model catalogue that says which models
    still work. Without a catalogue (some tests) no model is refused for its age.
    """

    kind = "image"
    modules = BACKEND_MODULES
    how_to_enable = HOW_TO_ENABLE

    def __init__(
        self, backends: dict[str, ImageBackend], catalogue: ModelCatalogue | None = None
    ) -> None:
        super().__init__(backends)
        self.catalogue = catalogue

    @classmethod
    def from_settings(
        cls, settings: BackendSettings, catalogue: ModelCatalogue | None = None
    ) -> BackendRegistry:
        return cls(build(BACKEND_MODULES, "create_backend", settings), catalogue)

    def check_model(self, backend_id: str, model: str, kind: str = "model") -> ModelStatus | None:
        """The model's lifecycle; raises ModelRetired past its shutdown, before anything runs.

        `kind` names it in the refusal ("image model", "video model").
        """
        if self.catalogue is None:
            return None
        return self.catalogue.require_usable(backend_id, model, kind)

    def live_models(self, backend: ImageBackend, kind: str = "image") -> list[str]:
        """What to suggest for a backend: its own suggestions and the catalogue's live
        models, without any model past its shutdown."""
        names = list(dict.fromkeys(backend.suggested_models()))
        if self.catalogue is None:
            return names
        names += [m for m in self.catalogue.live(backend.id, kind) if m not in names]
        return [m for m in names if self.catalogue.status(backend.id, m).usable]

    def default_id(self) -> str:
        return next(iter(self._backends), next(iter(BACKEND_MODULES)))
