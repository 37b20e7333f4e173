"""A fake OpenAI HTTP server on 127.0.0.1 for offline tests.

Why: mocking the ``openai`` client hides protocol mistakes (multipart field names, SSE
tool-call fragments, error shapes, retries). This server speaks OpenAI's wire format (the
API reference at platform.openai.com/docs/api-reference, as the ``openai`` package sends
and parses it) so the REAL ``openai`` client and langchain-openai's
``ChatOpenAI`` can be pointed at it with ``base_url=fake.base_url``.

In-process::

    with FakeOpenAI() as fake:
        client = openai.OpenAI(base_url=fake.base_url, api_key="test")

As a process (for browser tests that run the app in a subprocess)::

    python -m tests.fakes.openai_server --port 8765   # prints "READY <base_url>"

A subprocess fake can be steered over HTTP: ``POST /_fake/fail_next`` (JSON with the
arguments of :meth:`FakeOpenAI.fail_next`), ``POST /_fake/answer_next`` (those of
:meth:`FakeOpenAI.answer_next`), ``POST /_fake/reset``, ``GET /_fake/requests``.

Image requests with ``stream: true`` are answered with server-sent events as the
``openai`` package 3.57 reads them (types ``ImageGenPartialImageEvent`` /
``ImageGenCompletedEvent`` and their ``image_edit.*`` twins; OpenAI's API reference,
"Image Streaming", read 2026-11-30): ``partial_images`` (0-3) events
``image_generation.partial_image`` with ``partial_image_index`` from 0, each a blurrier
version of the image, then ``image_generation.completed`` with the image and its usage,
``stream_interval_s`` apart. A prompt holding FAIL_STREAM gets one partial image and then
an ``error`` event (``{"error": {...}}``, which the client raises as ``APIError``; OpenAI
documents no error event for image streams, so this is the client's general shape).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import hashlib
import inspect
import io
import json
import math
import re
import sys
import threading
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageDraw, ImageFilter, ImageOps
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.threaded_server import ThreadedServer

__all__ = [
    "Brain",
    "MALFORMED_ARGUMENTS",
    "FakeOpenAI",
    "RecordedRequest",
    "Reply",
    "ToolCall",
    "default_brain",
    "make_image",
]

# --------------------------------------------------------------------------- data types


def _new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


@dataclass
class ToolCall:
    """One tool call the fake model makes.

    ``arguments`` is the raw JSON string sent on the wire; it may be malformed on purpose
    to exercise the client's ``invalid_tool_calls`` path. A dict is accepted and dumped.
    """

    name: str
    arguments: str = "{}"
    id: str = field(default_factory=_new_call_id)

    def __post_init__(self) -> None:
        if isinstance(self.arguments, dict):
            self.arguments = json.dumps(self.arguments)


@dataclass
class Reply:
    """What the fake model answers: text, tool calls, or both."""

    content: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)


#: ``(messages, tools) -> Reply`` (a plain ``str`` or an awaitable is accepted too).
Brain = Callable[[list[dict[str, Any]], list[dict[str, Any]]], "Reply | str | Awaitable[Reply]"]


@dataclass(frozen=True)
class RecordedRequest:
    """A request as the fake saw it, so tests can assert on what the client really sent.

    ``headers`` are lower-cased and never contain ``authorization``. ``json`` is the JSON
    object body (None otherwise). ``form`` maps each multipart/urlencoded field name exactly
    as sent (e.g. ``"image[]"``) to its values in order; file parts are dicts with
    ``filename``, ``content_type``, ``size`` and ``data`` (bytes).
    """

    path: str
    method: str
    headers: dict[str, str]
    json: dict[str, Any] | None
    form: dict[str, list[Any]]
    query: dict[str, str] = field(default_factory=dict)
    has_auth: bool = False


@dataclass
class _Failure:
    path_suffix: str
    status: int
    code: str | None
    message: str
    type: str
    param: str | None
    headers: dict[str, str]
    remaining: int


@dataclass
class _RawAnswer:
    path_suffix: str
    status: int
    body: bytes
    content_type: str
    remaining: int


# --------------------------------------------------------------------------- the brain

_IMAGE_WORDS = ("draw", "image", "picture", "paint", "generate", "bigger", "photo")
#: Invalid JSON for the "malformed" rule. Not '{"prompt": "broken' (truncated): langchain
#: repairs truncated JSON when it merges streamed fragments, so that would only be invalid
#: without streaming. A missing colon is invalid on both paths.
MALFORMED_ARGUMENTS = '{"prompt" "broken"}'


def _text_of(content: Any) -> str:
    """Text of a message content that is a string or a list of content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type") in ("text", "input_text"):
                texts.append(str(part.get("text", "")))
        return "\n".join(texts)
    return str(content)


_ORDINALS = {"first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "last": -1}
_COUNTS = {"two": 2, "three": 3, "four": 4}
_STYLES = ("crayon", "watercolour", "watercolor", "product", "line-art")
_LISTED_IMAGE = re.compile(r"^\d+\. id=([0-9a-f-]{36})", re.MULTILINE)


def _image_ids(messages: list[dict[str, Any]]) -> list[str]:
    """Image ids from the app's system prompt, oldest first."""
    for message in messages:
        if message.get("role") == "system":
            return _LISTED_IMAGE.findall(_text_of(message.get("content")))
    return []


_CANDIDATE = re.compile(r"^\d+\. id=([0-9a-f-]{36}) .*candidate_rank=(\d+)", re.MULTILINE)


def _curation_call(lowered: str, text: str, messages: list[dict[str, Any]]) -> ToolCall | None:
    """Curation: "best of N …" / "curate …", "keep the third one instead", "check it"."""
    if "best of" in lowered or re.search(r"\bcurate\b", lowered):
        digits = re.search(r"\bbest of (\d+)\b", lowered) or re.search(r"\b(\d+)\b", lowered)
        args: dict[str, Any] = {"prompt": text, "n": int(digits.group(1)) if digits else 4}
        style = next((s for s in _STYLES if s in lowered), None)
        if style:
            args["style"] = style
        return ToolCall("curate_images", json.dumps(args))
    if lowered.startswith("keep the") or "instead" in lowered:
        system = next((m for m in messages if m.get("role") == "system"), None)
        candidates = _CANDIDATE.findall(_text_of(system.get("content")) if system else "")
        ordinal = next((v for k, v in _ORDINALS.items() if k in lowered.split()), 1)
        # The newest curation's candidates are the last ones listed.
        latest: dict[int, str] = {}
        for image_id, rank in candidates:
            latest[int(rank)] = image_id
        if ordinal in latest:
            return ToolCall("keep_image", json.dumps({"image_id": latest[ordinal]}))
    if "check" in lowered and "quality" in lowered or lowered.startswith("check it"):
        return ToolCall("check_quality", json.dumps({}))
    return None


def _iteration_call(lowered: str, text: str, ids: list[str]) -> ToolCall | None:
    """The refinement loop: variations, fork, refine, edit — in that order of precedence."""
    if "variation" in lowered and ids:
        n = next((v for k, v in _COUNTS.items() if k in lowered.split()), 2)
        digits = re.search(r"\b(\d)\b", lowered)
        n = int(digits.group(1)) if digits else n
        return ToolCall("variations", json.dumps({"image_id": ids[-1], "n": n}))
    if ("go back" in lowered or "fork" in lowered) and ids:
        ordinal = next((v for k, v in _ORDINALS.items() if k in lowered.split()), -1)
        index = ordinal - 1 if ordinal > 0 else ordinal
        args: dict[str, Any] = {"image_id": ids[index if -len(ids) <= index < len(ids) else -1]}
        if "wider" in lowered:
            args["size"] = "1536x1024"
        if "taller" in lowered:
            args["size"] = "1024x1536"
        return ToolCall("fork_image", json.dumps(args))
    style = next((s for s in _STYLES if s in lowered), None)
    if "refine" in lowered or style:
        prompt = re.sub(r"(?i)\b(refine|in|style|crayon|watercolou?r|product|line-art)\b", "", text)
        args = {"prompt": " ".join(prompt.split()) or text}
        if style:
            args["style"] = style
        return ToolCall("refine_prompt", json.dumps(args))
    if ids and any(w in lowered for w in ("make it", "edit", "bluer", "add a", "remove")):
        return ToolCall("edit_image", json.dumps({"instruction": text}))
    return None


def _cost_call(lowered: str) -> ToolCall | None:
    """ "what would 20 high-quality images cost?" -> estimate_cost(n=20, quality=high)."""
    if "cost" not in lowered or not any(w in lowered for w in ("what would", "how much")):
        return None
    args: dict[str, Any] = {}
    digits = re.search(r"\b(\d{1,4})\b", lowered)
    if digits:
        args["n"] = int(digits.group(1))
    quality = next(
        (q for q in _QUALITIES if f"{q}-quality" in lowered or f"{q} quality" in lowered), None
    )
    if quality:
        args["quality"] = quality
    return ToolCall("estimate_cost", json.dumps(args))


def _video_call(lowered: str, text: str) -> ToolCall | None:
    """ "animate …" -> generate_video of the latest image; "a video/clip of …" -> from text."""
    animate = re.search(r"\banimate\b", lowered)
    if not animate and not re.search(r"\b(video|clip) of\b", lowered):
        return None
    args: dict[str, Any] = {"prompt": text}
    if animate:
        args["image_id"] = "latest"
    seconds = re.search(r"\b(\d+(?:\.\d+)?) ?s(?:ec(?:ond)?s?)?\b", lowered)
    if seconds:
        args["seconds"] = float(seconds.group(1))
    return ToolCall("generate_video", json.dumps(args))


def _lora_call(lowered: str, text: str) -> ToolCall | None:
    """ "learn this style as NAME" / "train a lora called NAME [with trigger TOK]" -> train_lora."""
    if not re.search(r"\blearn this (style|subject)\b|\btrain a lora\b", lowered):
        return None
    named = re.search(r"\b(?:as|called|named)\s+([A-Za-z0-9_-]+)", text)
    args: dict[str, Any] = {"name": named.group(1) if named else "my-style"}
    trigger = re.search(r"\btrigger(?: word)?\s+([A-Za-z0-9_-]+)", text)
    args["trigger_word"] = trigger.group(1) if trigger else "TOK"
    return ToolCall("train_lora", json.dumps(args))


def default_brain(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> Reply:
    """Rule-based model, deterministic so tests and browser runs can script a chat.

    - last message is a tool result -> "Done. " + its first line (result visible in chat);
    - a tool-less call (prompt rewriting) -> "Refined: " + the user text; a title request
      -> the first six words of the user text, title-cased;
    - last user text contains "malformed" -> generate_image with invalid JSON arguments;
    - "bigger" -> generate_image with size 1536x1024;
    - "variation(s)" -> variations of the newest listed image (n from "two/three/four/N");
    - "go back to the first|second…" / "fork" -> fork_image of that image ("wider" →
      1536x1024);
    - "refine" or a style name -> refine_prompt (with that style);
    - "make it|edit|bluer|add a|remove" with images listed -> edit_image;
    - "animate …" -> generate_video of the latest image (prompt = the text, seconds from
      "N seconds"); "a video of …" / "clip of …" -> generate_video from the text;
    - "what would … cost" / "how much … cost" -> estimate_cost (n from digits, quality
      from "high-quality");
    - "learn this style/subject as NAME" / "train a lora called NAME" -> train_lora
      (name, trigger_word from "trigger TOK", else "TOK");
    - "best of N" / "curate" -> curate_images (n, and a style if named); "keep the
      second … instead" -> keep_image of that candidate rank; "check … quality" ->
      check_quality;
    - contains draw/image/picture/paint/generate/photo -> generate_image ``{"prompt": text}``;
    - otherwise -> "You said: <text[:200]>".

    Tool calls are only made when the request offered tools: the real API never answers
    with a tool call otherwise (e.g. a tool-less "make a title" call stays text).
    """
    if messages and messages[-1].get("role") == "tool":
        lines = _text_of(messages[-1].get("content")).splitlines()
        return Reply(content="Done. " + (lines[0] if lines else ""))
    text = ""
    for message in reversed(messages):
        if message.get("role") == "user":
            text = _text_of(message.get("content"))
            break
    lowered = text.lower()
    if not tools:
        system = next((m for m in messages if m.get("role") == "system"), None)
        if system and "Rewrite the user's image prompt" in _text_of(system.get("content")):
            return Reply(content=f"Refined: {text}, finely detailed, soft light")
        if system and "Write a short title" in _text_of(system.get("content")):
            return Reply(content=" ".join(text.split()[:6]).title())
        return Reply(content="You said: " + text[:200])
    if "malformed" in lowered:
        return Reply(tool_calls=[ToolCall("generate_image", MALFORMED_ARGUMENTS)])
    if "bigger" in lowered:
        args = {"prompt": text, "size": "1536x1024"}
        return Reply(tool_calls=[ToolCall("generate_image", json.dumps(args))])
    call = (
        _lora_call(lowered, text)
        or _video_call(lowered, text)
        or _cost_call(lowered)
        or _curation_call(lowered, text, messages)
        or _iteration_call(lowered, text, _image_ids(messages))
    )
    if call is not None:
        return Reply(tool_calls=[call])
    if any(word in lowered for word in _IMAGE_WORDS):
        return Reply(tool_calls=[ToolCall("generate_image", json.dumps({"prompt": text}))])
    return Reply(content="You said: " + text[:200])


# --------------------------------------------------------------------------- images

_SIZES = {"1024x1024": (1024, 1024), "1536x1024": (1536, 1024), "1024x1536": (1024, 1536)}
_QUALITIES = ("low", "medium", "high", "auto")
_FORMATS = ("png", "jpeg", "webp")
_BACKGROUNDS = ("transparent", "opaque", "auto")
_IMAGE_MIMETYPES = ("image/png", "image/jpeg", "image/webp")
# Output tokens per image for the gpt-image-1 family, by size and quality (OpenAI's image
# generation guide, "Cost and latency"; also quoted on the OpenAI community forum).
_OUTPUT_TOKENS = {
    (1024, 1024): {"low": 272, "medium": 1056, "high": 4160},
    (1024, 1536): {"low": 408, "medium": 1584, "high": 6240},
    (1536, 1024): {"low": 400, "medium": 1568, "high": 6208},
}
_IMAGE_INPUT_TOKENS = 388  # per input image on edits; an arbitrary but stable figure
_MAX_IMAGE_BYTES = 50 * 1024 * 1024
_MAX_PROMPT = 32000


def make_image(
    prompt: str, index: int, width: int, height: int, *, transparent: bool = False
) -> Image.Image:
    """A cheap, deterministic, non-uniform picture: colours from sha256(prompt + index).

    A prompt containing DISC_TEST gives curation tests known answers instead: image
    index % 4 is an off-centre disc, a centred disc (the only one passing every check),
    two discs, or a centred disc on a grey background.
    """
    if DISC_TEST in prompt and not transparent:
        return _disc_test_image(index % 4, width, height)
    digest = hashlib.sha256(f"{prompt}{index}".encode()).digest()
    bg = (digest[0], digest[1], digest[2])
    fg = tuple((c + 128) % 256 for c in bg)
    stripe = (digest[3], digest[4], digest[5])
    if transparent:
        image = Image.new("RGBA", (width, height), (*bg, 0))
        fg, stripe = (*fg, 255), (*stripe, 255)
    else:
        image = Image.new("RGB", (width, height), bg)
    draw = ImageDraw.Draw(image)
    radius = int(min(width, height) * (0.15 + digest[6] / 1020))
    cx = int(width * (0.3 + digest[7] / 637))
    cy = int(height * (0.3 + digest[8] / 637))
    draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fg)
    draw.rectangle((0, height - max(1, height // 8), width, height), fill=stripe)
    return image


DISC_TEST = "DISC_TEST"


def _disc_test_image(variant: int, width: int, height: int) -> Image.Image:
    background = (128, 128, 128) if variant == 3 else (255, 255, 255)
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    radius = min(width, height) // 6
    centres = {
        0: [(width * 0.25, height * 0.3)],
        1: [(width / 2, height / 2)],
        2: [(width * 0.3, height / 2), (width * 0.7, height / 2)],
        3: [(width / 2, height / 2)],
    }[variant]
    for cx, cy in centres:
        r = radius * (0.7 if variant == 2 else 1)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(30, 30, 40))
    return image


@functools.lru_cache(maxsize=64)
def _generated(
    prompt: str,
    index: int,
    width: int,
    height: int,
    transparent: bool,
    output_format: str,
    compression: int | None,
) -> bytes:
    """`make_image`, encoded; the same bytes for the same request, drawn once.

    Drawing and encoding a 1024x1024 picture, and blurring it for each partial image,
    cost the fake ~140 ms of CPU per request: on a two-core machine a benchmark's "zero-
    latency" provider was then the slowest thing in the run, and its image turns took
    seconds of queueing instead of milliseconds.
    """
    image = make_image(prompt, index, width, height, transparent=transparent)
    return _encode(image, output_format, compression)


def _encode(image: Image.Image, output_format: str, compression: int | None) -> bytes:
    buf = io.BytesIO()
    if output_format == "jpeg":
        image.convert("RGB").save(buf, "JPEG", quality=compression or 90)
    elif output_format == "webp":
        image.save(buf, "WEBP", quality=compression or 80, method=0)
    else:
        image.save(buf, "PNG")
    return buf.getvalue()


def _invert(image: Image.Image) -> Image.Image:
    has_alpha = image.mode in ("RGBA", "LA") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        r, g, b, a = rgba.split()
        rgb = ImageOps.invert(Image.merge("RGB", (r, g, b)))
        return Image.merge("RGBA", (*rgb.split(), a))
    return ImageOps.invert(image.convert("RGB"))


def _output_tokens(width: int, height: int, quality: str) -> int:
    table = _OUTPUT_TOKENS.get((width, height))
    if table:
        return table[quality]
    return max(1, round(_OUTPUT_TOKENS[(1024, 1024)][quality] * width * height / 1024**2))


def _text_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


# --------------------------------------------------------------------------- errors


class _ApiError(Exception):
    """Raised inside handlers; turned into OpenAI's error JSON."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers or {}


def _bad(message: str, param: str | None, code: str | None = "invalid_value") -> _ApiError:
    return _ApiError(400, message, param=param, code=code)


def _default_type(status: int, code: str | None) -> str:
    if status == 429:
        return "insufficient_quota" if code == "insufficient_quota" else "requests"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def _error_response(error: _ApiError) -> JSONResponse:
    body = {
        "error": {
            "message": error.message,
            "type": error.type,
            "param": error.param,
            "code": error.code,
        }
    }
    return JSONResponse(body, status_code=error.status, headers=error.headers)


def _keyword_error(prompt: str, model: str) -> _ApiError | None:
    """Errors triggered by magic words in an image prompt (works across processes)."""
    if "FAIL_MODERATION" in prompt:
        return _ApiError(
            400,
            "Your request was rejected as a result of our safety system. Your request may "
            "contain content that is not allowed by our safety system.",
            type="image_generation_user_error",
            code="moderation_blocked",
        )
    if "FAIL_QUOTA" in prompt:
        return _ApiError(
            429,
            "You exceeded your current quota, please check your plan and billing details.",
            type="insufficient_quota",
            code="insufficient_quota",
        )
    if "FAIL_RATE" in prompt:
        return _ApiError(
            429,
            f"Rate limit reached for {model} on images per minute. Please try again in 0s.",
            type="requests",
            code="rate_limit_exceeded",
            headers={"retry-after": "0"},
        )
    if "FAIL_SERVER" in prompt:
        return _ApiError(
            500,
            "The server had an error while processing your request. Sorry about that!",
            type="server_error",
            code="server_error",
        )
    return None


# --------------------------------------------------------------------------- the server


class FakeOpenAI(ThreadedServer):
    """Fake OpenAI API served by uvicorn in a background thread on 127.0.0.1.

    Attributes tests may change at any time: ``brain`` (reply policy for chat completions),
    ``latency_s`` (delay before every response), ``api_key`` (None accepts any bearer token),
    ``stream_interval_s`` (delay between the events of a streamed image answer),
    ``chat_interval_s`` (delay between the chunks of a streamed chat answer).
    """

    def __init__(
        self,
        *,
        port: int = 0,
        brain: Brain | None = None,
        latency_s: float = 0.0,
        api_key: str | None = None,
        strict_mimetypes: bool = True,
        stream_interval_s: float = 0.0,
    ) -> None:
        self.brain: Brain = brain or default_brain
        self.latency_s = latency_s
        self.stream_interval_s = stream_interval_s
        self.chat_interval_s = 0.0
        self.api_key = api_key
        # The real API rejects image parts sent as application/octet-stream (raw bytes
        # without a filename); keep that behaviour unless a test opts out.
        self.strict_mimetypes = strict_mimetypes
        # Models the fake answers as the real API answers a shut-down one (404
        # model_not_found); empty by default, so tests choose what is gone.
        self.gone_models: set[str] = set()
        self._init_server(port)
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._failures: list[_Failure] = []
        self._answers: list[_RawAnswer] = []
        self.app = self._build_app()

    name = "fake OpenAI server"

    # -- lifecycle -------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- recording and error injection ----------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot (copy) of every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def requests_to(self, path_suffix: str) -> list[RecordedRequest]:
        """Recorded requests whose path ends with ``path_suffix`` (e.g. "/images/edits")."""
        return [r for r in self.requests if r.path.endswith(path_suffix)]

    def last_request(self, path_suffix: str = "") -> RecordedRequest:
        found = self.requests_to(path_suffix)
        if not found:
            raise LookupError(f"no request to *{path_suffix}")
        return found[-1]

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def reset(self) -> None:
        """Forget requests and queued failures; restore the default brain and no latency."""
        with self._lock:
            self._requests.clear()
            self._failures.clear()
            self._answers.clear()
        self.brain = default_brain
        self.latency_s = 0.0
        self.stream_interval_s = 0.0

    def fail_next(
        self,
        path_suffix: str,
        status: int = 500,
        code: str | None = "server_error",
        message: str = "Injected failure",
        type: str | None = None,
        headers: dict[str, str] | None = None,
        times: int = 1,
        param: str | None = None,
    ) -> None:
        """Answer the next ``times`` requests to ``*path_suffix`` with an OpenAI error."""
        failure = _Failure(
            path_suffix=path_suffix,
            status=status,
            code=code,
            message=message,
            type=type or _default_type(status, code),
            param=param,
            headers=dict(headers or {}),
            remaining=times,
        )
        with self._lock:
            self._failures.append(failure)

    def answer_next(
        self,
        path_suffix: str,
        body: Any,
        *,
        status: int = 200,
        content_type: str = "application/json",
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` requests to ``*path_suffix`` with exactly ``body``
        (str or bytes as they are, anything else as JSON), whatever was asked: a malformed
        or unexpected answer, for tests of how the app reads what a provider says.
        Queued failures (:meth:`fail_next`) come first."""
        if isinstance(body, str):
            raw = body.encode()
        elif isinstance(body, bytes):
            raw = body
        else:
            raw = json.dumps(body).encode()
        with self._lock:
            self._answers.append(_RawAnswer(path_suffix, status, raw, content_type, times))

    def _take_answer(self, path: str) -> Response | None:
        with self._lock:
            for answer in self._answers:
                if path.endswith(answer.path_suffix):
                    answer.remaining -= 1
                    if answer.remaining <= 0:
                        self._answers.remove(answer)
                    return Response(
                        answer.body, status_code=answer.status, media_type=answer.content_type
                    )
        return None

    def _take_failure(self, path: str) -> _ApiError | None:
        with self._lock:
            for failure in self._failures:
                if path.endswith(failure.path_suffix):
                    failure.remaining -= 1
                    if failure.remaining <= 0:
                        self._failures.remove(failure)
                    return _ApiError(
                        failure.status,
                        failure.message,
                        type=failure.type,
                        param=failure.param,
                        code=failure.code,
                        headers=failure.headers,
                    )
        return None

    # -- app -------------------------------------------------------------------------

    def _build_app(self) -> Starlette:
        def api(handler: Callable[[Request, RecordedRequest], Awaitable[Response]]) -> Any:
            async def endpoint(request: Request) -> Response:
                return await self._handle(request, handler)

            return endpoint

        routes = [
            Route("/v1/models", api(self._models), methods=["GET"]),
            Route("/v1/models/{model_id:path}", api(self._model), methods=["GET"]),
            Route("/v1/chat/completions", api(self._chat), methods=["POST"]),
            Route("/v1/images/generations", api(self._generate), methods=["POST"]),
            Route("/v1/images/edits", api(self._edit), methods=["POST"]),
            Route("/_fake/requests", self._control_requests, methods=["GET"]),
            Route("/_fake/reset", self._control_reset, methods=["POST"]),
            Route("/_fake/fail_next", self._control_fail_next, methods=["POST"]),
            Route("/_fake/answer_next", self._control_answer_next, methods=["POST"]),
            Route(
                "/{rest:path}",
                api(self._not_found),
                methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            ),
        ]
        return Starlette(routes=routes)

    async def _handle(
        self, request: Request, handler: Callable[[Request, RecordedRequest], Awaitable[Response]]
    ) -> Response:
        """Record, delay, authenticate, inject failures, then run the endpoint."""
        try:
            recorded, parse_error = await self._record(request)
            if self.latency_s > 0:
                await asyncio.sleep(self.latency_s)
            self._check_auth(request)
            injected = self._take_failure(request.url.path)
            if injected is not None:
                raise injected
            raw_answer = self._take_answer(request.url.path)
            if raw_answer is not None:
                response = raw_answer
            elif parse_error is not None:
                raise parse_error
            else:
                response = await handler(request, recorded)
        except _ApiError as error:
            response = _error_response(error)
        except Exception as exc:  # a bug in the fake or in a test's brain: say so loudly
            traceback.print_exc(file=sys.stderr)
            response = _error_response(
                _ApiError(500, f"fake server error: {exc!r}", type="server_error", code=None)
            )
        response.headers["x-request-id"] = "req_" + uuid.uuid4().hex
        return response

    async def _record(self, request: Request) -> tuple[RecordedRequest, _ApiError | None]:
        content_type = request.headers.get("content-type", "")
        body: dict[str, Any] | None = None
        form: dict[str, list[Any]] = {}
        error: _ApiError | None = None
        if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            try:
                data = await request.form(max_part_size=_MAX_IMAGE_BYTES)
                for key, value in data.multi_items():
                    if isinstance(value, UploadFile):
                        raw = await value.read()
                        value = {
                            "filename": value.filename,
                            "content_type": value.content_type,
                            "size": len(raw),
                            "data": raw,
                        }
                    form.setdefault(key, []).append(value)
            except Exception as exc:
                error = _bad(f"Could not parse multipart form: {exc}", None, None)
        else:
            raw = await request.body()
            if raw:
                try:
                    parsed = json.loads(raw)
                except ValueError:
                    error = _bad(
                        "We could not parse the JSON body of your request. (HINT: This likely "
                        "means you aren't using your HTTP library correctly.)",
                        None,
                        None,
                    )
                else:
                    if isinstance(parsed, dict):
                        body = parsed
                    else:
                        error = _bad("The request body must be a JSON object.", None, None)
        recorded = RecordedRequest(
            path=request.url.path,
            method=request.method,
            headers={k: v for k, v in request.headers.items() if k.lower() != "authorization"},
            json=body,
            form=form,
            query=dict(request.query_params),
            has_auth="authorization" in request.headers,
        )
        with self._lock:
            self._requests.append(recorded)
        return recorded, error

    def _check_auth(self, request: Request) -> None:
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            raise _ApiError(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                code="invalid_api_key",
            )
        if self.api_key is not None and auth[7:].strip() != self.api_key:
            raise _ApiError(401, "Incorrect API key provided.", code="invalid_api_key")

    # -- endpoints -------------------------------------------------------------------

    _MODEL_IDS = (
        "gpt-test",
        "gpt-4o-mini",
        "gpt-6.1-terra",
        "gpt-image-1.5",
        "gpt-image-2",
        "gpt-image-2.6-flare",
        "gpt-image-1-mini",
    )

    @staticmethod
    def _model_obj(model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": 1700000000, "owned_by": "fake"}

    async def _models(self, request: Request, recorded: RecordedRequest) -> Response:
        data = [self._model_obj(m) for m in self._MODEL_IDS]
        return JSONResponse({"object": "list", "data": data})

    async def _model(self, request: Request, recorded: RecordedRequest) -> Response:
        return JSONResponse(self._model_obj(request.path_params["model_id"]))

    async def _not_found(self, request: Request, recorded: RecordedRequest) -> Response:
        raise _ApiError(404, f"Invalid URL ({request.method} {request.url.path})", code=None)

    async def _chat(self, request: Request, recorded: RecordedRequest) -> Response:
        body = recorded.json or {}
        model = body.get("model")
        messages = body.get("messages")
        if not isinstance(model, str) or not model:
            raise _bad("You must provide a model parameter.", "model", None)
        if not isinstance(messages, list) or not messages:
            raise _bad("'messages' must be a non-empty array.", "messages", "empty_array")
        tools = body.get("tools") or []
        reply = self.brain(messages, tools)
        if inspect.isawaitable(reply):
            reply = await reply
        if isinstance(reply, str):
            reply = Reply(content=reply)
        if reply.content is None and not reply.tool_calls:
            reply = Reply(content="")
        finish = "tool_calls" if reply.tool_calls else "stop"
        prompt_tokens = _text_tokens(json.dumps(messages))
        completion_tokens = _text_tokens(
            (reply.content or "") + "".join(c.name + c.arguments for c in reply.tool_calls)
        )
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        completion_id = "chatcmpl-" + uuid.uuid4().hex[:24]
        created = int(time.time())
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            chunks = _stream_chunks(reply, finish, usage if include_usage else None)
            return StreamingResponse(
                _sse(chunks, completion_id, created, model, include_usage, self.chat_interval_s),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache"},
            )
        message: dict[str, Any] = {"role": "assistant", "content": reply.content, "refusal": None}
        if reply.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in reply.tool_calls
            ]
        return JSONResponse(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
                ],
                "usage": usage,
                "system_fingerprint": None,
            }
        )

    def _check_model(self, model: str, background: str) -> None:
        """What the real API says for a shut-down model, and for gpt-image-2's missing
        transparency ("gpt-image-2 and gpt-image-2-2026-04-21 do not support transparent
        backgrounds")."""
        if model in self.gone_models:
            raise _ApiError(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
        if background == "transparent" and model in ("gpt-image-2", "gpt-image-2-2026-04-21"):
            raise _bad(
                f"Transparent backgrounds are not supported for {model}; use opaque or auto.",
                "background",
            )

    async def _generate(self, request: Request, recorded: RecordedRequest) -> Response:
        body = recorded.json or {}
        prompt = body.get("prompt")
        _check_prompt(prompt)
        stream = _parse_stream(body.get("stream"), body.get("partial_images"))
        n = _parse_n(body.get("n"))
        size_name, (width, height) = _parse_size(body.get("size"), body.get("model"))
        quality = _parse_choice(body.get("quality"), _QUALITIES, "quality", "auto")
        output_format = _parse_choice(body.get("output_format"), _FORMATS, "output_format", "png")
        background = _parse_choice(body.get("background"), _BACKGROUNDS, "background", "auto")
        compression = _parse_compression(body.get("output_compression"))
        if background == "transparent" and output_format == "jpeg":
            raise _bad("Transparent background requires output_format png or webp.", "background")
        model = str(body.get("model") or "gpt-image-1.5")
        self._check_model(model, background)
        keyword = _keyword_error(prompt, model)
        if keyword is not None:
            raise keyword
        transparent = background == "transparent"
        images = [
            _generated(prompt, i, width, height, transparent, output_format, compression)
            for i in range(n)
        ]
        answer = _ImagesAnswer(
            images, prompt, size_name, quality, output_format, background, width, height, 0
        )
        if stream is not None:
            return self._stream_images(answer, "image_generation", stream)
        return _images_response(answer)

    async def _edit(self, request: Request, recorded: RecordedRequest) -> Response:
        form = recorded.form
        prompt = _form_text(form, "prompt")
        parts = list(form.get("image", [])) + list(form.get("image[]", []))
        if not parts:
            raise _bad(
                "Missing required parameter: 'image'.", "image", "missing_required_parameter"
            )
        if len(parts) > 16:
            raise _bad("At most 16 images may be provided.", "image")
        _check_prompt(prompt)
        images = [self._decode_part(part, "image") for part in parts]
        first = images[0]
        mask_parts = form.get("mask") or []
        if mask_parts:
            mask = self._decode_part(mask_parts[0], "mask")
            if mask.format != "PNG":
                raise _bad("Invalid mask image: the mask must be a PNG file.", "mask")
            if mask.size != first.size:
                raise _bad(
                    f"Invalid mask image: mask size {mask.size[0]}x{mask.size[1]} does not match "
                    f"image size {first.size[0]}x{first.size[1]}.",
                    "mask",
                )
        n = _parse_n(_form_text(form, "n"))
        size_value = _form_text(form, "size")
        if size_value in (None, "auto"):
            _parse_size(size_value)
            width, height = first.size
            size_name = f"{width}x{height}"
        else:
            size_name, (width, height) = _parse_size(size_value, _form_text(form, "model"))
        quality = _parse_choice(_form_text(form, "quality"), _QUALITIES, "quality", "auto")
        output_format = _parse_choice(
            _form_text(form, "output_format"), _FORMATS, "output_format", "png"
        )
        background = _parse_choice(
            _form_text(form, "background"), _BACKGROUNDS, "background", "auto"
        )
        _parse_choice(_form_text(form, "input_fidelity"), ("high", "low"), "input_fidelity", "low")
        compression = _parse_compression(_form_text(form, "output_compression"))
        stream = _parse_stream(_form_text(form, "stream"), _form_text(form, "partial_images"))
        if background == "transparent" and output_format == "jpeg":
            raise _bad("Transparent background requires output_format png or webp.", "background")
        self._check_model(_form_text(form, "model") or "gpt-image-1.5", background)
        keyword = _keyword_error(prompt, _form_text(form, "model") or "gpt-image-1.5")
        if keyword is not None:
            raise keyword
        edited = _invert(first)
        if edited.size != (width, height):
            edited = edited.resize((width, height))
        outputs = []
        for i in range(n):
            image = edited
            if i:  # later variations carry a marker so every output differs
                image = edited.copy()
                marker = make_image(prompt, i, 1, 1).getpixel((0, 0))
                side = max(8, min(width, height) // 8)
                ImageDraw.Draw(image).rectangle((0, 0, side, side), fill=marker)
            outputs.append(_encode(image, output_format, compression))
        answer = _ImagesAnswer(
            outputs,
            prompt,
            size_name,
            quality,
            output_format,
            background,
            width,
            height,
            len(images),
        )
        if stream is not None:
            return self._stream_images(answer, "image_edit", stream)
        return _images_response(answer)

    def _stream_images(self, answer: _ImagesAnswer, prefix: str, partials: int) -> Response:
        """The answer as server-sent events: partial images, then each image completed."""

        async def events() -> AsyncIterator[bytes]:
            for index, data in enumerate(answer.images):
                for number in range(partials):
                    await asyncio.sleep(self.stream_interval_s)
                    partial = _partial_image(data, number, partials, answer.output_format)
                    yield _event(
                        f"{prefix}.partial_image",
                        {**answer.settings(), "b64_json": partial, "partial_image_index": number},
                    )
                    if "FAIL_STREAM" in answer.prompt:
                        error = {
                            "type": "server_error",
                            "code": "server_error",
                            "message": "The server had an error while drawing the image.",
                            "param": None,
                        }
                        yield _event("error", {"type": "error", "error": error})
                        return
                await asyncio.sleep(self.stream_interval_s)
                completed = {
                    **answer.settings(),
                    "b64_json": base64.b64encode(data).decode("ascii"),
                    "usage": answer.usage(count=1, with_input=index == 0),
                }
                yield _event(f"{prefix}.completed", completed)

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"cache-control": "no-cache"}
        )

    def _decode_part(self, part: Any, param: str) -> Image.Image:
        if not isinstance(part, dict):
            raise _bad(f"Invalid file '{param}': expected a file upload.", param)
        if part["size"] > _MAX_IMAGE_BYTES:
            raise _bad(f"Invalid file '{param}': file too large (max 50MB).", param)
        content_type = (part.get("content_type") or "").split(";")[0].strip().lower()
        if self.strict_mimetypes and content_type not in _IMAGE_MIMETYPES:
            raise _bad(
                f"Invalid file '{param}': unsupported mimetype ('{content_type}'). Supported "
                "file formats are 'image/jpeg', 'image/png', and 'image/webp'.",
                param,
                "unsupported_file_mimetype",
            )
        try:
            image = Image.open(io.BytesIO(part["data"]))
            image.load()
        except Exception as exc:
            raise _bad(
                f"Invalid image file or mode for image '{param}': could not decode ({exc}).",
                param,
                "invalid_image_format",
            ) from None
        return image

    # -- control endpoints (no auth, not recorded) ------------------------------------

    async def _control_requests(self, request: Request) -> Response:
        def jsonable(value: Any) -> Any:
            if isinstance(value, dict):
                return {**value, "data": base64.b64encode(value["data"]).decode()}
            return value

        out = []
        for r in self.requests:
            form = {key: [jsonable(v) for v in values] for key, values in r.form.items()}
            out.append(
                {
                    "path": r.path,
                    "method": r.method,
                    "headers": r.headers,
                    "json": r.json,
                    "form": form,
                }
            )
        return JSONResponse(out)

    async def _control_reset(self, request: Request) -> Response:
        self.reset()
        return JSONResponse({"ok": True})

    async def _control_fail_next(self, request: Request) -> Response:
        args = await request.json()
        self.fail_next(**args)
        return JSONResponse({"ok": True})

    async def _control_answer_next(self, request: Request) -> Response:
        args = await request.json()
        self.answer_next(args.pop("path_suffix"), args.pop("body"), **args)
        return JSONResponse({"ok": True})


# --------------------------------------------------------------------------- helpers


def _form_text(form: dict[str, list[Any]], name: str) -> Any:
    values = form.get(name)
    return values[0] if values else None


def _check_prompt(prompt: Any) -> None:
    if not isinstance(prompt, str) or not prompt.strip():
        raise _bad("Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter")
    if len(prompt) > _MAX_PROMPT:
        raise _bad(f"'prompt' is too long: maximum length is {_MAX_PROMPT}.", "prompt")


def _parse_n(value: Any) -> int:
    if value is None:
        return 1
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise _bad(f"Invalid 'n': expected an integer, got '{value}'.", "n") from None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 10:
        raise _bad(f"Invalid 'n': {value!r}. Must be between 1 and 10.", "n")
    return value


def _parse_size(value: Any, model: Any = None) -> tuple[str, tuple[int, int]]:
    if value is None or value == "auto":
        return "1024x1024", _SIZES["1024x1024"]
    flexible = re.fullmatch(r"(\d+)x(\d+)", str(value))
    if str(model or "").startswith("gpt-image-2") and flexible:
        # gpt-image-2: edges multiples of 16, the longest at most 3840, at most 3:1, and
        # 655,360 to 8,294,400 pixels.
        width, height = int(flexible[1]), int(flexible[2])
        if (
            width % 16
            or height % 16
            or max(width, height) > 3840
            or max(width, height) > 3 * min(width, height)
            or not 655_360 <= width * height <= 8_294_400
        ):
            raise _bad(
                f"Invalid size '{value}' for {model}: edges must be multiples of 16, at most "
                "3840 and 3:1, with 655,360 to 8,294,400 pixels.",
                "size",
            )
        return str(value), (width, height)
    if value not in _SIZES:
        raise _bad(
            f"Invalid value: '{value}'. Supported values are: '1024x1024', '1024x1536', "
            "'1536x1024', and 'auto'.",
            "size",
        )
    return value, _SIZES[value]


def _parse_choice(value: Any, allowed: tuple[str, ...], param: str, default: str) -> str:
    if value is None:
        return default
    if value not in allowed:
        options = ", ".join(f"'{a}'" for a in allowed)
        raise _bad(f"Invalid value: '{value}'. Supported values are: {options}.", param)
    return value


def _parse_compression(value: Any) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        message = "Invalid 'output_compression': expected an integer."
        raise _bad(message, "output_compression") from None
    if not 0 <= number <= 100:
        raise _bad("'output_compression' must be between 0 and 100.", "output_compression")
    return number


@dataclass
class _ImagesAnswer:
    """What an images request made, and what it reports (the gpt-image response fields)."""

    images: list[bytes]
    prompt: str
    size_name: str
    quality: str
    output_format: str
    background: str
    width: int
    height: int
    input_images: int

    @property
    def resolved_quality(self) -> str:
        return "medium" if self.quality == "auto" else self.quality

    def settings(self) -> dict[str, Any]:
        return {
            "created_at": int(time.time()),
            "size": self.size_name,
            "quality": self.resolved_quality,
            "output_format": self.output_format,
            "background": "transparent" if self.background == "transparent" else "opaque",
        }

    def usage(self, count: int, with_input: bool = True) -> dict[str, Any]:
        text_tokens = _text_tokens(self.prompt) if with_input else 0
        image_tokens = self.input_images * _IMAGE_INPUT_TOKENS if with_input else 0
        output_tokens = count * _output_tokens(self.width, self.height, self.resolved_quality)
        input_tokens = text_tokens + image_tokens
        return {
            "input_tokens": input_tokens,
            "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": image_tokens},
            "output_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
        }


def _images_response(answer: _ImagesAnswer) -> JSONResponse:
    """The gpt-image response shape: b64 data, token usage and the resolved settings."""
    settings = answer.settings()
    return JSONResponse(
        {
            "created": settings.pop("created_at"),
            "data": [{"b64_json": base64.b64encode(img).decode("ascii")} for img in answer.images],
            "usage": answer.usage(len(answer.images)),
            **settings,
        }
    )


def _parse_stream(stream: Any, partial_images: Any) -> int | None:
    """None: answer in one piece; else how many partial images to stream (0-3)."""
    if stream in (None, False, "false", "False"):
        return None
    if stream not in (True, "true", "True"):
        raise _bad(f"Invalid value for 'stream': {stream!r}.", "stream")
    if partial_images is None:
        return 0
    try:
        count = int(partial_images)
    except (TypeError, ValueError):
        raise _bad("Invalid 'partial_images': expected an integer.", "partial_images") from None
    if not 0 <= count <= 3:
        raise _bad("'partial_images' must be between 0 and 3.", "partial_images")
    return count


@functools.lru_cache(maxsize=64)
def _partial_image(data: bytes, number: int, partials: int, output_format: str) -> str:
    """Partial image `number` of `partials`: the image blurred, less so each time."""
    with Image.open(io.BytesIO(data)) as image:
        radius = max(1, image.width // 16) * (partials - number) / partials
        blurred = image.filter(ImageFilter.GaussianBlur(radius))
    return base64.b64encode(_encode(blurred, output_format, None)).decode("ascii")


def _event(kind: str, data: dict[str, Any]) -> bytes:
    if kind != "error":
        data = {"type": kind, **data}
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


def _split_text(text: str) -> list[str]:
    """Word-sized pieces (several deltas, like a real stream); joined they equal ``text``."""
    pieces = re.findall(r"\S+\s*|\s+", text)
    if len(pieces) < 2 and len(text) >= 2:
        half = len(text) // 2
        pieces = [text[:half], text[half:]]
    return pieces or [text]


def _split_arguments(arguments: str) -> list[str]:
    """At least two pieces whenever possible, so clients must merge fragments by index."""
    if len(arguments) < 2:
        return [arguments]
    step = math.ceil(len(arguments) / min(3, len(arguments)))
    return [arguments[i : i + step] for i in range(0, len(arguments), step)]


def _stream_chunks(
    reply: Reply, finish: str, usage: dict[str, int] | None
) -> list[tuple[list[dict[str, Any]], dict[str, int] | None]]:
    """``(choices, usage)`` for each SSE chunk, in OpenAI's order."""

    def choice(delta: dict[str, Any], finish_reason: str | None = None) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]

    first_content = "" if reply.content is not None else None
    chunks = [(choice({"role": "assistant", "content": first_content, "refusal": None}), None)]
    if reply.content:
        chunks += [(choice({"content": piece}), None) for piece in _split_text(reply.content)]
    for index, call in enumerate(reply.tool_calls):
        head = {
            "index": index,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        chunks.append((choice({"tool_calls": [head]}), None))
        for piece in _split_arguments(call.arguments):
            fragment = {"index": index, "function": {"arguments": piece}}
            chunks.append((choice({"tool_calls": [fragment]}), None))
    chunks.append((choice({}, finish), None))
    if usage is not None:
        chunks.append(([], usage))
    return chunks


async def _sse(
    chunks: list[tuple[list[dict[str, Any]], dict[str, int] | None]],
    completion_id: str,
    created: int,
    model: str,
    include_usage: bool,
    interval_s: float = 0.0,
) -> AsyncIterator[bytes]:
    for choices, usage in chunks:
        chunk: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": None,
            "choices": choices,
        }
        if include_usage:
            chunk["usage"] = usage
        yield f"data: {json.dumps(chunk)}\n\n".encode()
        await asyncio.sleep(interval_s)
    yield b"data: [DONE]\n\n"


# --------------------------------------------------------------------------- process mode


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGINT/SIGTERM; print "READY <base_url>" once the port answers."""
    parser = argparse.ArgumentParser(description="Fake OpenAI API for offline tests.")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each reply")
    parser.add_argument("--api-key", default=None, help="accept only this bearer token")
    parser.add_argument(
        "--stream-interval", type=float, default=0.0, help="seconds between streamed events"
    )
    args = parser.parse_args(argv)
    fake = FakeOpenAI(
        port=args.port,
        latency_s=args.latency,
        api_key=args.api_key,
        stream_interval_s=args.stream_interval,
    ).start()
    return fake.serve_until_signalled(fake.base_url)


if __name__ == "__main__":
    raise SystemExit(main())
