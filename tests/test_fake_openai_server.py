"""The fake OpenAI server must speak the real protocol: drive it with the REAL clients.

If these pass, tests that point the app at the fake exercise the same multipart fields,
SSE fragments, error classes and retries as production.
"""

from __future__ import annotations

import base64
import io
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI
from PIL import Image

from tests.fakes.openai_server import (
    MALFORMED_ARGUMENTS,
    FakeOpenAI,
    Reply,
    ToolCall,
    default_brain,
)

REPO_ROOT = Path(__file__).resolve().parent.parent

GENERATE_IMAGE_TOOL = {
    "type": "function",
    "function": {
        "name": "generate_image",
        "description": "Generate an image from a text prompt.",
        "parameters": {
            "type": "object",
            "properties": {
                "prompt": {"type": "string"},
                "size": {"type": "string", "enum": ["1024x1024", "1536x1024", "1024x1536"]},
            },
            "required": ["prompt"],
        },
    },
}


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeOpenAI) -> Iterator[FakeOpenAI]:
    server.reset()
    yield server
    server.reset()


@pytest.fixture
def client(fake: FakeOpenAI) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.base_url, api_key="test", max_retries=0)


def png_bytes(size: tuple[int, int], colour: tuple[int, int, int] = (10, 200, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def decode(b64: str | None) -> Image.Image:
    assert b64 is not None
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def chat(fake: FakeOpenAI, *, streaming: bool) -> ChatOpenAI:
    return ChatOpenAI(
        model="gpt-test",
        base_url=fake.base_url,
        api_key="test",
        use_responses_api=False,
        streaming=streaming,
        max_retries=0,
    )


# --------------------------------------------------------------------------- basics


def test_models_and_auth(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert "gpt-image-1.5" in ids

    response = httpx.get(f"{fake.base_url}/models")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}

    recorded = fake.requests_to("/models")
    assert [r.has_auth for r in recorded] == [True, False]
    assert all("authorization" not in r.headers for r in recorded)


def test_unknown_path_is_openai_shaped_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model="gpt-test", input="hi")
    assert "Invalid URL" in info.value.message


# --------------------------------------------------------------------------- images


def test_generate_returns_pngs_of_requested_size_and_usage(
    fake: FakeOpenAI, client: openai.OpenAI
) -> None:
    result = client.images.generate(
        model="gpt-image-1.5", prompt="a red fox", size="1536x1024", n=2, quality="low"
    )
    assert result.data is not None and len(result.data) == 2
    images = [decode(d.b64_json) for d in result.data]
    assert all(img.format == "PNG" and img.size == (1536, 1024) for img in images)
    assert images[0].tobytes() != images[1].tobytes()
    assert len(images[0].getcolors(1 << 16) or []) > 1  # not a uniform fill
    assert result.usage is not None and result.usage.output_tokens == 800
    assert result.usage.total_tokens == result.usage.input_tokens + 800
    assert result.size == "1536x1024" and result.output_format == "png"

    sent = fake.last_request("/images/generations")
    assert sent.json is not None and sent.json["prompt"] == "a red fox"


def test_generate_auto_size_and_validation(client: openai.OpenAI) -> None:
    result = client.images.generate(model="gpt-image-1.5", prompt="x", size="auto")
    assert result.data is not None
    assert decode(result.data[0].b64_json).size == (1024, 1024)

    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(model="gpt-image-1.5", prompt="x", size="999x999")
    assert info.value.param == "size"
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(model="gpt-image-1.5", prompt="")
    assert info.value.param == "prompt"
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(model="gpt-image-1.5", prompt="x", n=11)
    assert info.value.param == "n"


def test_edit_single_image_inverts_and_records_part(
    fake: FakeOpenAI, client: openai.OpenAI
) -> None:
    source = png_bytes((300, 200))
    result = client.images.edit(
        model="gpt-image-1.5", image=("in.png", source, "image/png"), prompt="invert it"
    )
    assert result.data is not None
    edited = decode(result.data[0].b64_json)
    assert edited.size == (300, 200)
    assert edited.convert("RGB").getpixel((5, 5)) == (245, 55, 225)

    form = fake.last_request("/images/edits").form
    assert form["prompt"] == ["invert it"]
    (part,) = form["image"]
    assert part["filename"] == "in.png" and part["content_type"] == "image/png"
    assert part["data"] == source and part["size"] == len(source)


def test_edit_list_of_images_sends_image_brackets(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    first, second = png_bytes((64, 64)), png_bytes((32, 32), (1, 2, 3))
    result = client.images.edit(
        model="gpt-image-1.5",
        image=[("a.png", first, "image/png"), ("b.png", second, "image/png")],
        prompt="combine",
        n=2,
    )
    assert result.data is not None and len(result.data) == 2
    assert result.usage is not None and result.usage.input_tokens_details.image_tokens > 0

    form = fake.last_request("/images/edits").form
    assert "image" not in form
    assert [p["filename"] for p in form["image[]"]] == ["a.png", "b.png"]
    assert form["image[]"][1]["data"] == second


def test_edit_rejects_wrong_mask_bad_image_and_octet_stream(client: openai.OpenAI) -> None:
    image = ("in.png", png_bytes((64, 64)), "image/png")
    with pytest.raises(openai.BadRequestError) as info:
        client.images.edit(
            image=image, mask=("m.png", png_bytes((32, 32)), "image/png"), prompt="x"
        )
    assert info.value.param == "mask"

    with pytest.raises(openai.BadRequestError) as info:
        client.images.edit(image=("in.png", b"not an image", "image/png"), prompt="x")
    assert info.value.param == "image"

    # Raw bytes go out as application/octet-stream, which the real API refuses too.
    with pytest.raises(openai.BadRequestError) as info:
        client.images.edit(image=png_bytes((64, 64)), prompt="x")
    assert info.value.code == "unsupported_file_mimetype"


@pytest.mark.parametrize(
    ("keyword", "error", "code"),
    [
        ("FAIL_MODERATION", openai.BadRequestError, "moderation_blocked"),
        ("FAIL_QUOTA", openai.RateLimitError, "insufficient_quota"),
        ("FAIL_RATE", openai.RateLimitError, "rate_limit_exceeded"),
        ("FAIL_SERVER", openai.InternalServerError, "server_error"),
    ],
)
def test_prompt_keywords_map_to_client_errors(
    client: openai.OpenAI, keyword: str, error: type[openai.APIStatusError], code: str
) -> None:
    with pytest.raises(error) as info:
        client.images.generate(model="gpt-image-1.5", prompt=f"a cat {keyword}")
    assert info.value.code == code
    if keyword == "FAIL_RATE":
        assert info.value.response.headers["retry-after"] == "0"
    if keyword == "FAIL_MODERATION":
        assert info.value.type == "image_generation_user_error"


def test_fail_next_is_retried_by_the_client(fake: FakeOpenAI) -> None:
    fake.fail_next(
        "/images/generations",
        503,
        "server_error",
        "busy",
        headers={"retry-after-ms": "10"},
        times=2,
    )
    retrying = openai.OpenAI(base_url=fake.base_url, api_key="test", max_retries=2)
    result = retrying.images.generate(model="gpt-image-1.5", prompt="x")
    assert result.data is not None
    assert len(fake.requests_to("/images/generations")) == 3


def test_latency_applies(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.latency_s = 0.2
    started = time.perf_counter()
    client.models.list()
    assert time.perf_counter() - started >= 0.2


# --------------------------------------------------------------------------- chat


@pytest.mark.parametrize("streaming", [False, True])
def test_chat_tool_call_through_langchain(fake: FakeOpenAI, streaming: bool) -> None:
    model = chat(fake, streaming=streaming).bind_tools([GENERATE_IMAGE_TOOL])
    message = model.invoke("Please draw a bigger lighthouse")
    assert isinstance(message, AIMessage)
    (call,) = message.tool_calls
    assert call["name"] == "generate_image"
    assert call["args"] == {"prompt": "Please draw a bigger lighthouse", "size": "1536x1024"}
    assert call["id"] and call["id"].startswith("call_")

    sent = fake.last_request("/chat/completions").json
    assert sent is not None and bool(sent.get("stream")) is streaming
    assert sent["tools"][0]["function"]["name"] == "generate_image"


@pytest.mark.parametrize("streaming", [False, True])
def test_chat_malformed_arguments_become_invalid_tool_calls(
    fake: FakeOpenAI, streaming: bool
) -> None:
    model = chat(fake, streaming=streaming).bind_tools([GENERATE_IMAGE_TOOL])
    message = model.invoke("send malformed arguments please")
    assert message.tool_calls == []
    (bad,) = message.invalid_tool_calls
    assert bad["name"] == "generate_image" and bad["args"] == MALFORMED_ARGUMENTS


def test_chat_text_and_tool_result_round_trip(fake: FakeOpenAI) -> None:
    model = ChatOpenAI(
        model="gpt-test",
        base_url=fake.base_url,
        api_key="test",
        use_responses_api=False,
        streaming=True,
        stream_usage=True,
    ).bind_tools([GENERATE_IMAGE_TOOL])
    hello = model.invoke("hello there")
    assert hello.content == "You said: hello there"
    assert hello.usage_metadata is not None and hello.usage_metadata["total_tokens"] > 0

    call = {"name": "generate_image", "args": {"prompt": "x"}, "id": "call_1"}
    history = [
        HumanMessage("draw x"),
        AIMessage(content="", tool_calls=[call]),
        ToolMessage("Image saved: x.png\nmore detail", tool_call_id="call_1"),
    ]
    assert model.invoke(history).content == "Done. Image saved: x.png"
    sent = fake.last_request("/chat/completions").json
    assert sent is not None and sent["messages"][-1]["role"] == "tool"


def test_raw_stream_fragments_like_openai(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.brain = lambda messages, tools: Reply(
        content="one two three", tool_calls=[ToolCall("foo", '{"a": 1, "b": 2}')]
    )
    stream = client.chat.completions.create(
        model="gpt-test",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    texts = [d.content for d in deltas if d.content]
    assert len(texts) >= 3 and "".join(texts) == "one two three"
    fragments = [tc for d in deltas for tc in d.tool_calls or []]
    assert len(fragments) >= 3
    assert fragments[0].id and fragments[0].function and fragments[0].function.name == "foo"
    assert all(f.id is None and f.index == 0 for f in fragments[1:])
    args = "".join(f.function.arguments or "" for f in fragments if f.function)
    assert args == '{"a": 1, "b": 2}'
    finals = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finals[-1] == "tool_calls"
    assert chunks[-1].usage is not None and chunks[-1].choices == []


def test_non_stream_usage_and_custom_brain(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.brain = lambda messages, tools: "scripted"
    completion = client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.content == "scripted"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens > 0


def test_default_brain_rules() -> None:
    tools = [GENERATE_IMAGE_TOOL]
    parts = [{"type": "text", "text": "paint a "}, {"type": "text", "text": "cat"}]
    reply = default_brain([{"role": "user", "content": parts}], tools)
    assert reply.tool_calls[0].name == "generate_image"
    assert default_brain([{"role": "user", "content": "hi"}], tools).content == "You said: hi"
    # Without tools on offer the real API never calls one.
    assert default_brain([{"role": "user", "content": "draw"}], []).content == "You said: draw"


# --------------------------------------------------------------------------- process mode


def test_runs_as_a_process() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.openai_server", "--port", "0"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("READY http://127.0.0.1:")
        base_url = line.split(" ", 1)[1]
        result = openai.OpenAI(base_url=base_url, api_key="t", max_retries=0).images.generate(
            model="gpt-image-1.5", prompt="hello"
        )
        assert result.data is not None
        recorded = httpx.get(base_url.removesuffix("/v1") + "/_fake/requests").json()
        assert recorded[-1]["path"] == "/v1/images/generations"
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
