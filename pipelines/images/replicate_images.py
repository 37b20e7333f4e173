"""Replicate image models: a request as a model's input, and its outputs as checked images.

A prediction's life on Replicate (create with the project's retry policy, poll with
progress, cancel whenever we stop waiting, download through the guarded downloader) is
`pipelines/replicate_api/replicate_client.py`'s; how a request becomes a model's input is data, in
`pipelines/images/replicate_models.py`. What is left here is what is particular to images: the
limits `Capabilities` cannot express, input images and masks as Replicate wants them, a
seed always sent so every image can be made again, and outputs that really are images.

Progress: the client reports the percentage a model prints in its logs (tqdm's "NN%|",
`replicate_client._percent`); while someone watches, outputs a model lists before it
has finished are shown as previews (`_Previews`).
"""

from __future__ import annotations

import asyncio
import io
import secrets
from dataclasses import replace
from typing import Any, Unpack

from PIL import Image

from core.errors import AtelierError, BackendFailed, InvalidInput
from core.image_decoding import open_image
from core.logging_setup import get_logger
from pipelines import previews
from pipelines.backend_settings import BackendSettings
from pipelines.downloads.guarded_fetch import GuardedFetcher, refused
from pipelines.images import replicate_models
from pipelines.images.base import (
    Capabilities,
    GeneratedImage,
    ImageRequest,
    ImageResult,
    check_request,
)
from pipelines.images.replicate_models import ReplicateModel
from pipelines.progress import Progress
from pipelines.replicate_api.model_refs import ModelRef, parse_ref
from pipelines.replicate_api.replicate_client import (
    ClientOptions,
    Connections,
    ReplicateClient,
    configured,
    report,
)
from pipelines.replicate_api.replicate_files import (
    check_json,
    data_uri,
    fetch_output,
    output_link,
    record,
)

log = get_logger(__name__)

DEFAULT_MODEL = "black-forest-labs/flux-schnell"
MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
MAX_RANDOM_SEED = 2**31 - 1  # every model's seed input takes a signed 32-bit value


class ReplicateImages:
    id = "replicate"
    label = "Replicate"
    # What edit_image uses when the conversation's model cannot edit (e.g. flux-schnell).
    edit_model = "black-forest-labs/flux-kontext-pro"

    def __init__(
        self, api_token: str, model: str = DEFAULT_MODEL, **options: Unpack[ClientOptions]
    ) -> None:
        self.default_model = model
        self._client = ReplicateClient(api_token, **options)

    # -- the ImageBackend interface ----------------------------------------------------

    def capabilities(self, model: str | None = None) -> Capabilities:
        return replicate_models.lookup(model or self.default_model).capabilities

    def suggested_models(self) -> list[str]:
        return list(dict.fromkeys([self.default_model, *replicate_models.MODELS]))

    async def generate(
        self, request: ImageRequest, progress: Progress | None = None
    ) -> ImageResult:
        # 1. Refuse what cannot be honoured, before anything is spent.
        model = (request.model or self.default_model).strip()
        ref = parse_ref(model)
        spec = replicate_models.lookup(model)
        checked = check_request(self, replace(request, model=model))
        label = f"{self.label} {model}"
        size_given = bool(request.size)
        _check_model_limits(spec, checked, label, size_given)
        # 2. The model's input, as data says (replicate_models); a seed is always sent.
        seed = _seed_to_send(spec, checked.seed)
        image_uri, mask_uri = None, None
        if checked.images:
            image_uri, mask_uri = await asyncio.to_thread(_encode_images, spec, checked)
        inputs = replicate_models.build_input(
            spec,
            checked,
            seed=seed,
            size_given=size_given,
            image_uri=image_uri,
            mask_uri=mask_uri,
        )
        check_json(inputs)
        # 3. Create (retrying as Replicate asks) and poll until it ends, or raise.
        pinned = ModelRef(ref.owner, ref.name, ref.version or spec.version)
        shown = None
        if progress is not None and progress.watched:
            shown = _Previews(self._connect().files, progress, label)
        try:
            prediction = await self._client.predict(
                pinned, inputs, label, progress, on_status=shown.seen if shown else None
            )
        finally:
            if shown is not None:
                shown.stop()
        # 4. Download every output and make sure each one is an image.
        from replicate.helpers import transform_output  # on first use: it costs start-up time

        conns = self._connect()
        urls = _output_urls(transform_output(prediction.output, conns.api), label)
        report(progress, 100, f"downloading {len(urls)} image(s)")
        images = await self._download_all(conns.files, urls, label, seed)
        return ImageResult(
            images=images,
            backend=self.id,
            model=model,
            prompt_sent=checked.prompt,
            parameters=record(prediction, inputs),
            seed_honoured=seed is not None,
            metrics=dict(prediction.metrics or {}),
        )

    async def aclose(self) -> None:
        """Close this event loop's connections (tests and scripts; the app never needs to)."""
        await self._client.aclose()

    def _connect(self) -> Connections:
        return self._client.connect()

    # -- outputs ------------------------------------------------------------------------

    async def _download_all(
        self, files: GuardedFetcher, urls: list[str], label: str, seed: int | None
    ) -> list[GeneratedImage]:
        async def one(url: str) -> GeneratedImage:
            data = await fetch_output(files, url, label, max_bytes=MAX_DOWNLOAD_BYTES)
            mime, width, height = await asyncio.to_thread(_probe, data, url, label)
            return GeneratedImage(data=data, mime=mime, width=width, height=height, seed=seed)

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(url)) for url in urls]
        except ExceptionGroup as failed:  # one error is enough for the user: the first
            raise failed.exceptions[0] from None
        return [task.result() for task in tasks]


class _Previews:
    """Outputs a running prediction already lists, the newest shown as a preview.

    A model whose `predict` yields its outputs one by one lists them in `output` while it
    is still processing; the list grows between polls (replicate-python 1.0.7 reads them
    so in `Prediction.output_iterator`, read 2026-11-30). The newest one is fetched as
    every output is (data: decoded, links through the guarded downloader) and shown. One
    fetch at a time; one that fails is skipped: a preview must never fail the job.
    """

    MAX_BYTES = 16 * 1024 * 1024

    def __init__(self, files: GuardedFetcher, progress: Progress, label: str) -> None:
        self.files, self.progress, self.label = files, progress, label
        self.shown_url: str | None = None
        self.task: asyncio.Task[None] | None = None

    def seen(self, prediction: Any) -> None:
        output = prediction.output
        if prediction.status != "processing" or not output:
            return
        newest = output[-1] if isinstance(output, list) else output
        try:
            url = output_link(newest, self.label, "an image")
        except BackendFailed:
            return  # the finished prediction's outputs are checked, and refused, as usual
        if url == self.shown_url or (self.task is not None and not self.task.done()):
            return
        self.shown_url = url
        self.task = asyncio.ensure_future(self._show(url))

    async def _show(self, url: str) -> None:
        try:
            data = await fetch_output(self.files, url, self.label, max_bytes=self.MAX_BYTES)
        except AtelierError as exc:
            log.info("replicate_preview_skipped", model=self.label, reason=exc.message[:200])
            return
        preview = await asyncio.to_thread(previews.from_bytes, data)
        if preview is not None:
            self.progress.show(preview)

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()


# --------------------------------------------------------------------------- checks


def _check_model_limits(
    spec: ReplicateModel, request: ImageRequest, label: str, size_given: bool
) -> None:
    """Limits that `Capabilities` cannot express, refused before anything is spent."""
    if spec.guidance_range and request.guidance is not None:
        low, high = spec.guidance_range
        if not low <= request.guidance <= high:
            raise InvalidInput(
                f"{label} takes guidance from {low:g} to {high:g}; {request.guidance:g} was asked."
            )
    if request.seed is not None and request.seed > spec.max_seed:
        raise InvalidInput(
            f"{label} takes seeds from 0 to {spec.max_seed}; {request.seed} was asked."
        )
    if request.strength is not None and not request.images:
        raise InvalidInput(
            f"A strength only applies when {label} starts from an input image (img2img); "
            "give an image or leave strength out."
        )
    if spec.input_sets_size and request.images and size_given:
        first = request.images[0]
        if request.size != f"{first.width}x{first.height}":
            raise InvalidInput(
                f"{label} keeps the input image's shape ({first.width}x{first.height}) when it "
                f"starts from an image, so {request.size} cannot be honoured. Leave the size out."
            )


def _seed_to_send(spec: ReplicateModel, seed: int | None) -> int | None:
    """The user's seed, or a drawn one, so every image can be made again; None: no seed."""
    if spec.inputs.seed is None:
        return None
    return seed if seed is not None else secrets.randbelow(MAX_RANDOM_SEED + 1)


# --------------------------------------------------------------------------- input images


def _encode_images(spec: ReplicateModel, request: ImageRequest) -> tuple[str, str | None]:
    """Data URIs for the input image and mask (fine at our sizes: no upload round trip)."""
    first = request.images[0]
    image_uri = data_uri(first.data, first.mime)
    mask_uri = None
    if request.mask is not None:
        mask_uri = data_uri(
            _black_and_white_mask(request.mask.data, spec.mask_repaints), "image/png"
        )
    return image_uri, mask_uri


def _black_and_white_mask(data: bytes, repaint: str) -> bytes:
    """Our masks mark the area to repaint as transparent (as OpenAI's do); Replicate's
    inpainting models want a black-and-white picture instead."""
    with open_image(data) as image:
        if "A" not in image.getbands() and "transparency" not in image.info:
            raise InvalidInput(
                "A mask must be a PNG whose transparent pixels mark the area to repaint; "
                "this one has no transparency."
            )
        alpha = image.convert("RGBA").getchannel("A")
    repaint_value, keep_value = (255, 0) if repaint == "white" else (0, 255)
    mask = alpha.point(lambda a: repaint_value if a < 128 else keep_value)
    if mask.getextrema() == (keep_value, keep_value):
        raise InvalidInput("The mask has no transparent pixels, so there is nothing to repaint.")
    out = io.BytesIO()
    mask.save(out, format="PNG")
    return out.getvalue()


# --------------------------------------------------------------------------- outputs


def _output_urls(output: Any, label: str) -> list[str]:
    """One output or a list: FileOutput or a plain string (a link or a data: URI).

    Which links are fetched is `fetch_output`'s call (data: decoded in place, http(s)
    through the guard, anything else refused there with the same message as a blocked host).
    """
    if output is None or output == [] or output == "":
        raise BackendFailed(f"{label} finished without any image. Try again.")
    items = list(output) if isinstance(output, list | tuple) else [output]
    return [output_link(item, label, "an image") for item in items]


def _probe(data: bytes, url: str, label: str) -> tuple[str, int, int]:
    """(mime, width, height), refusing anything that does not decode as an image.

    A downloaded file that is not an image gets the downloader's neutral message (what
    answered at a link is not the user's to learn); a data: URI says what is wrong.
    """
    try:
        with open_image(data) as image:
            return Image.MIME.get(image.format or "", "image/png"), image.width, image.height
    except InvalidInput as exc:
        if not url.startswith("data:"):
            raise refused(url, "not an image", error=str(exc)[:200], model=label) from None
        raise BackendFailed(f"{label} returned a file that is not a usable image: {exc}") from None


def create_backend(settings: BackendSettings) -> ReplicateImages | None:
    found = configured(settings)
    return (
        None if found is None else ReplicateImages(found[0], settings.replicate_model, **found[1])
    )
