"""Which LoRA training backends exist, looked up by id ("local", "replicate").

Training backends are found like image and video backends (pipelines/backend_table.py):
one module per backend with a `create_training_backend(settings, images)` factory that
returns None when it is not configured, plus one line in `TRAINING_BACKEND_MODULES`.
The local trainer shares the local image backend's device queue, so the factory gets
the image registry.
"""

from __future__ import annotations

from pipelines.backend_table import BackendTable

TRAINING_BACKEND_MODULES: dict[str, str] = {
    "local": "pipelines.training.lora_training",
    "replicate": "pipelines.training.replicate_training",
}

HOW_TO_ENABLE: dict[str, str] = {
    "local": (
        "install the local extra (pip install 'atelier[local]'), leave "
        "ATELIER_LOCAL_ENABLED on and restart"
    ),
    "replicate": "set REPLICATE_API_TOKEN (in the environment or .env) and restart",
}


class TrainingBackendRegistry(BackendTable):
    """The configured training backends; `get` explains an unconfigured or unknown id."""

    kind = "LoRA training"
    modules = TRAINING_BACKEND_MODULES
    how_to_enable = HOW_TO_ENABLE
    factory = "create_training_backend"  # (settings, image registry)

    def configured(self, backend_id: str) -> bool:
        return any(backend.id == backend_id for backend in self.available())
