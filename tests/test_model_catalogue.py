"""The model catalogue: dates as data, nothing sent to a retired model, a clock tests set.

Requests go through the real tools, ledger and price table to the fake OpenAI server
(the real client), on SQLite and PostgreSQL; the catalogue's clock is fixed, so these
tests say the same thing on any day.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import pytest

from chat_app import settings_panel
from chat_app.model_status import require_chat_model, statuses
from chat_app.settings import Settings
from core.errors import ConfigError, ModelRetired, ModelUnavailable
from memory.db import session_factory
from memory.images import ImageStore
from memory.ledger import Ledger, OperatorLimits
from memory.media_store import MediaStore
from memory.users import UserStore
from pipelines.catalogue.model_catalogue import BUILTIN_FILE, ModelCatalogue, fixed_clock
from pipelines.catalogue.pricing import PriceTable
from pipelines.images.openai_images import OpenAIImages
from pipelines.images.registry import BackendRegistry
from tests.db_fixtures import db_url, engine  # noqa: F401, F811 - fixtures
from tests.tool_helpers import ChatRecorder, ledger_entries, tool_context, with_services
from tools.context import GenerationDefaults, ToolContext
from tools.estimate_cost import estimate_cost
from tools.generate_image import generate_image

THREAD = "6d2e3f4a-98f4-4b3c-9d55-2e0f0c7c1a11"
EVE = dt.date(2026, 11, 30)
SHUTDOWN = dt.date(2026, 12, 1)


def catalogue_on(day: dt.date) -> ModelCatalogue:
    return ModelCatalogue.load(clock=fixed_clock(day))


# ------------------------------------------------------------------- the data itself
def test_every_row_says_where_its_dates_come_from_and_when_it_was_read() -> None:
    raw = tomllib.loads(BUILTIN_FILE.read_text())["model"]
    assert raw and all(row["source"] and row["checked"] for row in raw)
    catalogue = catalogue_on(EVE)
    for name in ("gpt-image-1.5", "gpt-image-1-mini", "chatgpt-image-latest"):
        entry = catalogue.find("openai", name)
        assert entry is not None
        assert (entry.deprecated, entry.shutdown, entry.replacement) == (
            dt.date(2026, 6, 2),
            SHUTDOWN,
            "gpt-image-2",
        )
    assert catalogue.find("openai", "gpt-image-2").released == dt.date(2026, 4, 21)
    # A dated snapshot is the same model.
    assert catalogue.find("openai", "gpt-image-2-2026-04-21").id == "gpt-image-2"


def test_the_defaults_are_live_models_with_prices() -> None:
    settings = Settings(_env_file=None)
    catalogue = catalogue_on(EVE)
    prices = PriceTable.load()
    assert settings.image_model == "gpt-image-2"
    assert catalogue.status("openai", settings.image_model).state == "live"
    assert catalogue.status("openai", settings.llm_model).state == "live"
    for model in catalogue.live("openai", "image"):
        if catalogue.status("openai", model).state == "live":
            estimate = prices.estimate("openai", model, quality="low", size="1024x1024")
            assert not estimate.unpriced, model


def test_states_follow_the_clock() -> None:
    assert catalogue_on(EVE).status("openai", "gpt-image-1.5").state == "retiring"
    assert catalogue_on(SHUTDOWN).status("openai", "gpt-image-1.5").state == "retired"
    assert catalogue_on(dt.date(2026, 10, 1)).status("openai", "gpt-image-1.5").state == "live"
    assert catalogue_on(EVE).status("openai", "dall-e-3").state == "retired"
    assert catalogue_on(EVE).status("replicate", "acme/new-model").state == "unknown"
    warning = catalogue_on(EVE).status("openai", "gpt-image-1.5").warning()
    assert warning == (
        "gpt-image-1.5 shuts down on 2026-12-01 (tomorrow); switch to gpt-image-2 with "
        "`/backend openai:gpt-image-2`."
    )
    assert catalogue_on(SHUTDOWN).live("openai", "image")[-1] == "gpt-image-2"
    assert "gpt-image-1.5" not in catalogue_on(SHUTDOWN).live("openai", "image")


# --------------------------------------------------------------------- bad operator rows
GOOD = """
[[model]]
backend = "openai"
kind = "image"
id = "house-model"
released = "2026-01-01"
source = "our notes"
checked = "2026-11-30"
"""


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (
            GOOD.replace('checked = "2026-11-30"', 'checked = "2026-11-30"\nvendor = "x"'),
            "unknown field(s) vendor",
        ),
        (
            GOOD.replace(
                'released = "2026-01-01"', 'released = "2026-01-01"\nshutdown = "2025-06-01"'
            ),
            "shutdown 2025-06-01 on or before its release 2026-01-01",
        ),
        (GOOD.replace('source = "our notes"\n', ""), "missing source"),
        (GOOD.replace('checked = "2026-11-30"\n', ""), "missing checked"),
        (GOOD.replace('kind = "image"', 'kind = "sound"'), "kind 'sound'"),
        (GOOD.replace('released = "2026-01-01"', 'released = "Jan 2026"'), "YYYY-MM-DD"),
        (GOOD + 'replacement = "no-such-model"\n', "replacement 'no-such-model'"),
        (GOOD + 'aliases = ["gpt-image-2"]\n', "already used by gpt-image-2"),
    ],
)
def test_a_bad_row_is_refused_naming_file_line_and_reason(tmp_path, row, reason) -> None:
    path = tmp_path / "my-models.toml"
    path.write_text("# our own models\n" + row)
    with pytest.raises(ConfigError) as caught:
        ModelCatalogue.load(path)
    assert str(path) in caught.value.message
    assert "line 3" in caught.value.message or "already used" in reason
    assert reason in caught.value.message


def test_an_operator_row_replaces_a_builtin_one(tmp_path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(
        '[[model]]\nbackend = "openai"\nkind = "image"\nid = "gpt-image-2"\n'
        'shutdown = "2027-01-15"\nreplacement = "gpt-image-2.6-flare"\n'
        'source = "our account manager"\nchecked = "2026-11-30"\n'
    )
    catalogue = ModelCatalogue.load(path, clock=fixed_clock("2027-01-01"))
    status = catalogue.status("openai", "gpt-image-2")
    assert status.state == "retiring" and status.replacement == "gpt-image-2.6-flare"


# ------------------------------------------------------------------- through the tools
@pytest.fixture
async def world(tmp_path: Path, fake_openai, engine):  # noqa: F811
    account = await UserStore(session_factory(engine)).add("kim", "password-123")
    chat = ChatRecorder()

    def context(day: dt.date, model: str = "gpt-image-2") -> ToolContext:
        registry = BackendRegistry(
            {"openai": OpenAIImages("sk-test", model, fake_openai.base_url, max_retries=0)},
            catalogue_on(day),
        )
        return tool_context(
            thread_id=THREAD,
            user_id=account.id,
            backends=registry,
            images=ImageStore(engine, MediaStore(tmp_path / "media")),
            defaults=GenerationDefaults(backend="openai"),
            prices=PriceTable.load(),
            ledger=Ledger(engine),
            operator_limits=OperatorLimits(confirm_above_usd=Decimal("1.00")),
            port=chat,
        )

    yield context, chat, engine


async def test_a_retiring_model_works_with_a_warning_then_is_refused(world, fake_openai):
    context, chat, db = world
    eve = context(EVE, model="gpt-image-1.5")
    text, artifact = await generate_image(eve, "a lantern", quality="low")
    assert "shuts down on 2026-12-01 (tomorrow)" in text
    assert any("`/backend openai:gpt-image-2`" in note for note in artifact.notes)
    assert fake_openai.requests_to("/images/generations")[0].json["model"] == "gpt-image-1.5"
    assert len(await ledger_entries(db)) == 1

    day = context(SHUTDOWN, model="gpt-image-1.5")
    announced = len(chat.announced)
    for call in (
        generate_image(day, "a lantern"),
        generate_image(day, "a lantern", backend="openai:gpt-image-1-mini"),
        estimate_cost(day, n=4),
    ):
        with pytest.raises(ModelRetired) as caught:
            await call
        assert "shut down by its provider on 2026-12-01" in caught.value.message
        assert "`/backend openai:gpt-image-2`" in caught.value.message
    # Nothing was priced, announced, reserved or sent.
    assert len(fake_openai.requests_to("/images/generations")) == 1
    assert len(await ledger_entries(db)) == 1 and len(chat.announced) == announced


async def test_the_default_reaches_the_provider_as_gpt_image_2_priced_by_its_tokens(
    world, fake_openai
):
    context, _, db = world
    ctx = context(SHUTDOWN)  # the day after: the default is unaffected
    _, artifact = await generate_image(ctx, "a red kite over the sea", quality="low")
    [sent] = fake_openai.requests_to("/images/generations")
    assert sent.json["model"] == "gpt-image-2"
    usage = artifact.images[0][0].parameters["usage"]
    # OpenAI's gpt-image-2 rates: text in $5/M, image in $8/M, image out $30/M.
    expected = (
        Decimal(usage["input_tokens_details"]["text_tokens"]) * Decimal("5") / 10**6
        + Decimal(usage["input_tokens_details"]["image_tokens"]) * Decimal("8") / 10**6
        + Decimal(usage["output_tokens"]) * Decimal("30") / 10**6
    ).quantize(Decimal("0.000001"))
    [entry] = await ledger_entries(db)
    assert (entry.status, entry.source) == ("settled", "reported")
    assert Decimal(entry.actual_usd) == expected


async def test_a_provider_model_not_found_names_the_catalogues_replacement(world, fake_openai):
    context, _, db = world
    fake_openai.gone_models = {"gpt-image-1.5"}  # OpenAI withdrew it a day early
    ctx = context(EVE, model="gpt-image-1.5")
    with pytest.raises(ModelUnavailable) as caught:
        await generate_image(ctx, "a lantern", quality="low")
    message = caught.value.message
    assert "does not offer the image model gpt-image-1.5" in message
    assert "catalogue suggests gpt-image-2: switch with `/backend openai:gpt-image-2`" in message
    [entry] = await ledger_entries(db)
    assert entry.status == "released"


# ------------------------------------------------------------------ panel and chat model
def _runtime(day: dt.date, **env: str) -> SimpleNamespace:
    settings = Settings(_env_file=None, openai_api_key="sk-test", **env)
    registry = BackendRegistry(
        {"openai": OpenAIImages("sk-test", settings.image_model, "http://127.0.0.1:9/v1")},
        catalogue_on(day),
    )
    return SimpleNamespace(settings=settings, services=SimpleNamespace(backends=registry))


def test_the_settings_panel_offers_only_live_models() -> None:
    for day, listed in ((EVE, True), (SHUTDOWN, False)):
        runtime = _runtime(day)
        model_widget = next(
            w for w in settings_panel.widgets(runtime, GenerationDefaults()) if w.id == "model"
        )
        assert "gpt-image-2" in model_widget.description
        assert ("gpt-image-1.5" in model_widget.description) is listed
    with pytest.raises(ModelRetired, match="`/backend openai:gpt-image-2`"):
        settings_panel.parse(_runtime(SHUTDOWN), {"backend": "openai", "model": "gpt-image-1.5"})
    parsed = settings_panel.parse(_runtime(SHUTDOWN), {"backend": "openai", "model": "gpt-image-2"})
    assert parsed.model == "gpt-image-2"


def test_a_retired_chat_model_is_refused_and_doctor_lines_say_why() -> None:
    runtime = _runtime(dt.date(2026, 12, 11), llm_model="gpt-5-mini")
    with pytest.raises(ModelRetired) as caught:
        require_chat_model(runtime.services.backends.catalogue, runtime.settings)
    assert "ATELIER_LLM_MODEL=gpt-6.1-terra" in caught.value.message
    lines = {
        configured.role: status.summary()
        for configured, status in statuses(catalogue_on(EVE), runtime.settings)
    }
    assert lines == {
        "chat model": "retiring on 2026-12-11 → gpt-6.1-terra",
        "image model": "live",
    }


async def test_an_estimate_for_a_named_model_follows_the_catalogue_without_credentials(
    world, fake_openai
):
    """/estimate prices a model even where its backend has no key; not a retired one."""
    context, _, _ = world
    for day in (EVE, SHUTDOWN):
        no_key = BackendRegistry({}, catalogue_on(day))  # no OpenAI key here
        ctx = with_services(context(day), backends=no_key)
        call = estimate_cost(ctx, n=4, quality="low", backend="openai:gpt-image-1.5")
        if day == EVE:
            text, _ = await call
            assert "Estimated cost of 4 × openai gpt-image-1.5" in text
            assert "shuts down on 2026-12-01 (tomorrow)" in text
        else:
            with pytest.raises(ModelRetired, match="`/backend openai:gpt-image-2`"):
                await call
    assert fake_openai.requests_to("/images/generations") == []
