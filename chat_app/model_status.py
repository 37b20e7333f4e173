"""Where the configured models stand in the model catalogue: for doctor and the welcome.

An operator learns that a default model is about to stop working from `atelier doctor`
and from the administrator's welcome, weeks before users meet the refusal; every user is
told at the welcome when a default they rely on is retiring or gone.
"""

from __future__ import annotations

from dataclasses import dataclass

from chat_app.settings import Settings
from core.errors import ModelRetired
from pipelines.catalogue.model_catalogue import ModelCatalogue, ModelStatus, fixed_clock, utc_today


def load_catalogue(settings: Settings) -> ModelCatalogue:
    """The model catalogue, dated today (UTC) unless ATELIER_MODELS_DATE previews a day."""
    clock = fixed_clock(settings.models_date) if settings.models_date else utc_today
    return ModelCatalogue.load(settings.models_file, clock=clock)


@dataclass(frozen=True)
class ConfiguredModel:
    role: str  # "chat model", "image model", ...
    backend: str
    model: str


def configured_models(settings: Settings) -> list[ConfiguredModel]:
    """The hosted models this install uses by default (local checkpoints are not dated)."""
    found: list[ConfiguredModel] = []
    if settings.llm_configured:
        found.append(ConfiguredModel("chat model", "openai", settings.llm_model))
    if settings.openai_images_configured:
        found.append(ConfiguredModel("image model", "openai", settings.image_model))
    if settings.replicate_api_token is not None:
        found.append(ConfiguredModel("image model", "replicate", settings.replicate_model))
        found.append(ConfiguredModel("video model", "replicate", settings.replicate_video_model))
    return found


def statuses(
    catalogue: ModelCatalogue, settings: Settings
) -> list[tuple[ConfiguredModel, ModelStatus]]:
    return [(m, catalogue.status(m.backend, m.model)) for m in configured_models(settings)]


def line(configured: ConfiguredModel, status: ModelStatus) -> str:
    """ "image model (openai): gpt-image-2 — live"."""
    return f"{configured.role} ({configured.backend}): {configured.model} — {status.summary()}"


def require_chat_model(catalogue: ModelCatalogue | None, settings: Settings) -> None:
    """Refuse an agent turn on a retired chat model before anything is sent to it."""
    if catalogue is None:
        return
    status = catalogue.status("openai", settings.llm_model)
    if status.usable:
        return
    assert status.entry is not None
    text = (
        f"The chat model {settings.llm_model} was shut down by its provider on "
        f"{status.entry.shutdown}, so the agent cannot answer; nothing was sent."
    )
    if status.replacement:
        text += (
            f" The operator can switch to {status.replacement} by setting "
            f"ATELIER_LLM_MODEL={status.replacement} and restarting."
        )
    text += " Commands still work meanwhile: `/image a fox in the snow`, `/help`."
    raise ModelRetired(text)
