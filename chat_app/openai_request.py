"""The request side of the OpenAI-compatible images API: fields, and what a model can take.

Clients of OpenAI's Images API (the `openai` SDKs, Open WebUI, LibreChat) send its fields
and show its errors, so the fields and their limits are OpenAI's, and a value that is
refused names its field in `error.param`. Sources (read 2026-12, with the search tool and
the installed client):

- the `openai` package 3.57.0, `types/image_generate_params.py` and `image_edit_params.py`:
  `n` "Must be between 1 and 10"; `quality` low|medium|high|auto for the GPT image models;
  `background` transparent|opaque|auto ("If transparent, the output format needs to
  support transparency ... png (default value) or webp"); `output_format` png|jpeg|webp;
  `output_compression` 0-100 "defaults to 100"; `moderation` low|auto; `partial_images`
  "Value must be between 0 and 3"; `response_format` url|b64_json ("URLs are only valid
  for 60 minutes after the image has been generated"); the prompt at most 32000
  characters for the GPT image models; edits take `image` or several `image[]` and an
  optional `mask`, and `input_fidelity` high|low.
- OpenAI's CreateImageRequest as generated into openai-client-base 0.12.0 (docs.rs,
  read 2026-12) for the same limits.

Which sizes, qualities, backgrounds and formats a request may use depends on the model
that will draw it (pipelines/images/*.py `Capabilities`), so that part is checked once
the model is known (`check_for_model`). "auto" asks the server to choose: for a model
without an "auto" it means the model's own default, which is what choosing means there.
What Atelier cannot honour (`moderation=low`, compression below 100, high input
fidelity) is refused by name rather than silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from chat_app.api_errors import ApiError
from core.errors import BackendNotConfigured, InvalidInput
from pipelines.images.base import Capabilities, ImageBackend
from pipelines.images.registry import BACKEND_MODULES, BackendRegistry

MAX_PROMPT_CHARS = 32_000  # the GPT image models' limit (see above)
MAX_N = 10
URL_LIFETIME_S = 60 * 60  # OpenAI's url answers are valid for 60 minutes (see above)


class ImagesRequest(BaseModel):
    """Fields shared by generations and edits, as OpenAI names and bounds them.

    Unknown fields are ignored, as clients send ones for other models (`style`, `user`).
    """

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    model: str | None = Field(None, max_length=300)
    n: int = Field(1, ge=1, le=MAX_N)
    size: str | None = Field(None, max_length=32)
    quality: str | None = Field(None, max_length=16)
    background: Literal["transparent", "opaque", "auto"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    output_compression: int | None = Field(None, ge=0, le=100)
    moderation: Literal["low", "auto"] | None = None
    response_format: Literal["url", "b64_json"] | None = None
    stream: bool = False
    partial_images: int | None = Field(None, ge=0, le=3)

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the prompt is empty; describe the image you want")
        return value

    def refuse_unsupported(self) -> None:
        """Options OpenAI has that Atelier cannot pass on: refused by name."""
        if self.moderation == "low":
            raise ApiError(
                400,
                "moderation 'low' is not supported here; leave it out or use 'auto'.",
                param="moderation",
                code="unsupported_value",
            )
        if self.output_compression is not None and self.output_compression != 100:
            raise ApiError(
                400,
                "output_compression is not supported here: images come at full quality "
                "(100). Leave it out.",
                param="output_compression",
                code="unsupported_value",
            )
        if self.background == "transparent" and self.output_format == "jpeg":
            raise ApiError(
                400,
                "A transparent background needs output_format png or webp.",
                param="background",
                code="invalid_value",
            )

    @property
    def wants_url(self) -> bool:
        return self.response_format == "url"


class GenerationRequest(ImagesRequest):
    """POST /v1/images/generations (a JSON body)."""


class EditRequest(ImagesRequest):
    """POST /v1/images/edits (multipart: these fields as text parts, plus the files)."""

    input_fidelity: Literal["high", "low"] | None = None

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.input_fidelity == "high":
            raise ApiError(
                400,
                "input_fidelity 'high' is not supported here; leave it out or use 'low'.",
                param="input_fidelity",
                code="unsupported_value",
            )


@dataclass(frozen=True)
class ModelOptions:
    """The request's options once checked against the model that will draw it; None
    means the model's default."""

    size: str | None
    quality: str | None
    background: str | None
    output_format: str | None


def check_for_model(request: ImagesRequest, caps: Capabilities, label: str) -> ModelOptions:
    """The options `request` asks of a model with `caps`, or ApiError naming the field."""
    if len(request.prompt) > caps.max_prompt_chars:
        raise ApiError(
            400,
            f"The prompt has {len(request.prompt):,} characters; {label} accepts at most "
            f"{caps.max_prompt_chars:,}.",
            param="prompt",
            code="string_above_max_length",
        )
    size = _auto_or(request.size, "auto" in caps.sizes)
    if size is not None and not caps.allows_size(size):
        allowed = ", ".join(f"'{s}'" for s in caps.sizes)
        more = f", or {caps.size_range.describe()}" if caps.size_range else ""
        raise _invalid("size", size, f"{label} takes {allowed}{more}")
    quality = _auto_or(request.quality, "auto" in caps.qualities)
    if quality is not None and quality not in caps.qualities:
        raise _invalid("quality", quality, f"{label} takes {_listed(caps.qualities)}")
    background = _auto_or(request.background, "auto" in caps.backgrounds)
    if background is not None and background not in caps.backgrounds:
        takes = _listed(caps.backgrounds) if caps.backgrounds else "no background option"
        raise _invalid("background", background, f"{label} takes {takes}")
    output_format = request.output_format
    if output_format is not None and output_format not in caps.output_formats:
        raise _invalid(
            "output_format", output_format, f"{label} writes {_listed(caps.output_formats)}"
        )
    return ModelOptions(size, quality, background, output_format)


def _auto_or(value: str | None, model_has_auto: bool) -> str | None:
    """An "auto" lets the server choose: kept for a model that takes it, else its default."""
    if value == "auto" and not model_has_auto:
        return None
    return value


def _listed(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def _invalid(param: str, value: str, why: str) -> ApiError:
    return ApiError(
        400, f"Invalid value for '{param}': '{value}'. {why}.", param=param, code="invalid_value"
    )


# ------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Target:
    """The backend and model a request's `model` names, as a spec the tools take."""

    spec: str  # "openai:gpt-image-2"
    backend: ImageBackend
    model: str

    @property
    def label(self) -> str:
        return f"{self.backend.label} {self.model}"

    def capabilities(self, editing: bool = False) -> Capabilities:
        """The model's capabilities; for an edit, those of the model that will edit (a
        backend may hand edits to its `edit_model`, as tools/edit_image.py does)."""
        caps = self.backend.capabilities(self.model)
        edit_model = getattr(self.backend, "edit_model", None)
        if editing and caps.edit == "none" and edit_model:
            return self.backend.capabilities(edit_model)
        return caps


def resolve_model(backends: BackendRegistry, name: str | None) -> Target:
    """`model` as `backend:model`, a backend id, or a plain model name (an alias, when
    one configured backend offers it); None is the install's default. A model that is
    unknown, retired or on a backend that is not configured is 404 `model_not_found`
    with param "model", as OpenAI answers an unknown model."""
    name = (name or "").strip()
    if not name:
        spec = backends.default_id()
    elif name.split(":", 1)[0].lower() in BACKEND_MODULES:
        spec = name
    else:
        spec = _alias(backends, name)
    try:
        backend, model = backends.resolve(spec)
        backends.check_model(backend.id, model, "image model")
    except (BackendNotConfigured, InvalidInput) as exc:
        raise ApiError(404, exc.message, param="model", code="model_not_found") from None
    return Target(f"{backend.id}:{model}", backend, model)


def aliases(backends: BackendRegistry) -> dict[str, str]:
    """Plain model name -> its spec, for names exactly one configured backend offers."""
    owners: dict[str, list[str]] = {}
    for backend in backends.available():
        for model in backends.live_models(backend):
            owners.setdefault(model, []).append(f"{backend.id}:{model}")
    return {name: specs[0] for name, specs in owners.items() if len(specs) == 1}


def _alias(backends: BackendRegistry, name: str) -> str:
    found = aliases(backends).get(name)
    if found is not None:
        return found
    ids = {backend.id for backend in backends.available()}
    if "/" in name and "replicate" in ids:
        return f"replicate:{name}"  # any Replicate model by owner/name, as in the chat
    raise ApiError(
        404,
        f"The model '{name}' does not exist here. GET /v1/models lists the models this "
        "server can use, as backend:model ids and plain names.",
        param="model",
        code="model_not_found",
    )
