"""The OpenAI image backend through the real client against the fake server."""

from __future__ import annotations

import asyncio
import io
import json

import pytest
from PIL import Image as PILImage

from core.errors import (
    BackendUnavailable,
    ContentRefused,
    InvalidInput,
    ModelUnavailable,
    QuotaExhausted,
    RateLimited,
)
from memory.db import create_engine, migrate
from memory.images import ImageStore
from memory.media_store import MediaStore
from memory.png_metadata import read_embedded
from pipelines.images.base import ImageRequest, InputImage
from pipelines.images.openai_images import OpenAIImages
from pipelines.images.registry import BackendRegistry
from tests.tool_helpers import tool_context
from tools.generate_image import generate_image


def backend(fake, retries: int = 0) -> OpenAIImages:
    return OpenAIImages(
        "sk-test", "gpt-image-1.5", fake.base_url, timeout_s=10, max_retries=retries
    )


async def test_generates_requested_size_and_reports_usage(fake_openai):
    result = await backend(fake_openai).generate(ImageRequest("a heron", n=2, size="1536x1024"))
    assert [(i.width, i.height) for i in result.images] == [(1536, 1024)] * 2
    assert result.images[0].data != result.images[1].data
    assert result.usage and result.usage["output_tokens"] > 0
    assert not result.seed_honoured


@pytest.mark.parametrize(
    ("prompt", "error", "words"),
    [
        ("FAIL_MODERATION", ContentRefused, "moderation_blocked"),
        ("FAIL_QUOTA", QuotaExhausted, "run out of credit"),
        ("FAIL_RATE", RateLimited, "rate-limiting"),
    ],
)
async def test_provider_refusals_become_specific_errors(fake_openai, prompt, error, words):
    with pytest.raises(error) as caught:
        await backend(fake_openai).generate(ImageRequest(prompt))
    assert words in caught.value.message


async def test_transient_failure_is_retried_by_the_client(fake_openai):
    fake_openai.fail_next("/images/generations", status=500, headers={"retry-after-ms": "10"})
    result = await backend(fake_openai, retries=2).generate(ImageRequest("a heron"))
    assert len(result.images) == 1
    assert len(fake_openai.requests_to("/images/generations")) == 2


async def test_unreachable_server_is_reported():
    dead = OpenAIImages("sk-test", "gpt-image-1.5", "http://127.0.0.1:9/v1", 5, 0)
    with pytest.raises(BackendUnavailable) as caught:
        await dead.generate(ImageRequest("a heron"))
    assert "Could not reach OpenAI" in caught.value.message


async def test_a_server_that_does_not_answer_in_time_is_told_apart(fake_openai):
    """A refused connection and a slow answer both reach the client as connect or read
    timeouts on its aiohttp transport; only the slow one is told as a timeout."""
    fake_openai.latency_s = 2.0
    slow = OpenAIImages("sk-test", "gpt-image-1.5", fake_openai.base_url, 0.5, 0)
    with pytest.raises(BackendUnavailable) as caught:
        await slow.generate(ImageRequest("a heron"))
    assert "did not answer in time" in caught.value.message


async def test_one_backend_serves_requests_from_two_event_loops(fake_openai):
    """Its HTTP session belongs to a loop: a second loop (a test's, a worker job's) gets
    a client of its own instead of a session bound to a finished loop."""
    shared = backend(fake_openai)

    def one_image() -> int:
        return len(asyncio.run(shared.generate(ImageRequest("a heron"))).images)

    assert await asyncio.to_thread(one_image) == 1
    assert len((await shared.generate(ImageRequest("a heron"))).images) == 1
    assert await asyncio.to_thread(one_image) == 1


@pytest.mark.parametrize(
    ("request_", "words"),
    [
        (ImageRequest("x", size="999x999"), "Valid sizes: 1024x1024"),
        (ImageRequest("x", n=11), "1 to 10 images"),
        (ImageRequest("   "), "prompt is empty"),
        (ImageRequest("x" * 40000), "at most 32,000"),
        (ImageRequest("x", steps=4), "does not take a step count"),
        (ImageRequest("x", background="transparent", output_format="jpeg"), "png or webp"),
        (ImageRequest("x", model="gpt-image-2", size="1000x1000"), "multiples of 16"),
        (ImageRequest("x", quality="ultra"), "Valid: auto, low, medium, high"),
    ],
)
async def test_requests_it_cannot_honour_are_refused_before_sending(fake_openai, request_, words):
    with pytest.raises(InvalidInput) as caught:
        await backend(fake_openai).generate(request_)
    assert words in caught.value.message
    assert fake_openai.requests_to("/images/generations") == []


async def test_tool_records_lineage_and_embeds_parameters(fake_openai, tmp_path):
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    await migrate(engine)
    from memory.db import session_factory
    from memory.users import UserStore

    account = await UserStore(session_factory(engine)).add("eve", "password-123")
    images = ImageStore(engine, MediaStore(tmp_path / "media"))
    ctx = tool_context(
        thread_id="8a0f6f6e-98f4-4b3c-9d55-2e0f0c7c1a11",
        user_id=account.id,
        backends=BackendRegistry({"openai": backend(fake_openai)}),
        images=images,
    )
    text, artifact = await generate_image(ctx, "a blue kite", seed=42)
    record, stored = artifact.images[0]
    assert record.id in text and "seed 42 was recorded but not used" in text
    chunks = read_embedded(stored)
    assert chunks["parameters"].startswith("a blue kite\n")
    assert "Seed: none" in chunks["parameters"] and "Size: 1024x1024" in chunks["parameters"]
    assert json.loads(chunks["atelier"])["image_id"] == record.id
    again = await images.get(record.id, account.id)
    assert again.prompt_sent == "a blue kite" and again.parameters["seed_requested"] == 42
    with pytest.raises(Exception, match="No image"):
        await images.get(record.id, "00000000-0000-4000-8000-000000000000")
    await engine.dispose()


def _png(width: int, height: int, colour=(200, 30, 30, 255)) -> InputImage:
    buffer = io.BytesIO()
    PILImage.new("RGBA", (width, height), colour).save(buffer, "PNG")
    return InputImage(buffer.getvalue(), "image/png", width, height)


async def test_edit_sends_one_image_as_multipart_image_part(fake_openai):
    source = _png(1024, 1024)
    result = await backend(fake_openai).generate(
        ImageRequest("make it bluer", images=(source,), size="1024x1024")
    )
    sent = fake_openai.requests_to("/images/edits")
    assert len(sent) == 1 and fake_openai.requests_to("/images/generations") == []
    form = sent[0].form
    assert [part["content_type"] for part in form["image"]] == ["image/png"]
    assert form["image"][0]["data"] == source.data
    assert "image[]" not in form and "mask" not in form
    assert form["prompt"] == ["make it bluer"] and form["model"] == ["gpt-image-1.5"]
    assert result.parameters["input_images"] == 1 and len(result.images) == 1


async def test_edit_with_several_images_and_a_mask(fake_openai):
    first, second = _png(1024, 1024), _png(1024, 1024, (0, 0, 255, 255))
    mask = _png(1024, 1024, (0, 0, 0, 0))
    await backend(fake_openai).generate(
        ImageRequest("put them together", images=(first, second), mask=mask)
    )
    form = fake_openai.requests_to("/images/edits")[0].form
    assert [part["data"] for part in form["image[]"]] == [first.data, second.data]
    assert form["mask"][0]["data"] == mask.data and form["mask"][0]["content_type"] == "image/png"


async def test_mask_of_another_size_is_refused_before_sending(fake_openai):
    with pytest.raises(InvalidInput, match="mask is 512x512 but the image is 1024x1024"):
        await backend(fake_openai).generate(
            ImageRequest("x", images=(_png(1024, 1024),), mask=_png(512, 512))
        )
    assert fake_openai.requests_to("/images/edits") == []


async def test_transparent_background_and_output_formats(fake_openai):
    result = await backend(fake_openai).generate(
        ImageRequest("a sticker", background="transparent", output_format="webp")
    )
    body = fake_openai.requests_to("/images/generations")[0].json
    assert body["background"] == "transparent" and body["output_format"] == "webp"
    assert result.images[0].mime == "image/webp"
    with PILImage.open(io.BytesIO(result.images[0].data)) as image:
        assert image.mode == "RGBA" and image.getextrema()[3][0] == 0


async def test_gpt_image_2_takes_any_multiple_of_16_within_its_bounds(fake_openai):
    result = await backend(fake_openai).generate(
        ImageRequest("a banner", model="gpt-image-2", size="2048x688")
    )
    assert (result.images[0].width, result.images[0].height) == (2048, 688)
    assert result.model == "gpt-image-2"
    assert fake_openai.requests_to("/images/generations")[0].json["model"] == "gpt-image-2"


@pytest.mark.parametrize(
    ("request_", "words"),
    [
        (ImageRequest("x", model="gpt-image-2", size="2048x512"), "at most 3:1"),
        (ImageRequest("x", model="gpt-image-2", size="512x512"), "655,360 to 8,294,400 pixels"),
        (ImageRequest("x", model="gpt-image-2", size="4096x2048"), "from 480 to 3840"),
        (
            ImageRequest("x", model="gpt-image-2", background="transparent"),
            "Valid: auto, opaque",
        ),
    ],
)
async def test_gpt_image_2_refuses_what_it_cannot_make_before_sending(fake_openai, request_, words):
    with pytest.raises(InvalidInput) as caught:
        await backend(fake_openai).generate(request_)
    assert words in caught.value.message
    assert fake_openai.requests_to("/images/generations") == []


async def test_a_model_the_provider_no_longer_has_is_reported_as_unavailable(fake_openai):
    fake_openai.gone_models = {"gpt-image-1.5"}
    with pytest.raises(ModelUnavailable) as caught:
        await backend(fake_openai).generate(ImageRequest("x", model="gpt-image-1.5"))
    assert caught.value.model == "gpt-image-1.5" and "model_not_found" not in caught.value.message
    assert "does not offer the image model gpt-image-1.5" in caught.value.message
