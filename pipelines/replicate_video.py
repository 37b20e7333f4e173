"""Replicate video models, by model reference: create, poll, download, check the clip.

A prediction's life on Replicate is the same whether it makes an image or a clip, so the
image backend's machinery does it (`ReplicateImages`: create with the project's retry
policy, poll with progress, cancel on Replicate whenever we stop waiting); this module
adds what differs: the inputs of each video model (data, in
`pipelines/replicate_video_models.py`), a download limit sized for video, and checking
that what came back really is a video that browsers play (re-encoding it when not).

Video predictions take minutes, so `max_wait_s` is long; a user's stop cancels the
prediction on Replicate, where it would otherwise keep running and billing.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import replace
from typing import Any

from replicate.helpers import FileOutput, transform_output

from memory.errors import BackendFailed, InvalidInput
from memory.logging_setup import get_logger
from pipelines import replicate_models, replicate_video_models
from pipelines.fetch_policy import FetchPolicy
from pipelines.guarded_fetch import GuardedFetcher, refused
from pipelines.progress import Progress
from pipelines.replicate_images import (
    ReplicateImages,
    _check_json,
    _data_uri,
    _decode_data_uri,
    _failure,
    _redact,
    _report,
)
from pipelines.replicate_models import ModelRef
from pipelines.replicate_video_models import ReplicateVideoModel
from pipelines.video_base import (
    EncodedVideo,
    VideoCapabilities,
    VideoRequest,
    VideoResult,
    check_video_request,
)
from pipelines.video_encoding import web_playable

log = get_logger(__name__)

DEFAULT_MODEL = "minimax/video-01"
MAX_VIDEO_BYTES = 256 * 1024 * 1024


class ReplicateVideo:
    id = "replicate"
    label = "Replicate"

    def __init__(
        self,
        api_token: str,
        model: str = DEFAULT_MODEL,
        *,
        base_url: str | None = None,
        poll_interval_s: float = 2.0,
        timeout_s: float = 120.0,
        max_retries: int = 2,
        retry_backoff_s: float = 0.5,
        max_wait_s: float = 3600.0,
        fetch_policy: FetchPolicy | None = None,
    ) -> None:
        self.default_model = model
        self._predictions = ReplicateImages(
            api_token,
            base_url=base_url,
            poll_interval_s=poll_interval_s,
            timeout_s=timeout_s,
            max_retries=max_retries,
            retry_backoff_s=retry_backoff_s,
            max_wait_s=max_wait_s,
            fetch_policy=fetch_policy,
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
        ref = replicate_models.parse_ref(model)
        spec = replicate_video_models.lookup(model)
        checked = check_video_request(self, replace(request, model=model))
        label = f"{self.label} {model}"
        seed = _seed_to_send(spec, checked.seed, label)
        # 2. The model's input, as data says; the length only when the request set it.
        image_uri = None
        if checked.image is not None:
            image_uri = await asyncio.to_thread(_data_uri, checked.image.data, checked.image.mime)
        inputs = replicate_video_models.build_input(
            spec,
            checked,
            seed=seed,
            image_uri=image_uri,
            length_given=request.seconds is not None or request.fps is not None,
        )
        _check_json(inputs)
        # 3. Create (retrying as Replicate asks) and poll until it ends.
        predictions = self._predictions
        conns = predictions._connect()
        pinned = ModelRef(ref.owner, ref.name, ref.version or spec.version)
        _report(progress, 0, "sending to Replicate")
        prediction = await predictions._create(
            conns.api, pinned, replicate_models.GENERIC, inputs, label, progress
        )
        log.info("replicate_video_created", prediction=prediction.id, model=model)
        prediction = await predictions._wait(conns.api, prediction, label, progress)
        if prediction.status == "failed":
            raise _failure(prediction, label)
        if prediction.status == "canceled":
            raise BackendFailed(
                f"The Replicate prediction {prediction.id} was canceled before it finished "
                "(from Replicate's dashboard or another client); nothing was made."
            )
        # 4. Download the clip and make sure browsers can play it.
        url = _output_url(transform_output(prediction.output, conns.api), label)
        _report(progress, 100, "downloading the clip")
        data = await _fetch(conns.files, url, label)
        video = await asyncio.to_thread(_checked_video, data, url, label)
        return VideoResult(
            video=video,
            backend=self.id,
            model=model,
            prompt_sent=checked.prompt,
            parameters={
                "input": _redact(inputs),
                "prediction_id": prediction.id,
                "replicate_model": prediction.model,
                "version": prediction.version,
                "reencoded": video.data != data,
                "model_row": "known" if spec.known else "generic",
            },
            seed=seed,
            seed_honoured=seed is not None,
            metrics=dict(prediction.metrics or {}),
        )

    async def aclose(self) -> None:
        """Close this event loop's connections (tests and scripts)."""
        await self._predictions.aclose()


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
    if len(items) != 1:
        raise BackendFailed(
            f"{label} finished with {len(items)} outputs; Atelier expects one video. "
            "If this model returns several files, it is not a text/image-to-video model."
        )
    item = items[0]
    url = item.url if isinstance(item, FileOutput) else item
    if not isinstance(url, str):  # which links are fetched is the guarded downloader's call
        raise BackendFailed(
            f"{label} finished, but its output is not a video link ({type(item).__name__})."
        )
    return url


async def _fetch(files: GuardedFetcher, url: str, label: str) -> bytes:
    """A data: URI decoded in place; any other link through the guarded downloader."""
    if url.startswith("data:"):
        return _decode_data_uri(url, label)
    return await files.fetch(url, max_bytes=MAX_VIDEO_BYTES)


def _checked_video(data: bytes, url: str, label: str) -> EncodedVideo:
    """A clip browsers play; a downloaded file that is not one gets the neutral message."""
    try:
        return web_playable(data)
    except InvalidInput as exc:
        if not url.startswith("data:"):
            raise refused(url, "not a video", error=str(exc)[:200], model=label) from None
        raise BackendFailed(f"{label} returned a file that is not a usable video: {exc}") from None


def create_video_backend(settings: Any, images: Any = None) -> ReplicateVideo | None:
    token = settings.replicate_api_token
    if token is None or not token.get_secret_value().strip():
        return None
    return ReplicateVideo(
        token.get_secret_value().strip(),
        settings.replicate_video_model,
        base_url=settings.replicate_base_url,
        poll_interval_s=settings.replicate_poll_interval_s,
        timeout_s=settings.request_timeout_s,
        max_retries=settings.max_retries,
        fetch_policy=FetchPolicy.from_setting(
            settings.fetch_allow_hosts, timeout_s=settings.request_timeout_s
        ),
    )
