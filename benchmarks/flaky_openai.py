"""The fake OpenAI for the batch benchmarks: failures planned per item, tiny images on request.

tests/fakes/openai_server.py fails "the next N requests" (`fail_next`), whichever request
comes next; a batch benchmark needs the same failures on every run and per item, and a
timeout (the fake holding a request longer than the client waits), which the test fake
has no switch for. This subclass adds that, and nothing else of the API changes:

- `--fail-every K`: the items whose number (the digits after `obj-` in the prompt) is
  K-1 modulo K fail their FIRST image request, in turn a 429 with `Retry-After`
  (answered at once, as a rate limiter does), a 500 (after the latency, as a server that
  worked and failed) and a timeout (held `--hold` seconds, longer than the client's
  timeout, then dropped); their later requests succeed;
- `--latency S`: every image request is answered after S seconds (the 429s excepted);
- `--image-side N`: images of N×N pixels whatever size was asked (the usage still counts
  the size asked, as OpenAI bills it), so the client's and the app's work per image is
  not drowned in PNG bytes;
- `GET /_fake/outcomes`: one entry per image request, `{"prompt", "outcome", "usage"}`
  with outcome ok, 429, 500 or timeout (usage only for ok), for the benchmark's
  accounting.

    python -m benchmarks.flaky_openai --port 0 --latency 1 --fail-every 10 --hold 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import threading
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.openai_server import (
    FakeOpenAI,
    RecordedRequest,
    _ApiError,
    _encode,
    _images_response,
    _ImagesAnswer,
    _parse_n,
    _parse_size,
    make_image,
)

FAILURE_KINDS = ("429", "500", "timeout")
_ITEM = re.compile(r"\bobj-(\d+)\b")


def planned_failure(prompt: str, attempt: int, fail_every: int) -> str | None:
    """The failure the plan gives request number `attempt` (from 0) of this prompt's
    item, or None: only first requests of every `fail_every`-th item fail."""
    found = _ITEM.search(prompt)
    if fail_every < 1 or attempt > 0 or found is None:
        return None
    number = int(found.group(1))
    if number % fail_every != fail_every - 1:
        return None
    return FAILURE_KINDS[(number // fail_every) % len(FAILURE_KINDS)]


class FlakyOpenAI(FakeOpenAI):
    """FakeOpenAI with per-item planned failures, a hold for timeouts and tiny images."""

    def __init__(
        self,
        *,
        image_latency_s: float = 0.0,
        fail_every: int = 0,
        hold_s: float = 0.0,
        image_side: int | None = None,
        retry_after: str = "1",
        **kwargs: Any,
    ) -> None:
        self.image_latency_s = image_latency_s
        self.fail_every = fail_every
        self.hold_s = hold_s
        self.image_side = image_side
        self.retry_after = retry_after
        self.outcomes: list[dict[str, Any]] = []
        self._seen: dict[str, int] = {}
        self._plan_lock = threading.Lock()
        super().__init__(**kwargs)

    def _build_app(self) -> Any:
        app = super()._build_app()
        # Before the catch-all route, which answers 404 for anything unknown.
        app.router.routes.insert(0, Route("/_fake/outcomes", self._outcomes, methods=["GET"]))
        return app

    async def _outcomes(self, request: Request) -> Response:
        with self._plan_lock:
            return JSONResponse(list(self.outcomes))

    def _note(self, prompt: str, outcome: str, usage: dict[str, Any] | None = None) -> None:
        with self._plan_lock:
            self.outcomes.append({"prompt": prompt, "outcome": outcome, "usage": usage})

    async def _generate(self, request: Any, recorded: RecordedRequest) -> Response:
        body = recorded.json or {}
        prompt = str(body.get("prompt") or "")
        with self._plan_lock:
            attempt = self._seen.get(prompt, 0)
            self._seen[prompt] = attempt + 1
        failure = planned_failure(prompt, attempt, self.fail_every)
        if failure == "429":
            self._note(prompt, failure)
            raise _ApiError(
                429,
                "Rate limit reached for images per minute. Please try again in 1s.",
                type="requests",
                code="rate_limit_exceeded",
                headers={"retry-after": self.retry_after},
            )
        if failure == "timeout":
            self._note(prompt, failure)
            await asyncio.sleep(self.hold_s)  # the client has given up by now
            raise _ApiError(504, "Held past the client's timeout.", type="server_error")
        if self.image_latency_s > 0:
            await asyncio.sleep(self.image_latency_s)
        if failure == "500":
            self._note(prompt, failure)
            raise _ApiError(
                500,
                "The server had an error while processing your request. Sorry about that!",
                type="server_error",
                code="server_error",
            )
        response = await self._answer(request, recorded)
        usage = None
        if isinstance(response, JSONResponse):
            usage = json.loads(bytes(response.body)).get("usage")
        outcome = "ok" if response.status_code == 200 else str(response.status_code)
        self._note(prompt, outcome, usage)
        return response

    async def _answer(self, request: Any, recorded: RecordedRequest) -> Response:
        body = recorded.json or {}
        if self.image_side is None or body.get("stream"):
            return await super()._generate(request, recorded)
        prompt = str(body.get("prompt") or "")
        size_name, (width, height) = _parse_size(body.get("size"), body.get("model"))
        n = _parse_n(body.get("n"))
        output_format = str(body.get("output_format") or "png")
        quality = str(body.get("quality") or "auto")
        side = self.image_side
        images = [_encode(make_image(prompt, i, side, side), output_format, None) for i in range(n)]
        answer = _ImagesAnswer(
            images, prompt, size_name, quality, output_format, "auto", width, height, 0
        )
        return _images_response(answer)


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGINT/SIGTERM; print "READY <base_url>" once the port answers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per image request")
    parser.add_argument("--fail-every", type=int, default=0, help="0: no failures")
    parser.add_argument("--hold", type=float, default=0.0, help="seconds a timeout is held")
    parser.add_argument("--image-side", type=int, default=None, help="tiny N×N images")
    args = parser.parse_args(argv)
    fake = FlakyOpenAI(
        port=args.port,
        image_latency_s=args.latency,
        fail_every=args.fail_every,
        hold_s=args.hold,
        image_side=args.image_side,
    ).start()
    return fake.serve_until_signalled(fake.base_url)


if __name__ == "__main__":
    raise SystemExit(main())
