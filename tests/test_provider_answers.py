"""Malformed or unexpected provider answers become errors naming the provider.

The fake servers answer as told (`answer_next`) over the real wire, read by the real
`openai`, `replicate` and langchain clients: a body that is not JSON, JSON of the wrong
shape, a prediction without an id or with an unknown status, outputs of the wrong type.
Each must end as the project's own error, with a message that names the provider and
what was wrong, never as a `JSONDecodeError` and "Something went wrong".
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import pytest
from chainlit.context import init_http_context
from chainlit.emitter import BaseChainlitEmitter
from langchain_core.messages import HumanMessage, SystemMessage
from PIL import Image

from chat_app.agent import prompt_rewriter, run_turn, unreadable_answer
from chat_app.settings import Settings
from core.errors import BackendFailed
from core.logging_setup import configure_logging
from memory.db import create_engine, migrate, session_factory
from memory.images import ImageStore
from memory.ledger import Ledger
from memory.media_store import MediaStore
from memory.users import UserStore
from pipelines.catalogue.pricing import PriceTable
from pipelines.images.base import ImageRequest, InputImage
from pipelines.images.openai_images import OpenAIImages
from pipelines.images.registry import BackendRegistry
from pipelines.images.replicate_images import ReplicateImages
from pipelines.training.replicate_training import (
    ReplicateLoraTrainer,
    ReplicateTrainingRequest,
)
from pipelines.video.replicate_video import ReplicateVideo
from pipelines.video.video_base import VideoRequest
from tests.app_process import ADMIN_PASSWORD, app_rows
from tests.chat_client import ChatSession, login_cookie, outputs
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.replicate_server import FakeReplicate
from tests.lora_fixtures import prepare
from tests.replicate_fixtures import fetch_policy_for, replicate_app_env
from tests.tool_helpers import ledger_entries, tool_context
from tools.generate_image import generate_image

THREAD = "3d1f6a2e-7b4c-4e8d-9a0b-1c2d3e4f5a6b"
CREATE = r"^/v1/(models/[^/]+/[^/]+/)?predictions$"
POLL = r"^/v1/predictions/\w+$"
GENERIC = "Something went wrong"


@pytest.fixture(autouse=True)
def _log_to_this_tests_stderr() -> None:
    configure_logging()  # see test_replicate_backend.py


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _png() -> InputImage:
    out = io.BytesIO()
    Image.new("RGB", (1024, 1024), (10, 120, 200)).save(out, "PNG")
    return InputImage(out.getvalue(), "image/png", 1024, 1024)


# --------------------------------------------------------------------------- OpenAI images


def openai_images(fake: FakeOpenAI) -> OpenAIImages:
    return OpenAIImages("sk-test", "gpt-image-1.5", fake.base_url, timeout_s=10, max_retries=0)


@pytest.mark.parametrize(
    ("body", "content_type", "words"),
    [
        ('{"created": 1, "data": [', "application/json", "a body that is not valid JSON"),
        (b'{"data": "\xff\xfe"}', "application/json", "a body that is not valid JSON"),
        ("<html><body>Bad gateway</body></html>", "text/html", "a body that is not JSON"),
        ([{"b64_json": "x"}], "application/json", "JSON that is not an object"),
        ({"created": 1}, "application/json", "JSON without a `data` list"),
        ({"created": 1, "data": "abc"}, "application/json", "JSON without a `data` list"),
        ({"created": 1, "data": [{}]}, "application/json", "an entry without image data"),
        ({"created": 1, "data": ["abc"]}, "application/json", "an entry without image data"),
        (
            {"created": 1, "data": [{"url": "https://example.com/a.png"}]},
            "application/json",
            "a link instead of the image data",
        ),
        (
            {"created": 1, "data": [{"b64_json": "not base64!"}]},
            "application/json",
            "image data that is not valid base64",
        ),
        (
            {"created": 1, "data": [{"b64_json": _b64(b"<html>hello</html>")}]},
            "application/json",
            "data that is not a readable image",
        ),
    ],
)
async def test_openai_images_answers_that_are_not_images(fake_openai, body, content_type, words):
    fake_openai.answer_next("/images/generations", body, content_type=content_type)
    with pytest.raises(BackendFailed) as caught:
        await openai_images(fake_openai).generate(ImageRequest("a heron"))
    message = caught.value.message
    assert message.startswith("OpenAI answered the image request with ") and words in message
    assert "Try again" in message


async def test_an_unreadable_edit_answer_is_named_too(fake_openai):
    fake_openai.answer_next("/images/edits", "Internal Server Error", content_type="text/plain")
    with pytest.raises(BackendFailed, match="OpenAI answered .* a body that is not JSON"):
        await openai_images(fake_openai).generate(ImageRequest("bluer", images=(_png(),)))


async def test_a_good_answer_after_a_bad_one_still_works(fake_openai):
    fake_openai.answer_next("/images/generations", "{", times=1)
    backend = openai_images(fake_openai)
    with pytest.raises(BackendFailed):
        await backend.generate(ImageRequest("a heron"))
    result = await backend.generate(ImageRequest("a heron"))
    assert len(result.images) == 1 and result.images[0].mime == "image/png"


# --------------------------------------------------------------------------- Replicate


def replicate_images(fake: FakeReplicate) -> ReplicateImages:
    return ReplicateImages(
        fake.api_token or "",
        base_url=fake.base_url,
        poll_interval_s=0.01,
        timeout_s=10.0,
        retry_backoff_s=0.01,
        fetch_policy=fetch_policy_for(fake, timeout_s=10.0),
    )


async def _replicate_fails(fake: FakeReplicate, request: ImageRequest | None = None) -> str:
    backend = replicate_images(fake)
    try:
        with pytest.raises(BackendFailed) as caught:
            await backend.generate(request or ImageRequest("a fox"))
    finally:
        await backend.aclose()
    assert "Replicate" in caught.value.message
    return caught.value.message


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        ({"body": '{"id": "abc", "status": "start'}, "a body that is not valid JSON"),
        ({"body": "<html>502</html>", "content_type": "text/html"}, "not valid JSON"),
        ({"body": ["id", "status"]}, "JSON that is not an object"),
        ({"drop": ["id"]}, "JSON with no `id`"),
        ({"drop": ["status"]}, "JSON with no `status`"),
        ({"change": {"status": "warming"}}, "a status Atelier does not know ('warming')"),
        ({"change": {"id": ""}}, "a prediction without an `id`"),
    ],
)
async def test_replicate_create_answers_that_cannot_be_read(fake_replicate, answer, words):
    fake_replicate.answer_next(CREATE, method="POST", **answer)
    message = await _replicate_fails(fake_replicate)
    assert message.startswith(
        "Replicate answered the request to start Replicate black-forest-labs/flux-schnell with "
    )
    assert words in message
    # It may have started a prediction that Atelier cannot follow: the user is told where.
    assert "https://replicate.com/predictions" in message and "Try again" in message
    assert len(fake_replicate.creates()) == 1  # never retried: a second could bill twice


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        ({"body": "upstream connect error", "content_type": "text/plain"}, "not valid JSON"),
        ({"change": {"status": "paused"}}, "a status Atelier does not know ('paused')"),
        ({"drop": ["status"]}, "no `status`"),
        ({"change": {"id": "someone-elses"}}, "another prediction (someone-elses)"),
        ({"change": {"metrics": "fast"}}, "an invalid `metrics`"),
    ],
)
async def test_replicate_poll_answers_that_cannot_be_read(fake_replicate, answer, words):
    fake_replicate.answer_next(POLL, method="GET", **answer)
    message = await _replicate_fails(fake_replicate)
    assert message.startswith("Replicate answered a look at prediction ") and words in message
    assert "asked Replicate to cancel it" in message
    # ... and it did: the run is not left billing.
    [prediction] = fake_replicate.predictions()
    assert prediction["status"] == "canceled"
    assert len(fake_replicate.requests_to(r"/cancel$", "POST")) == 1


@pytest.mark.parametrize(
    ("output", "words"),
    [
        ({"images": ["https://x.test/a.png"]}, "not an image link (it is an object)"),
        (42, "not an image link (it is a number)"),
        ([["https://x.test/a.png"]], "not an image link (it is a list)"),
        (["not a link at all"], "not an image link (it is text that is not a URL)"),
        ("   ", "not an image link (it is text that is not a URL)"),
    ],
)
async def test_replicate_outputs_of_an_unexpected_kind(fake_replicate, output, words):
    fake_replicate.configure(processing_polls=0)  # the first poll is the finished one
    fake_replicate.answer_next(POLL, method="GET", change={"output": output})
    message = await _replicate_fails(fake_replicate)
    assert message.startswith(
        "Replicate black-forest-labs/flux-schnell finished, but its output is "
    )
    assert words in message and "try another model" in message


async def test_replicate_video_outputs_of_an_unexpected_kind(fake_replicate):
    videos = ReplicateVideo(
        fake_replicate.api_token or "",
        base_url=fake_replicate.base_url,
        poll_interval_s=0.01,
        timeout_s=10.0,
        fetch_policy=fetch_policy_for(fake_replicate, timeout_s=10.0),
    )
    fake_replicate.configure(processing_polls=0)
    try:
        for output, words in [
            ({"video": "https://x.test/a.mp4"}, "not a video link (it is an object)"),
            ("clip.mp4", "not a video link (it is text that is not a URL)"),
            (None, "without any video"),
        ]:
            fake_replicate.answer_next(POLL, method="GET", change={"output": output})
            with pytest.raises(BackendFailed) as caught:
                await videos.generate(VideoRequest(prompt="a fox"))
            assert caught.value.message.startswith("Replicate minimax/video-01 finished")
            assert words in caught.value.message
        fake_replicate.answer_next(CREATE, method="POST", body="not json")
        with pytest.raises(BackendFailed, match="Replicate answered the request to start"):
            await videos.generate(VideoRequest(prompt="a fox"))
    finally:
        await videos.aclose()


def lora_trainer(fake: FakeReplicate, **options: Any) -> ReplicateLoraTrainer:
    return ReplicateLoraTrainer(
        fake.api_token or "",
        base_url=fake.base_url,
        poll_interval_s=0.01,
        timeout_s=10.0,
        retry_backoff_s=0.01,
        **options,
    )


@pytest.mark.parametrize(
    ("pattern", "method", "answer", "options", "words"),
    [
        (
            r"/versions/\w+/trainings$",
            "POST",
            {"body": "<html>oops</html>", "content_type": "text/html"},
            {},
            "the request to start Replicate ostris/flux-dev-lora-trainer with a body that is "
            "not valid JSON",
        ),
        (
            r"^/v1/trainings/\w+$",
            "GET",
            {"change": {"status": "queued"}},
            {},
            "a look at training ",
        ),
        (
            r"^/v1/models/ostris/flux-dev-lora-trainer$",
            "GET",
            {"body": "{"},
            {},
            "the look-up of the trainer ostris/flux-dev-lora-trainer with a body that is not "
            "valid JSON",
        ),
        (
            r"^/v1/files$",
            "POST",
            {"change": {"urls": {}}},
            {"data_uri_limit_bytes": 0},
            "the upload of the training images with a file without a download link",
        ),
    ],
)
async def test_replicate_training_answers_that_cannot_be_read(
    fake_replicate, tmp_path: Path, pattern, method, answer, options, words
):
    fake_replicate.answer_next(pattern, method=method, **answer)
    request = ReplicateTrainingRequest("me/my-style", prepare(tmp_path, "style", count=3))
    with pytest.raises(BackendFailed) as caught:
        await lora_trainer(fake_replicate, **options).train(request)
    assert caught.value.message.startswith("Replicate answered ") and words in caught.value.message


# --------------------------------------------------------------------------- nothing charged


@pytest.fixture
async def paid_world(tmp_path: Path, fake_openai: FakeOpenAI, fake_replicate: FakeReplicate):
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'atelier.db'}")
    await migrate(engine)
    account = await UserStore(session_factory(engine)).add("pat", "password-123")
    backends = {"openai": openai_images(fake_openai), "replicate": replicate_images(fake_replicate)}
    ctx = tool_context(
        thread_id=THREAD,
        user_id=account.id,
        backends=BackendRegistry(backends),
        images=ImageStore(engine, MediaStore(tmp_path / "media")),
        prices=PriceTable.load(),
        ledger=Ledger(engine),
    )
    yield ctx, engine
    await backends["replicate"].aclose()
    await engine.dispose()


async def test_a_malformed_answer_charges_nothing(paid_world, fake_openai, fake_replicate):
    ctx, engine = paid_world
    fake_openai.answer_next("/images/generations", '{"data": [{"b64_json": ')
    with pytest.raises(BackendFailed, match="^OpenAI answered"):
        await generate_image(ctx, "a lantern", backend="openai", quality="low")
    fake_replicate.answer_next(POLL, method="GET", body="not json")
    with pytest.raises(BackendFailed, match="^Replicate answered"):
        await generate_image(ctx, "a lantern", backend="replicate")
    entries = await ledger_entries(engine)
    assert [(e.status, e.actual_usd) for e in entries] == [("released", None)] * 2


# --------------------------------------------------------------------------- the chat model


def chat_settings(fake: FakeOpenAI, **more: Any) -> Settings:
    return Settings(
        openai_api_key="sk-test-not-a-real-key",
        openai_base_url=fake.base_url,
        llm_model="gpt-test",
        max_retries=0,
        **more,
    )


@pytest.mark.parametrize(
    ("body", "content_type", "words"),
    [
        ('{"id": "chatcmpl-1", "choices": [', "application/json", "is not valid JSON"),
        ("<html>Bad gateway</html>", "text/html", "is not a chat completion"),
        ({"id": "chatcmpl-1", "object": "chat.completion"}, "application/json", "not a chat"),
        ({"id": "x", "choices": [{"index": 0}]}, "application/json", "is not a chat completion"),
        ("data: {not json\n\n", "text/event-stream", "is not"),
    ],
)
@pytest.mark.parametrize("stream", [True, False])
async def test_a_chat_model_answer_that_is_not_a_completion(
    fake_openai, stream, body, content_type, words
):
    init_http_context(thread_id=THREAD).emitter = BaseChainlitEmitter(None)  # type: ignore[arg-type]
    # Streamed, a failed stream gets one plain retry; both are answered the same way.
    fake_openai.answer_next("/chat/completions", body, content_type=content_type, times=2)
    ctx = tool_context(user_id="u", thread_id=THREAD, backends=BackendRegistry({}), images=None)
    messages = [SystemMessage(content="You are a test."), HumanMessage(content="hello")]
    with pytest.raises(BackendFailed) as caught:
        await run_turn(chat_settings(fake_openai, llm_stream=stream), ctx, messages)
    message = caught.value.message
    assert message.startswith(f"The chat model server at {fake_openai.base_url} sent an answer")
    assert words in message and "Try again" in message
    assert len(fake_openai.requests_to("/chat/completions")) == (2 if stream else 1)


async def test_refine_prompts_unreadable_answer_is_named(fake_openai):
    fake_openai.answer_next("/chat/completions", "{")
    rewrite = prompt_rewriter(chat_settings(fake_openai))
    assert rewrite is not None
    with pytest.raises(BackendFailed, match="chat model server at .* not valid JSON"):
        await rewrite("Improve this prompt.", "a fox")


def test_the_chat_model_message_hides_the_servers_password():
    settings = Settings(llm_base_url="http://atelier:s3cret-pw@llm.internal:8000/v1")
    message = unreadable_answer(ValueError("odd"), settings).message
    assert "s3cret-pw" not in message and "llm.internal:8000" in message


# --------------------------------------------------------------------------- the whole app


@pytest.mark.slow
async def test_malformed_answers_in_a_chat_give_the_specific_message(
    make_app, fake_openai, fake_replicate
):
    app = make_app(**replicate_app_env(fake_replicate))
    chat = ChatSession(app.base_url, login_cookie(app.base_url, "admin", ADMIN_PASSWORD))
    await chat.connect()
    # The chat model (the agent's LLM) answers with broken JSON, streamed and plain.
    fake_openai.answer_next("/chat/completions", '{"id": "chatcmpl-1", "choices": [', times=2)
    reply = " ".join(outputs(await chat.send("hello there")))
    assert f"The chat model server at {fake_openai.base_url} sent an answer" in reply, reply
    assert GENERIC not in reply
    # OpenAI's image API answers with a page that is not JSON.
    fake_openai.answer_next("/images/generations", "<html>502</html>", content_type="text/html")
    reply = " ".join(outputs(await chat.send("/image a lighthouse --backend openai")))
    assert "OpenAI answered the image request with a body that is not JSON" in reply, reply
    assert GENERIC not in reply
    # Replicate answers a poll with broken JSON.
    fake_replicate.answer_next(POLL, method="GET", body='{"id": ')
    reply = " ".join(outputs(await chat.send("/image a lighthouse --backend replicate")))
    assert "Replicate answered a look at prediction" in reply, reply
    assert GENERIC not in reply
    await chat.close()
    assert "Traceback" not in app.log()
    ledger = [row["status"] for row in app_rows(app, "SELECT status FROM ledger_entries")]
    assert ledger and set(ledger) == {"released"}
