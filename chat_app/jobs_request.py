"""The body of `POST /api/v1/jobs`: one model per kind, told apart by `kind`.

They mirror the chat tools' arguments (tools/generate_image.py, start_batch.py,
generate_video.py, train_lora.py), which validate them again when the job runs; they
are written out here rather than imported because the tools load langchain, which the
app must not import at start-up (tests/test_startup_imports.py). Here they bound what a
client can send (lengths, counts) and document it in the OpenAPI schema.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

_TEXT = 4000
_NAME = 200


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid")

    webhook_url: str | None = Field(
        None,
        max_length=2000,
        description=(
            "POSTed a signed JSON event when the job ends (header Atelier-Signature). "
            "Make your signing secret first: POST /api/v1/webhook-secret. Private, "
            "loopback and link-local addresses are refused unless the operator allows "
            "them (ATELIER_FETCH_ALLOW_HOSTS)."
        ),
    )
    confirm_spend: bool = Field(
        False,
        description=(
            "Go ahead where the chat would ask first (a cost above your confirmation "
            "threshold; every batch and training). Without it such a job fails with "
            "code confirmation_required, quoting the estimate. Hard budgets always apply."
        ),
    )

    def tool_args(self) -> dict[str, Any]:
        """The arguments for the kind's chat tool."""
        return self.model_dump(exclude={"kind", "webhook_url", "confirm_spend"}, exclude_none=True)


class ImageJob(_Common):
    kind: Literal["image"]
    prompt: str = Field(min_length=1, max_length=_TEXT, description="What the image shows.")
    n: int = Field(1, ge=1, le=10, description="How many images.")
    size: str | None = Field(None, max_length=16, description="WIDTHxHEIGHT, e.g. 1024x1024.")
    quality: str | None = Field(None, max_length=16, description="low, medium, high or auto.")
    seed: int | None = None
    negative_prompt: str | None = Field(None, max_length=_TEXT)
    steps: int | None = Field(None, ge=1, le=500)
    guidance: float | None = Field(None, ge=0, le=50)
    lora: str | None = Field(None, max_length=_NAME, description="'name' or 'name:weight', ...")
    background: str | None = Field(None, max_length=16, description="transparent|opaque|auto.")
    output_format: str | None = Field(None, max_length=8, description="png, jpeg or webp.")
    backend: str | None = Field(
        None, max_length=_NAME, description="'openai', 'local', 'replicate:owner/name' ..."
    )


class BatchJob(_Common):
    kind: Literal["batch"]
    items: list[Annotated[str, Field(min_length=1, max_length=300)]] = Field(
        min_length=1, max_length=1000, description="The objects, one image set each."
    )
    style: str | None = Field(None, max_length=64)
    template: str | None = Field(None, max_length=64)
    size: str | None = Field(None, max_length=16)
    count: int | None = Field(None, ge=1, le=10, description="Images per item.")
    backend: str | None = Field(None, max_length=_NAME)
    model: str | None = Field(None, max_length=_NAME)
    seed: int | None = None


class VideoJob(_Common):
    kind: Literal["video"]
    prompt: str | None = Field(None, max_length=_TEXT)
    image_id: str | None = Field(None, max_length=64, description="An image of yours to animate.")
    seconds: float | None = Field(None, gt=0, le=60)
    fps: int | None = Field(None, ge=1, le=60)
    size: str | None = Field(None, max_length=16)
    seed: int | None = None
    steps: int | None = Field(None, ge=1, le=500)
    backend: str | None = Field(None, max_length=_NAME)


class TrainingJob(_Common):
    kind: Literal["training"]
    name: str = Field(min_length=1, max_length=64, description="The new LoRA's name.")
    trigger_word: str | None = Field(None, max_length=40)
    images: list[Annotated[str, Field(max_length=64)]] = Field(
        min_length=1, max_length=500, description="Ids of your images to train on."
    )
    steps: int | None = Field(None, ge=1, le=100_000)
    rank: int | None = Field(None, ge=1, le=256)
    learning_rate: float | None = Field(None, gt=0, le=1)
    resolution: int | None = Field(
        None, ge=32, le=2048, description="Training size in px, a multiple of 8."
    )  # pipelines/training/lora_dataset.py takes 32 to 2048
    base_model: str | None = Field(None, max_length=_NAME)
    backend: Literal["local", "replicate"] = "local"
    licence: str | None = Field(None, max_length=200)
    destination: str | None = Field(None, max_length=_NAME)


JobCreate = Annotated[ImageJob | BatchJob | VideoJob | TrainingJob, Field(discriminator="kind")]
