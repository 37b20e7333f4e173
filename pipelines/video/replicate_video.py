"""Replicate video models, by model reference: create, poll, download, check the clip.

A prediction's life on Replicate is the same whether it makes an image or a clip, so the
one Replicate client does it (`pipelines/replicate_api/replicate_client.py`: create with
the project's retry policy, Retry-After included, poll with progress, cancel on Replicate
whenever we stop waiting, download through the guarded downloader); this module adds what
differs:
the inputs of each video model (data, in `pipelines/video/replicate_video_models.py`), a
download limit sized for video, and checking that what came back really is a video
that browsers play (re-encoding it when not).

Video predictions take minutes, so `max_wait_s` is long; a user's stop cancels the
prediction on Replicate, where it would otherwise keep running and billing.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import replace
from typing import Any, Unpack

from core.errors import BackendFailed, InvalidInput
from pipelines.backend_settings import BackendSettings
from pipelines.downloads.guarded_fetch import refused
from pipelines.progress import Progress
from pipelines.replicate_api.model_refs import ModelRef, parse_ref
from pipelines.replicate_api.replicate_client import (
    ClientOptions,
    ReplicateClient,
    configured,
    report,
)
from pipelines.replicate_api.replicate_files import check_json, data_uri, output_link, record
from pipelines.video import replicate_video_models
from pipelines.video.replicate_video_models import ReplicateVideoModel
from pipelines.video.video_base import (
    EncodedVideo,
    VideoCapabilities,
    VideoRequest,
    VideoResult,
    check_video_request,
)
from pipelines.video.video_encoding import web_playable

DEFAULT_MODEL = "minimax/video-01"
MAX_VIDEO_BYTES = 256 * 1024 * 1024


class ReplicateVideo:
    id = "replicate"
    label = "Replicate"

    def __init__(
        self, api_token: str, model: str = DEFAULT_MODEL, **options: Unpack[ClientOptions]
    ) -> None:
        self.default_model = model
        # Clips take minutes: a slower poll and a longer wait than images, unless given.
        self._client = ReplicateClient(
            api_token, **ClientOptions(poll_interval_s=2.0, max_wait_s=3600.0) | options
        )

    # -- the VideoBackend interface ----------------------------------------------------

    def capabilities(self, model: str | None = None) -> VideoCapabilities:
        return replicate_video_models.lookup(model or self.default_model).capabilities

    def suggested_models(self) -> list[str]:
        return list(dict.fromkeys([self.default_model, *replicate_video_models.MODELS]))

    async def generate(
        self, request: VideoRequest, progress: Progress | None = None
    ) -> VideoResult:
        # 1. Refuse what cannot be honoured, before anything is spent.
        model = (request.model or self.default_model).strip()
        ref = parse_ref(model)
        spec = replicate_video_models.lookup(model)
        checked = check_video_request(self, replace(request, model=model))
        label = f"{self.label} {model}"
        seed = _seed_to_send(spec, checked.seed, label)
        # 2. The model's input, as data says; the length only when the request set it.
        image_uri = None
        if checked.image is not None:
            image_uri = await asyncio.to_thread(data_uri, checked.image.data, checked.image.mime)
        inputs = replicate_video_models.build_input(
            spec,
            checked,
            seed=seed,
            image_uri=image_uri,
            length_given=request.seconds is not None or request.fps is not None,
        )
        check_json(inputs)
        # 3. Create (retrying as Replicate asks) and poll until it ends, or raise.
        pinned = ModelRef(ref.owner, ref.name, ref.version or spec.version)
        prediction = await self._client.predict(pinned, inputs, label, progress)
        # 4. Download the clip and make sure browsers can play it.
        from replicate.helpers import transform_output  # on first use: it costs start-up time

        url = _output_url(transform_output(prediction.output, self._client.connect().api), label)
        report(progress, 100, "downloading the clip")
        data = await self._client.download(url, label, max_bytes=MAX_VIDEO_BYTES)
        video = await asyncio.to_thread(_checked_video, data, url, label)
        return VideoResult(
            video=video,
            backend=self.id,
            model=model,
            prompt_sent=checked.prompt,
            parameters={
                **record(prediction, inputs),
                "reencoded": video.data != data,
                "model_row": "known" if spec.known else "generic",
            },
            seed=seed,
            seed_honoured=seed is not None,
            metrics=dict(prediction.metrics or {}),
        )

    async def aclose(self) -> None:
        """Close this event loop's connections (tests and scripts)."""
        await self._client.aclose()


def _seed_to_send(spec: ReplicateVideoModel, seed: int | None, label: str) -> int | None:
    """The user's seed or a drawn one, so a clip can be made again; None: no seed input."""
    if spec.inputs.seed is None:
        return None
    if seed is not None and seed > spec.max_seed:
        raise InvalidInput(f"{label} takes seeds from 0 to {spec.max_seed}; {seed} was asked.")
    return seed if seed is not None else secrets.randbelow(spec.max_seed + 1)


def _output_url(output: Any, label: str) -> str:
    """The one clip a video model returns: a FileOutput or a plain string (link or data:)."""
    items = list(output) if isinstance(output, list | tuple) else [output]
    items = [item for item in items if item not in (None, "")]
    if not items:
        raise BackendFailed(f"{label} finished without any video. Try again.")
    if len(items) != 1:
        raise BackendFailed(
            f"{label} finished with {len(items)} outputs; Atelier expects one video. "
            "If this model returns several files, it is not a text/image-to-video model."
        )
    return output_link(items[0], label, "a video")


def _checked_video(data: bytes, url: str, label: str) -> EncodedVideo:
    """A clip browsers play; a downloaded file that is not one gets the neutral message."""
    try:
        return web_playable(data)
    except InvalidInput as exc:
        if not url.startswith("data:"):
            raise refused(url, "not a video", error=str(exc)[:200], model=label) from None
        raise BackendFailed(f"{label} returned a file that is not a usable video: {exc}") from None


def create_video_backend(settings: BackendSettings, images: Any = None) -> ReplicateVideo | None:
    found = configured(settings)
    if found is None:
        return None
    return ReplicateVideo(found[0], settings.replicate_video_model, **found[1])
