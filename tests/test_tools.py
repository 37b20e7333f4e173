"""The image tools against real backends' interface, a real database and media store.

A small in-test diffusion-like backend (seeds, steps, img2img) sits beside the real
OpenAI backend (talking to the fake server), registered through the real registry, so
planning, refusals, notes and lineage are checked on rows read back.
"""

from __future__ import annotations

import hashlib
import io
from decimal import Decimal

import pytest
from PIL import Image

from core.errors import InvalidInput
from memory.db import session_factory
from memory.images import ImageStore
from memory.media_store import MediaStore
from memory.users import UserStore
from pipelines.images.base import (
    Capabilities,
    GeneratedImage,
    ImageRequest,
    ImageResult,
    SizeRange,
    check_request,
)
from pipelines.images.openai_images import OpenAIImages
from pipelines.images.registry import BackendRegistry
from tests.db_fixtures import db_url, engine  # noqa: F401, F811 - fixtures
from tests.tool_helpers import tool_context, with_services, with_turn
from tools.context import GenerationDefaults
from tools.edit_image import edit_image
from tools.fork_image import fork_image
from tools.generate_image import generate_image
from tools.refine_prompt import refine_prompt
from tools.variations import variations

THREAD = "8a0f6f6e-98f4-4b3c-9d55-2e0f0c7c1a11"


class SeededBackend:
    """Deterministic: the picture depends only on prompt, seed, size and input image."""

    id = "seeded"
    label = "Seeded"
    default_model = "toy-v1"

    def __init__(self, can_edit: bool = True) -> None:
        self.requests: list[ImageRequest] = []
        self.can_edit = can_edit
        self.edit_model = None

    def capabilities(self, model: str | None = None) -> Capabilities:
        return Capabilities(
            sizes=("512x512", "768x768"),
            size_range=SizeRange(64, 1024, 8),
            max_n=4,
            seed=True,
            negative_prompt=True,
            steps=True,
            guidance=True,
            strength=True,
            edit="img2img" if self.can_edit and model != "no-edit" else "none",
            max_input_images=1,
        )

    def suggested_models(self) -> list[str]:
        return [self.default_model, "no-edit"]

    async def generate(self, request: ImageRequest, progress=None) -> ImageResult:
        request = check_request(self, request)
        self.requests.append(request)
        width, height = request.width_height
        base = 1000 if request.seed is None else request.seed
        images = []
        for index in range(request.n):
            seed = base + index
            digest = hashlib.sha256(
                f"{request.prompt}|{seed}|{request.size}".encode()
                + (request.images[0].data if request.images else b"")
            ).digest()
            buffer = io.BytesIO()
            Image.new("RGB", (width, height), tuple(digest[:3])).save(buffer, "PNG")
            images.append(GeneratedImage(buffer.getvalue(), "image/png", width, height, seed))
        return ImageResult(
            images=images,
            backend=self.id,
            model=request.model,
            prompt_sent=request.prompt,
            parameters={"steps": request.steps},
            seed_honoured=True,
        )


@pytest.fixture
async def world(tmp_path, fake_openai, engine):  # noqa: F811
    """Each test runs on SQLite and on the PostgreSQL server (db_fixtures' `engine`)."""
    account = await UserStore(session_factory(engine)).add("eve", "password-123")
    seeded = SeededBackend()
    registry = BackendRegistry(
        {"seeded": seeded, "openai": OpenAIImages("sk-test", "gpt-image-1.5", fake_openai.base_url)}
    )
    ctx = tool_context(
        thread_id=THREAD,
        user_id=account.id,
        backends=registry,
        images=ImageStore(engine, MediaStore(tmp_path / "media")),
        defaults=GenerationDefaults(backend="seeded"),
    )
    yield ctx, seeded


async def test_panel_defaults_apply_and_misfits_are_noted_not_refused(world):
    ctx, seeded = world
    ctx = with_turn(
        ctx, defaults=GenerationDefaults(backend="seeded", size="768x768", steps=7, seed=5)
    )
    _, artifact = await generate_image(ctx, "a lantern")
    record = artifact.images[0][0]
    assert (record.width, record.seed) == (768, 5) and seeded.requests[-1].steps == 7
    # The same panel applied to OpenAI: steps and 768x768 do not fit, so they are noted.
    text, artifact = await generate_image(ctx, "a lantern", backend="openai")
    assert "steps setting (7) does not apply" in text and "size setting (768x768)" in text
    assert artifact.images[0][0].width == 1024


async def test_explicit_arguments_a_model_cannot_honour_are_refused(world):
    ctx, _ = world
    with pytest.raises(InvalidInput, match="does not take a step count"):
        await generate_image(ctx, "a lantern", steps=4, backend="openai")
    with pytest.raises(InvalidInput, match="Valid sizes: 512x512, 768x768"):
        await generate_image(ctx, "a lantern", size="4096x4096")
    with pytest.raises(InvalidInput, match="Unknown image backend 'nope'"):
        await generate_image(ctx, "a lantern", backend="nope")


async def test_edit_variations_fork_keep_lineage_and_seeds(world):
    ctx, seeded = world
    _, made = await generate_image(ctx, "a red barn", seed=11)
    first = made.images[0][0]
    _, edited = await edit_image(ctx, "make it bluer")
    edit = edited.images[0][0]
    assert edit.parent_id == first.id and edited.before[0][0].id == first.id
    # img2img backends get the source prompt with the instruction appended.
    assert seeded.requests[-1].prompt == "a red barn. make it bluer"
    assert seeded.requests[-1].images[0].image_id == first.id
    _, varied = await variations(ctx, edit.id, n=3)
    seeds = [record.seed for record, _ in varied.images]
    assert len(set(seeds)) == 3 and {r.parent_id for r, _ in varied.images} == {edit.id}
    assert seeded.requests[-1].images[0].image_id == first.id  # replays the edit
    _, forked = await fork_image(ctx, first.id, size="512x512")
    fork = forked.images[0][0]
    assert fork.parent_id == first.id and fork.seed == 11 and fork.width == 512
    # Same seed and parameters → the same image (the local-backend promise, here in small).
    _, again = await fork_image(ctx, first.id)
    assert again.images[0][1] != made.images[0][1]  # metadata differs (new id) ...
    assert again.images[0][0].seed == first.seed and again.images[0][0].width == first.width


async def test_edit_on_a_model_that_cannot_edit_names_those_that_can(world):
    ctx, _ = world
    await generate_image(ctx, "a red barn")
    with pytest.raises(InvalidInput, match="cannot edit images. Backends that can: seeded"):
        await edit_image(ctx, "make it bluer", backend="seeded:no-edit")


async def test_edit_without_any_image_says_so(world):
    ctx, _ = world
    with pytest.raises(InvalidInput, match="no image yet"):
        await edit_image(ctx, "make it bluer")


async def test_refine_shows_both_and_records_the_rewrite_as_sent(world):
    ctx, seeded = world

    async def rewriter(instructions: str, prompt: str) -> str:
        assert "crayon" in instructions.lower()
        return f'  "{prompt}, drawn in wax crayon on white paper"  '

    ctx = with_services(ctx, rewrite=rewriter)
    _, artifact = await refine_prompt(ctx, "a red apple", style="crayon")
    record = artifact.images[0][0]
    assert record.prompt_typed == "a red apple"
    assert record.prompt_sent == "a red apple, drawn in wax crayon on white paper"
    assert "**Original:** a red apple" in artifact.text and "crayon" in artifact.text
    assert seeded.requests[-1].negative_prompt.startswith("photo, realistic")
    with pytest.raises(InvalidInput, match="no style 'baroque'. Styles: crayon"):
        await refine_prompt(ctx, "a red apple", style="baroque")


async def test_refine_without_a_chat_model_applies_the_template(world):
    ctx, _ = world
    text, artifact = await refine_prompt(ctx, "a teapot", style="line-art", generate=False)
    assert "a teapot, clean black ink line art" in text and not artifact.images


async def test_images_of_other_users_are_not_found(world):
    ctx, _ = world
    _, made = await generate_image(ctx, "a red barn")
    other = tool_context(
        thread_id="9b0f6f6e-98f4-4b3c-9d55-2e0f0c7c1a12",
        user_id="00000000-0000-4000-8000-000000000000",
        backends=ctx.services.backends,
        images=ctx.services.images,
        defaults=ctx.turn.defaults,
    )
    with pytest.raises(Exception, match="No image"):
        await fork_image(other, made.images[0][0].id)


async def test_transparent_webp_through_the_tool(world):
    ctx, _ = world
    _, artifact = await generate_image(
        ctx, "a sticker of a cat", background="transparent", output_format="webp", backend="openai"
    )
    record, stored = artifact.images[0]
    assert (
        record.mime == "image/webp" and record.parameters["request"]["background"] == "transparent"
    )
    with Image.open(io.BytesIO(stored)) as image:
        assert image.format == "WEBP" and image.mode == "RGBA"
    with pytest.raises(InvalidInput, match="does not take a background"):
        await generate_image(ctx, "a sticker", background="transparent")


async def test_actual_cost_is_recorded_from_the_providers_usage(world):
    from pipelines.catalogue.pricing import PriceTable

    ctx, _ = world
    ctx = with_services(ctx, prices=PriceTable.load())
    _, artifact = await generate_image(ctx, "a kite", n=2, quality="high", backend="openai")
    first, second = (record for record, _ in artifact.images)
    cost = first.parameters["cost"]
    assert cost["source"] == "reported" and not cost["unpriced"]
    # Exact shares of the reported total (the first carries any odd micro-dollar).
    assert first.cost_usd + second.cost_usd == Decimal(cost["usd"])
    assert 0 <= first.cost_usd - second.cost_usd <= Decimal("0.000001")
    again = await ctx.services.images.get(first.id, ctx.turn.user_id)
    assert again.cost_usd == first.cost_usd > 0
    # A backend the table does not know is recorded as unpriced, not as free.
    _, artifact = await generate_image(ctx, "a kite", backend="seeded")
    record = artifact.images[0][0]
    assert record.cost_usd is None and record.parameters["cost"]["unpriced"]
