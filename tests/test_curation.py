"""Curation through the tools: generate N, score, keep the best, overrule, check.

The fake OpenAI server draws known answers for prompts containing DISC_TEST: candidate
k % 4 is an off-centre disc, a centred disc, two discs, or a disc on grey; only the
centred disc passes every check of the crayon style. Scores and verdicts are read back
from the database (SQLite and PostgreSQL).
"""

from __future__ import annotations

import pytest

from core.errors import InvalidInput, NotFound
from memory.curations import CurationStore
from memory.db import session_factory
from memory.images import ImageStore
from memory.media_store import MediaStore
from memory.users import UserStore
from pipelines.images.openai_images import OpenAIImages
from pipelines.images.registry import BackendRegistry
from tests.db_fixtures import db_url, engine  # noqa: F401, F811 - fixtures
from tests.fakes.openai_server import DISC_TEST
from tests.tool_helpers import tool_context
from tools.check_quality import check_quality
from tools.curate_images import curate_images
from tools.generate_image import generate_image
from tools.keep_image import keep_image

THREAD = "8a0f6f6e-98f4-4b3c-9d55-2e0f0c7c1a11"


@pytest.fixture
async def ctx(tmp_path, fake_openai, engine):  # noqa: F811
    account = await UserStore(session_factory(engine)).add("eve", "password-123")
    backend = OpenAIImages("sk-test", "gpt-image-1.5", fake_openai.base_url)
    return tool_context(
        thread_id=THREAD,
        user_id=account.id,
        backends=BackendRegistry({"openai": backend}),
        images=ImageStore(engine, MediaStore(tmp_path / "media")),
        curations=CurationStore(engine),
        clip_model=None,
    )


async def test_crayon_curation_keeps_the_centred_single_disc(ctx, fake_openai):
    text, artifact = await curate_images(ctx, f"an apple {DISC_TEST}", n=4, style="crayon")
    records = [record for record, _ in artifact.images]
    assert len(records) == 4 and artifact.grid
    curation = await ctx.services.curations.latest_with_image(records[0].id, ctx.turn.user_id)
    by_id = {c.image_id: c for c in curation.candidates}
    # The fake drew candidate k as variant k: 0 off-centre, 1 centred, 2 two discs, 3 grey.
    made = sorted(records, key=lambda r: r.created_at)
    variants = {made[i].id: i for i in range(4)}
    kept = [c for c in curation.candidates if c.verdict == "kept"]
    assert [variants[c.image_id] for c in kept] == [1]
    assert kept[0].rank == 1 and kept[0].decided_by == "scores"
    reasons = {variants[i]: c.reason.lower() for i, c in by_id.items()}
    assert "centr" in reasons[0] and "object" in reasons[2] and "background" in reasons[3]
    # Every candidate has its scores stored, and the tool's text lists ids by rank.
    assert all(len(c.scores) == 5 for c in curation.candidates)
    assert text.index(kept[0].image_id) < text.index(made[0].id)
    assert "Why the others lost" in artifact.caption
    # The crayon template went to the backend.
    sent = fake_openai.requests_to("/images/generations")[-1].json["prompt"]
    assert "crayon" in sent and DISC_TEST in sent


async def test_overruling_is_stored_and_displaces_the_scored_choice(ctx):
    _, artifact = await curate_images(ctx, f"an apple {DISC_TEST}", n=4, style="crayon")
    curation = await ctx.services.curations.latest_with_image(
        artifact.images[0][0].id, ctx.turn.user_id
    )
    first_kept = curation.kept[0].image_id
    third = next(c for c in curation.candidates if c.rank == 3).image_id
    text, _ = await keep_image(ctx, third)
    after = await ctx.services.curations.get(curation.id, ctx.turn.user_id)
    verdicts = {c.image_id: (c.verdict, c.decided_by) for c in after.candidates}
    assert verdicts[third] == ("kept", "user")
    assert verdicts[first_kept] == ("rejected", "user")
    assert "no longer kept" in text
    with pytest.raises(InvalidInput, match="already chose"):
        await keep_image(ctx, first_kept)


async def test_ranking_existing_images_and_checking_one(ctx):
    _, made = await generate_image(ctx, f"{DISC_TEST} disc", n=4)
    ids = [record.id for record, _ in made.images]
    await curate_images(ctx, image_ids=ids, criteria=["centring", "single_object"])
    curation = await ctx.services.curations.latest_with_image(ids[0], ctx.turn.user_id)
    # CLIP is off in this context, so only the named checks rank (and the chat says so).
    assert curation.weights == {"centring": 1.0, "single_object": 1.0}
    assert [c.image_id for c in curation.kept] == [ids[1]]
    text, report = await check_quality(ctx, ids[1], style="crayon")
    assert "passed every check" in text and "background" in report.text
    text, _ = await check_quality(ctx, ids[3], style="crayon")
    assert "failed: background" in text
    stored = await ctx.services.curations.scores_for_image(ids[3], ctx.turn.user_id)
    assert {s.criterion for s in stored} >= {"background", "centring", "single_object"}


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"n": 2, "keep": 3}, "Keep must be from 1 to the number of candidates (2)"),
        ({"n": 0}, "1 to 16 candidates; 0 was asked"),
        ({"n": 500}, "1 to 16 candidates; 500 was asked"),
        ({"criteria": ["prettiness"]}, "Unknown criterion 'prettiness'. Criteria: clip"),
        ({"style": "baroque"}, "no style 'baroque'"),
        ({"prompt": " "}, "Say what to draw"),
    ],
)
async def test_bad_curation_requests_are_refused_before_spending(ctx, fake_openai, kwargs, words):
    with pytest.raises(InvalidInput, match=words.replace("(", r"\(").replace(")", r"\)")):
        await curate_images(ctx, **{"prompt": "an apple", **kwargs})
    assert fake_openai.requests_to("/images/generations") == []


async def test_images_of_another_user_cannot_be_curated(ctx, engine):  # noqa: F811
    _, made = await generate_image(ctx, "a pear", n=2)
    ids = [record.id for record, _ in made.images]
    other = await UserStore(session_factory(engine)).add("mallory", "password-456")
    intruder = tool_context(
        thread_id="9b0f6f6e-98f4-4b3c-9d55-2e0f0c7c1a12",
        user_id=other.id,
        backends=ctx.services.backends,
        images=ctx.services.images,
        curations=ctx.services.curations,
    )
    with pytest.raises(NotFound):
        await curate_images(intruder, image_ids=ids)
    with pytest.raises(NotFound):
        await keep_image(intruder, ids[0])
