"""Watching an image render: previews that update while it is made, and nothing stale kept.

- OpenAI: the real `openai` client streams partial images from the fake server (which
  speaks the image-streaming SSE format); each becomes a preview, then the image comes.
- Local diffusers: a tiny random-weight model shows its latent every few steps.
- Replicate: the percentage from the logs, and outputs listed before the end as previews.
- The chat: a live message with a bar and a preview that updates, removed at the end of
  the call and never stored, so a resumed thread has the image and no leftover bar; and
  a removed message stays removed in the database even when an earlier write of it was
  still queued (the stale "OpenAI is drawing" bar seen after a resume).
"""

from __future__ import annotations

import asyncio
import base64
import io
import uuid
from pathlib import Path

import pytest
from PIL import Image

from core.errors import BackendFailed
from memory.db import one_writer
from pipelines.images import latent_preview
from pipelines.images.base import ImageRequest, InputImage
from pipelines.images.openai_images import OpenAIImages
from pipelines.images.replicate_images import ReplicateImages
from pipelines.progress import Preview, Progress, ProgressUpdate
from tests.app_process import ADMIN_PASSWORD, app_rows
from tests.chat_client import ChatSession, login_cookie, outputs
from tests.db_fixtures import *  # noqa: F403 (fixtures)
from tests.db_fixtures import step_dict
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.replicate_server import FakeReplicate
from tests.replicate_fixtures import fetch_policy_for
from tests.waiting import wait_until


def watched() -> Progress:
    """A progress someone watches (a listener), as the chat's is."""

    async def listen(update: ProgressUpdate) -> None:
        return None

    return Progress(listen)


def decoded(preview: Preview) -> Image.Image:
    image = Image.open(io.BytesIO(preview.data))
    image.load()
    assert (image.width, image.height) == (preview.width, preview.height)
    return image


def openai_images(fake: FakeOpenAI, model: str = "gpt-image-2") -> OpenAIImages:
    return OpenAIImages("sk-test", model, fake.base_url, timeout_s=10, max_retries=0)


def png(size: tuple[int, int] = (1024, 1024)) -> InputImage:
    out = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(out, "PNG")
    return InputImage(out.getvalue(), "image/png", *size)


# --------------------------------------------------------------------------- OpenAI


async def test_openai_streams_partial_images_as_previews_then_the_image(fake_openai):
    progress = watched()
    result = await openai_images(fake_openai).generate(ImageRequest("a heron"), progress)

    sent = fake_openai.last_request("/images/generations").json
    assert sent is not None and (sent["stream"], sent["partial_images"]) == (True, 2)
    shown = progress.previews
    assert len(shown) == 2
    # Passed on as OpenAI sent them (full size, PNG): the browser scales them.
    assert [(p.mime, decoded(p).size) for p in shown] == [("image/png", (1024, 1024))] * 2
    assert shown[0].data != shown[1].data  # the second partial image is sharper
    # The bar moves with the partial images: a third of the way, then two thirds.
    fractions = [u.fraction for u in progress.history if u.preview is not None]
    assert fractions[0] == pytest.approx(0.33, abs=0.01) and max(fractions) >= 0.66
    assert any("preview 2 of 2" in u.note for u in progress.history)
    # The result is the completed image, not a preview, with the usage OpenAI reported.
    [image] = result.images
    assert (image.mime, image.width, image.height) == ("image/png", 1024, 1024)
    assert result.usage is not None and result.usage["output_tokens"] > 0
    assert result.parameters["partial_images"] == 2


def test_the_fake_streams_what_the_real_client_reads(fake_openai):
    import openai

    client = openai.OpenAI(base_url=fake_openai.base_url, api_key="sk-test", max_retries=0)
    stream = client.images.generate(
        model="gpt-image-2", prompt="a heron", stream=True, partial_images=3
    )
    events = list(stream)
    assert [e.type for e in events] == ["image_generation.partial_image"] * 3 + [
        "image_generation.completed"
    ]
    assert [e.partial_image_index for e in events[:3]] == [0, 1, 2]
    assert events[-1].usage.output_tokens > 0 and events[-1].size == "1024x1024"
    with pytest.raises(openai.BadRequestError, match="between 0 and 3"):
        client.images.generate(model="gpt-image-2", prompt="x", stream=True, partial_images=4)


async def test_openai_edits_stream_too(fake_openai):
    progress = watched()
    result = await openai_images(fake_openai).generate(
        ImageRequest("make it bluer", images=(png(),)), progress
    )
    form = fake_openai.last_request("/images/edits").form
    assert (form["stream"], form["partial_images"]) == (["true"], ["2"])
    assert len(progress.previews) == 2 and len(result.images) == 1


async def test_what_cannot_stream_is_asked_in_one_piece_and_the_bar_says_so(fake_openai):
    backend = openai_images(fake_openai)
    # Nobody watching: no previews to pay for.
    await backend.generate(ImageRequest("a heron"), Progress())
    assert "stream" not in (fake_openai.last_request("/images/generations").json or {})
    # A model not documented to stream, and a request for several images (the events
    # name no image), are asked in one piece; the bar then moves with time alone.
    first = watched()
    await backend.generate(ImageRequest("a heron", model="gpt-image-1.5"), first)
    assert "stream" not in (fake_openai.last_request("/images/generations").json or {})
    assert first.previews == [] and first.history[0].note.startswith("OpenAI is drawing")
    again = watched()
    await backend.generate(ImageRequest("a heron", model="gpt-image-1.5"), again)
    # The second request of a kind is measured against the first: labelled an estimate.
    assert "typical here (estimate)" in again.history[0].note
    several = watched()
    result = await backend.generate(ImageRequest("two herons", n=2), several)
    assert "stream" not in (fake_openai.last_request("/images/generations").json or {})
    assert len(result.images) == 2 and several.previews == []


async def test_an_error_while_streaming_keeps_nothing(fake_openai):
    progress = watched()
    with pytest.raises(BackendFailed, match="OpenAI stopped while drawing: The server had"):
        await openai_images(fake_openai).generate(ImageRequest("a FAIL_STREAM heron"), progress)
    assert len(progress.previews) == 1  # it got as far as one partial image


async def test_a_server_that_ignores_stream_is_read_as_a_plain_answer(fake_openai):
    """An OpenAI-compatible server answering a streamed request in one JSON piece."""
    plain = await openai_images(fake_openai).generate(ImageRequest("a heron"))
    body = {
        "created": 1,
        "data": [{"b64_json": base64.b64encode(plain.images[0].data).decode()}],
    }
    fake_openai.answer_next("/images/generations", body)
    result = await openai_images(fake_openai).generate(ImageRequest("a heron"), watched())
    assert result.images[0].data == plain.images[0].data
    fake_openai.answer_next("/images/generations", "<html>502</html>", content_type="text/html")
    with pytest.raises(BackendFailed, match="a body that is not JSON"):
        await openai_images(fake_openai).generate(ImageRequest("a heron"), watched())


# --------------------------------------------------------------------------- local


async def test_local_diffusers_shows_the_latent_while_denoising(tiny_sd_dir: Path, tmp_path):
    from pipelines.images.local_diffusers import LocalDiffusers

    backend = LocalDiffusers(model=str(tiny_sd_dir), device="cpu", models_dir=tmp_path)
    try:
        request = ImageRequest("a red cat", size="64x64", steps=4, seed=3)
        progress = watched()
        result = await backend.generate(request, progress)
        shown = progress.previews
        assert shown, "no preview of the latent while denoising"
        assert all(decoded(p).size == (64, 64) for p in shown)
        # Previews come before the last step: the image itself replaces them.
        first = next(u for u in progress.history if u.preview is not None)
        assert first.done < first.total
        assert len(result.images) == 1 and result.images[0].width == 64
        # Nobody watching: no previews are made.
        quiet = Progress()
        await backend.generate(request, quiet)
        assert quiet.previews == []
    finally:
        backend.runner.shutdown()  # type: ignore[attr-defined]


def test_the_latent_colours_follow_the_vae() -> None:
    class Config:
        def __init__(self, channels: int, scaling: float) -> None:
            self.latent_channels, self.scaling_factor = channels, scaling

    class Pipe:
        def __init__(self, channels: int, scaling: float) -> None:
            self.vae = type("Vae", (), {"config": Config(channels, scaling)})()

    assert latent_preview.factors_for(Pipe(4, 0.18215))[0] == latent_preview.SD15_FACTORS
    assert latent_preview.factors_for(Pipe(4, 0.13025))[0] == latent_preview.SDXL_FACTORS
    assert latent_preview.factors_for(Pipe(16, 1.5305)) is None  # no guess for others


# --------------------------------------------------------------------------- Replicate


def replicate_images(fake: FakeReplicate) -> ReplicateImages:
    return ReplicateImages(
        fake.api_token or "",
        base_url=fake.base_url,
        poll_interval_s=0.01,
        timeout_s=10.0,
        fetch_policy=fetch_policy_for(fake, timeout_s=10.0),
    )


async def test_replicate_progress_and_its_outputs_before_the_end(fake_replicate):
    fake_replicate.configure(processing_polls=4, intermediate_outputs=True)
    backend = replicate_images(fake_replicate)
    try:
        progress = watched()
        result = await backend.generate(ImageRequest("a heron", n=4, seed=5), progress)
        percents = [u.done for u in progress.history if u.note.startswith("processing ")]
        assert percents == sorted(percents) and len(set(percents)) >= 3
        shown = progress.previews
        assert shown, "no preview of the outputs listed while processing"
        assert decoded(shown[0]).size == (384, 384)
        assert len(result.images) == 4  # the outputs, each once
        # Unwatched, nothing is fetched but the four results.
        fake_replicate.reset()
        fake_replicate.configure(processing_polls=4, intermediate_outputs=True)
        await backend.generate(ImageRequest("a heron", n=4, seed=5), Progress())
        assert len(fake_replicate.requests_to("^/files/")) == 4
    finally:
        await backend.aclose()


# --------------------------------------------------------------------------- the database


async def test_a_removed_message_stays_removed_behind_its_queued_writes(
    data_layer, users, requester, engine
):
    """Chainlit hands create, update and removal to tasks nobody awaits; while another
    write holds SQLite's write lock, all three wait, and the removal must still be last."""
    alice = await users.add("alice", "correct horse battery")
    requester.act_as(alice)
    thread_id = str(uuid.uuid4())
    await data_layer.update_thread(thread_id, name="a heron", user_id=alice.id)
    bar = step_dict(thread_id, output="⏳ OpenAI is drawing 0%")
    async with one_writer(engine):  # someone else's write transaction, on SQLite
        tasks = [
            asyncio.create_task(data_layer.create_step(bar)),
            asyncio.create_task(data_layer.update_step({**bar, "output": "⏳ drawing 50%"})),
            asyncio.create_task(data_layer.delete_step(bar["id"])),
        ]
        for _ in range(10):  # let each task run up to where it waits
            await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    thread = await data_layer.get_thread(thread_id)
    assert thread is not None and [s["id"] for s in thread["steps"]] == []


# --------------------------------------------------------------------------- the chat


@pytest.mark.slow
async def test_the_chat_updates_a_preview_and_keeps_only_the_image(make_app, fake_openai):
    fake_openai.stream_interval_s = 0.8  # apart by more than the display's 0.25 s throttle
    app = make_app()
    cookie = login_cookie(app.base_url, "admin", ADMIN_PASSWORD)
    chat = ChatSession(app.base_url, cookie)
    await chat.connect()
    replies = outputs(await chat.send("draw a heron at dawn"))
    assert any("Done. Generated 1 image(s)" in text for text in replies)

    # The live view: a bar message, its preview updated in place, then the image.
    events = chat.events
    bar_ids = [
        data["id"]
        for event, data in events
        if event == "new_message" and "OpenAI is drawing" in (data.get("output") or "")
    ]
    assert len(bar_ids) == 1
    previews = [
        (index, data)
        for index, (event, data) in enumerate(events)
        if event == "element" and data.get("forId") == bar_ids[0]
    ]
    assert len({data["url"] for _, data in previews}) == 2  # two partial images...
    assert len({data["id"] for _, data in previews}) == 1  # ...in one element, updated
    assert all(data["url"].startswith("data:image/png;base64,") for _, data in previews)
    final = next(
        index
        for index, (event, data) in enumerate(events)
        if event == "element" and str(data.get("url", "")).startswith("/media/")
    )
    assert max(index for index, _ in previews) < final
    removed = [i for i, (e, d) in enumerate(events) if e == "delete_message" and d["id"] in bar_ids]
    assert removed and removed[0] < final  # the image replaces the preview
    await chat.close()

    # Stored: the image, and no bar or preview (the bar was never written).
    await wait_until(
        lambda: any("Done." in (r["output"] or "") for r in app_rows(app, "select * from steps")),
        10,
        "the reply stored",
    )
    assert not any("drawing" in (r["output"] or "") for r in app_rows(app, "select * from steps"))
    resumed = ChatSession(app.base_url, cookie)
    await resumed.connect(resume_thread=chat.thread_id)
    assert resumed.resumed is not None
    assert not any("drawing" in (s.get("output") or "") for s in resumed.resumed["steps"])
    images = [e for e in resumed.resumed["elements"] if e["type"] == "image"]
    assert len(images) == 1 and images[0]["url"].startswith("/media/")
    await resumed.close()


async def test_previews_the_result_overtakes_are_never_sent(make_app, fake_openai):
    # The provider thinks for a while (the bar shows), then its partial images and the
    # result arrive together: a preview would be replaced before anyone could see it,
    # and each is 50-100 KB down the socket (up to 2 MB from OpenAI).
    fake_openai.latency_s = 0.6  # longer than the display's throttle
    fake_openai.stream_interval_s = 0
    app = make_app()
    chat = ChatSession(app.base_url, login_cookie(app.base_url, "admin", ADMIN_PASSWORD))
    await chat.connect()
    replies = outputs(await chat.send("draw a heron at dawn"))
    assert any("Done. Generated 1 image(s)" in text for text in replies)
    assert len(fake_openai.requests_to("/v1/images/generations")) == 1
    assert fake_openai.requests_to("/v1/images/generations")[0].json["partial_images"] > 0
    elements = [data for event, data in chat.events if event == "element"]
    assert [e["url"].split("?")[0][:7] for e in elements] == ["/media/"]  # the image only
    bars = [d for e, d in chat.events if e == "new_message" and "drawing" in d.get("output", "")]
    assert bars  # the bar was shown while the provider worked
    await chat.close()
