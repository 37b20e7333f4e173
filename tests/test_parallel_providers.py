"""Providers in parallel (issue 14): a batch of requests goes out concurrently, within the
provider's limit, paused as a whole by a 429, stored in a stable order, stopped as a whole.

Most tests run the real Replicate backend against the fake Replicate API (real client, real
wire protocol on 127.0.0.1) with flux-1.1-pro, a model that makes one image per request,
so a batch of n is n requests. The fake records when each request started and ended
(`spans`), which is what overlap and pauses are read from: no timing asserts beyond such
overlap and ordering facts. `finish_on_create` makes each prediction one request of the
fake's latency. One in-test backend finishes its requests in reverse order, to show that
arrival order never becomes storage order.
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import replace
from decimal import Decimal
from typing import Any

import openai
import pytest
from PIL import Image

from core.errors import BackendFailed, QuotaExhausted
from memory.curations import CurationStore
from memory.db import create_engine, migrate, session_factory
from memory.images import ImageStore
from memory.ledger import Ledger, OperatorLimits
from memory.media_store import MediaStore
from memory.users import UserStore
from pipelines import provider_limits
from pipelines.catalogue.pricing import PriceTable
from pipelines.images.base import (
    Capabilities,
    GeneratedImage,
    ImageRequest,
    ImageResult,
    check_request,
)
from pipelines.images.registry import BackendRegistry
from pipelines.images.replicate_images import ReplicateImages
from pipelines.progress import Progress
from tests.db_fixtures import db_url, engine  # noqa: F401, F811 - fixtures
from tests.fakes.replicate_server import FakeReplicate
from tests.replicate_fixtures import fetch_policy_for
from tests.tool_helpers import ChatRecorder, ledger_entries, tool_context, with_turn
from tests.waiting import wait_until
from tools.context import GenerationDefaults
from tools.curate_images import curate_images
from tools.generate_image import generate_image
from tools.variations import variations

THREAD = "3b9d2c4e-98f4-4b3c-9d55-2e0f0c7c1a11"
ONE_PER_REQUEST = "black-forest-labs/flux-1.1-pro"  # Capabilities.max_n == 1
PRICE = Decimal("0.04")  # flux-1.1-pro per image in pipelines/catalogue/prices.toml
D = Decimal

STAGGERED_PRICES = """
[[price]]
backend = "staggered"
model = "one-v1"
unit = "image"
amount_usd = 0.10
source = "test"
date = "2026-11-22"
"""


def replicate_backend(fake: FakeReplicate, **options: Any) -> ReplicateImages:
    settings: dict[str, Any] = {
        "base_url": fake.base_url,
        "poll_interval_s": 0.01,
        "timeout_s": 10.0,
        "max_retries": 2,
        "retry_backoff_s": 0.01,
        "fetch_policy": fetch_policy_for(fake, timeout_s=10.0),
    }
    return ReplicateImages(fake.api_token, ONE_PER_REQUEST, **{**settings, **options})


def creates(fake: FakeReplicate) -> list[tuple[int, float, float]]:
    """(status, start, end) of every prediction create the fake answered, by start."""
    found = [
        (status, start, end)
        for method, path, status, start, end in fake.spans
        if method == "POST" and path.endswith("/predictions")
    ]
    return sorted(found, key=lambda span: span[1])


def most_at_once(spans: list[tuple[int, float, float]]) -> int:
    """The most requests the fake was answering at the same moment."""
    events = sorted([(start, 1) for _, start, _ in spans] + [(end, -1) for _, _, end in spans])
    running = peak = 0
    for _, step in events:  # at equal times an end (-1) sorts before a start
        running += step
        peak = max(peak, running)
    return peak


async def _world(tmp_path, engine, backends: dict[str, Any], **services: Any):  # noqa: F811
    account = await UserStore(session_factory(engine)).add("ada", "password-123")
    chat = ChatRecorder()
    ctx = tool_context(
        thread_id=THREAD,
        user_id=account.id,
        backends=BackendRegistry(backends),
        images=ImageStore(engine, MediaStore(tmp_path / "media")),
        curations=CurationStore(engine),
        clip_model=None,
        ledger=Ledger(engine),
        operator_limits=OperatorLimits(confirm_above_usd=D("100")),
        port=chat,
        **services,
    )
    return ctx, chat


@pytest.fixture
async def sqlite_engine(tmp_path):
    """One database, SQLite only, for the tests whose point is not storage."""
    made = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'atelier.db'}")
    try:
        await migrate(made)
        yield made
    finally:
        await made.dispose()


@pytest.fixture
def one_second_fake(fake_replicate: FakeReplicate) -> FakeReplicate:
    """Each image is one create answered after 1 s, finished, with its image inline."""
    fake_replicate.configure(latency_s=1.0, output_mode="data")
    fake_replicate.finish_on_create = True
    return fake_replicate


@pytest.fixture
def limit_of_two():
    before = provider_limits.limit_for("replicate")
    provider_limits.configure({"replicate": 2})
    yield
    provider_limits.configure({"replicate": before})


# --------------------------------------------------------------------------- overlap, order


async def test_a_curations_requests_overlap_and_its_candidates_are_stored_by_rank(
    tmp_path,
    engine,  # noqa: F811
    one_second_fake,
):
    backend = replicate_backend(one_second_fake)
    ctx, chat = await _world(tmp_path, engine, {"replicate": backend}, prices=PriceTable.load())
    # The panel's seed makes candidate i's seed 50 + i, so request order can be read back.
    ctx = with_turn(ctx, defaults=GenerationDefaults(backend="replicate", seed=50))
    text, artifact = await curate_images(ctx, "a red apple", n=6, keep=2, size="256x256")
    spans = creates(one_second_fake)
    assert len(spans) == 6 and all(status == 201 for status, _, _ in spans)
    # The six requests overlapped, never more than the provider's limit at once.
    assert 1 < most_at_once(spans) <= provider_limits.limit_for("replicate")
    # Stored in request order (the seeds), shown and recorded in rank order.
    stored = await ctx.services.images.for_thread(THREAD, ctx.turn.user_id)
    assert [record.seed for record in stored] == [50, 51, 52, 53, 54, 55]
    records = [record for record, _ in artifact.images]
    curation = await ctx.services.curations.latest_with_image(records[0].id, ctx.turn.user_id)
    assert [c.rank for c in curation.candidates] == [1, 2, 3, 4, 5, 6]
    assert [c.image_id for c in curation.candidates] == [record.id for record in records]
    assert [c.verdict for c in curation.candidates] == ["kept"] * 2 + ["rejected"] * 4
    # One question at most, one reservation, settled at six images.
    [entry] = await ledger_entries(engine)
    assert (entry.what, entry.status) == ("curation", "settled")
    assert D(str(entry.actual_usd)) == 6 * PRICE and len(chat.announced) == 1
    await backend.aclose()


async def test_n_images_from_a_one_image_model_overlap_and_keep_request_order(
    tmp_path,
    engine,  # noqa: F811
    one_second_fake,
):
    backend = replicate_backend(one_second_fake)
    ctx, _ = await _world(tmp_path, engine, {"replicate": backend}, prices=PriceTable.load())
    ctx = with_turn(ctx, defaults=GenerationDefaults(backend="replicate"))
    _, artifact = await generate_image(ctx, "a heron", n=4, seed=7, size="256x256")
    spans = creates(one_second_fake)
    assert len(spans) == 4 and most_at_once(spans) == 4  # all four at once (limit 4)
    assert [record.seed for record, _ in artifact.images] == [7, 8, 9, 10]
    stored = await ctx.services.images.for_thread(THREAD, ctx.turn.user_id)
    assert [record.seed for record in stored] == [7, 8, 9, 10]
    # Reserved once for the four, settled at what the four cost.
    [entry] = await ledger_entries(engine)
    assert entry.status == "settled" and D(str(entry.estimate_usd)) == 4 * PRICE
    assert D(str(entry.actual_usd)) == 4 * PRICE and entry.image_id == stored[0].id
    # Variations of one of them: three more requests, overlapping too.
    one_second_fake.spans.clear()
    _, varied = await variations(ctx, stored[0].id, n=3)
    spans = creates(one_second_fake)
    assert len(spans) == 3 and most_at_once(spans) == 3
    assert [record.parent_id for record, _ in varied.images] == [stored[0].id] * 3
    await backend.aclose()


class Staggered:
    """One image per request; a request with a lower seed takes longer, so a batch
    arrives in reverse order. Seeds in `fail` fail, with `error` (BackendFailed)."""

    id = "staggered"
    label = "Staggered"
    default_model = "one-v1"

    def __init__(self) -> None:
        self.sent: list[int] = []
        self.fail: dict[int, Exception] = {}

    def capabilities(self, model: str | None = None) -> Capabilities:
        return Capabilities(sizes=("64x64",), max_n=1, seed=True)

    def suggested_models(self) -> list[str]:
        return [self.default_model]

    async def generate(self, request: ImageRequest, progress: Progress | None = None):
        request = check_request(self, request)
        assert request.seed is not None
        self.sent.append(request.seed)
        if request.seed in self.fail:
            await asyncio.sleep(0.01)
            raise self.fail[request.seed]
        await asyncio.sleep(0.05 * (10 - request.seed))
        out = io.BytesIO()
        Image.new("RGB", (64, 64), (request.seed * 20, 90, 90)).save(out, "PNG")
        return ImageResult(
            images=[GeneratedImage(out.getvalue(), "image/png", 64, 64, request.seed)],
            backend=self.id,
            model=request.model or self.default_model,
            prompt_sent=request.prompt,
            seed_honoured=True,
        )


async def test_arrival_order_is_not_storage_order_and_a_failed_image_is_not_charged(
    tmp_path, sqlite_engine
):
    staggered = Staggered()
    prices = tmp_path / "prices.toml"
    prices.write_text(STAGGERED_PRICES)
    ctx, _ = await _world(
        tmp_path, sqlite_engine, {"staggered": staggered}, prices=PriceTable.load(prices)
    )
    ctx = with_turn(ctx, defaults=GenerationDefaults(backend="staggered"))
    staggered.fail = {2: BackendFailed("Staggered broke on purpose.")}
    text, artifact = await generate_image(ctx, "a kite", n=6, seed=0)
    # Seed 5 arrived first and seed 0 last; they are stored and shown by request.
    assert [record.seed for record, _ in artifact.images] == [0, 1, 3, 4, 5]
    stored = await ctx.services.images.for_thread(THREAD, ctx.turn.user_id)
    assert [record.seed for record in stored] == [0, 1, 3, 4, 5]
    assert "1 of 6 images could not be made (Staggered broke on purpose)" in text
    assert "they were not charged" in text
    [entry] = await ledger_entries(sqlite_engine)
    assert (entry.status, D(str(entry.estimate_usd))) == ("settled", D("0.6"))
    assert D(str(entry.actual_usd)) == D("0.5") and entry.image_id == stored[0].id
    # Nothing made: the error stands, and the reservation is given back.
    staggered.fail = {seed: BackendFailed("Staggered broke on purpose.") for seed in range(20)}
    with pytest.raises(BackendFailed, match="broke on purpose"):
        await generate_image(ctx, "a kite", n=3, seed=10)
    assert [e.status for e in await ledger_entries(sqlite_engine)] == ["settled", "released"]


async def test_an_error_every_request_would_meet_sends_no_more(tmp_path, sqlite_engine):
    staggered = Staggered()
    ctx, _ = await _world(tmp_path, sqlite_engine, {"staggered": staggered})
    ctx = with_turn(ctx, defaults=GenerationDefaults(backend="staggered"))
    staggered.fail = {0: QuotaExhausted("The staggered account is out of credit.")}
    text, artifact = await generate_image(ctx, "a kite", n=8, seed=0)
    # Seeds 0-3 went out together (limit 4); after the quota error nothing else was sent,
    # and what was already in flight was kept.
    assert sorted(staggered.sent) == [0, 1, 2, 3]
    assert [record.seed for record, _ in artifact.images] == [1, 2, 3]
    assert "5 of 8 images could not be made (The staggered account is out of credit)" in text


# --------------------------------------------------------------------------- limit, 429


async def test_the_providers_limit_holds(tmp_path, sqlite_engine, one_second_fake, limit_of_two):
    one_second_fake.configure(latency_s=0.2)
    backend = replicate_backend(one_second_fake)
    ctx, _ = await _world(tmp_path, sqlite_engine, {"replicate": backend})
    ctx = with_turn(ctx, defaults=GenerationDefaults(backend="replicate"))
    _, artifact = await generate_image(ctx, "a heron", n=6, size="256x256")
    spans = creates(one_second_fake)
    assert len(artifact.images) == 6 and len(spans) == 6
    assert most_at_once(spans) == 2 and provider_limits.gate("replicate").peak == 2
    await backend.aclose()


async def test_a_429_with_retry_after_pauses_all_of_the_providers_requests(
    tmp_path, sqlite_engine, fake_replicate
):
    # Predictions that take a few polls hold their slots; creates answer quickly.
    fake_replicate.configure(latency_s=0.05, processing_polls=4, output_mode="data")
    fake_replicate.fail_next("rate_limit", retry_after=1)
    # No retries of its own: the backend's 429 reaches the shared gate at once.
    backend = replicate_backend(fake_replicate, max_retries=0)
    ctx, _ = await _world(tmp_path, sqlite_engine, {"replicate": backend})
    ctx = with_turn(ctx, defaults=GenerationDefaults(backend="replicate"))
    _, artifact = await generate_image(ctx, "a heron", n=8, seed=1, size="256x256")
    spans = creates(fake_replicate)
    [refused] = [span for span in spans if span[0] == 429]
    pause_from, pause_until = refused[2], refused[2] + 1.0
    # While the pause lasted no prediction was started, not only the refused one's...
    assert not [span for span in spans if pause_from < span[1] < pause_until]
    # ...though three requests finished meanwhile and freed their slots: the refused one
    # and the four still waiting all went after the pause.
    later = [span for span in spans if span[1] >= pause_until]
    assert len(later) == 5 and all(status == 201 for status, _, _ in later)
    assert len(provider_limits.gate("replicate").pauses) == 1
    assert [record.seed for record, _ in artifact.images] == list(range(1, 9))
    await backend.aclose()


async def test_http_hooks_hold_a_clients_own_retries_and_every_other_request(fake_openai):
    """For a backend whose client retries 429s itself: the hooks make its retries, and
    every other request to the provider, wait out the shared pause."""
    fake_openai.fail_next(
        "/images/generations", status=429, code="rate_limit_exceeded", headers={"retry-after": "1"}
    )
    client = openai.AsyncOpenAI(
        api_key="sk-test",
        base_url=fake_openai.base_url,
        max_retries=2,
        http_client=openai.DefaultAsyncHttpxClient(
            event_hooks=provider_limits.http_hooks("openai")
        ),
    )
    gate = provider_limits.gate("openai")
    first = asyncio.create_task(client.images.generate(model="gpt-image-1.5", prompt="a fox"))
    await wait_until(lambda: gate.paused_for() > 0, 5, "the 429 to pause the gate")
    second = asyncio.create_task(client.images.generate(model="gpt-image-1.5", prompt="an owl"))
    await asyncio.sleep(0.3)
    # Paused: neither the client's retry of the first nor the second has gone out.
    assert len(fake_openai.requests_to("/images/generations")) == 1
    done = await asyncio.gather(first, second)
    assert all(answer.data for answer in done)
    assert len(fake_openai.requests_to("/images/generations")) == 3
    await client.close()


# --------------------------------------------------------------------------- stop


class WatchedPort(ChatRecorder):
    """A chat that shows progress: the bar whose stop button the user presses."""

    def __init__(self) -> None:
        super().__init__()
        self.bars: list[Progress] = []

    def progress(self, label: str) -> Progress | None:
        self.bars.append(Progress())
        return self.bars[-1]


@pytest.mark.parametrize("how", ["task", "progress"])
async def test_stop_cancels_every_request_in_flight(tmp_path, sqlite_engine, fake_replicate, how):
    fake_replicate.configure(processing_polls=100_000, output_mode="data")
    backend = replicate_backend(fake_replicate)
    ctx, _ = await _world(tmp_path, sqlite_engine, {"replicate": backend}, prices=PriceTable.load())
    port = WatchedPort()
    ctx = with_turn(ctx, defaults=GenerationDefaults(backend="replicate"))
    ctx = replace(ctx, port=port)
    running = asyncio.create_task(generate_image(ctx, "a heron", n=4, size="256x256"))
    await wait_until(
        lambda: len(fake_replicate.predictions()) == 4, 10, "four predictions to start"
    )
    if how == "task":
        running.cancel()  # what the chat's stop button does to the tool's task
    else:
        port.bars[0].cancel()  # what it does to the call's progress bar
    with pytest.raises(asyncio.CancelledError):
        await running
    states = [p["status"] for p in fake_replicate.predictions()]
    assert states == ["canceled"] * 4  # every one stopped on Replicate, none left billing
    assert await ctx.services.images.for_thread(THREAD, ctx.turn.user_id) == []
    [entry] = await ledger_entries(sqlite_engine)
    assert entry.status == "released"
    await backend.aclose()
