"""The price table and its arithmetic: every priced row, reported usage, user files.

Expected figures are worked out here from the raw TOML (read with tomllib, not with the
module under test), so a parser that misread a row would show up as a wrong sum.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest

from core.errors import ConfigError, InvalidInput
from pipelines.catalogue.pricing import BUILTIN_FILE, PriceTable

RAW = tomllib.loads(BUILTIN_FILE.read_text(encoding="utf-8"), parse_float=Decimal)
HARDWARE = {(h["backend"], h["name"]): Decimal(h["amount_usd"]) for h in RAW["hardware"]}
CHARGED_ROWS = [row for row in RAW["price"] if row["unit"] != "token"]
TOKEN_ROWS = [row for row in RAW["price"] if row["unit"] == "token"]


def usd(value: Decimal) -> Decimal:
    """Whole micro-dollars, rounded half-up: what the module promises to hand out."""
    return value.quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP)


def money(value: Decimal) -> str:
    whole, _, cents = f"{value.normalize():f}".partition(".")
    return f"${whole}.{cents.ljust(2, '0')}"


def per_unit(row: dict[str, Any]) -> str:
    return {"run": " per run", "video": " per video"}.get(row["unit"], "")


def row_id(row: dict[str, Any]) -> str:
    options = [row.get(k) for k in ("quality", "size_class", "token_kind", "hardware")]
    return ":".join([row["backend"], row["model"], row["unit"], *filter(None, options)])


def concrete(model: str) -> str:
    """A model name a glob row matches ("*" -> "some/model")."""
    return model.replace("*", "some/model")


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable.load()


def test_the_builtin_table_prices_the_models_in_use(table: PriceTable) -> None:
    models = {(row["backend"], row["model"]) for row in RAW["price"]}
    in_use = {
        ("openai", "gpt-image-1.5"),
        ("openai", "gpt-image-1-mini"),
        ("openai", "gpt-image-2*"),
        *(
            ("replicate", f"black-forest-labs/{name}")
            for name in (
                "flux-schnell",
                "flux-dev",
                "flux-1.1-pro",
                "flux-1.1-pro-ultra",
                "flux-kontext-pro",
                "flux-kontext-max",
            )
        ),
        ("replicate", "stability-ai/sdxl"),
        ("replicate", "google/imagen-4"),
        ("replicate", "google/imagen-4-fast"),
        ("replicate", "google/imagen-4-ultra"),
        ("replicate", "ideogram-ai/ideogram-v3-turbo"),
        ("replicate", "ideogram-ai/ideogram-v3-balanced"),
        ("replicate", "ideogram-ai/ideogram-v3-quality"),
        ("replicate", "minimax/video-01"),
        ("local", "*"),
    }
    assert in_use <= models
    assert all(row["source"] and row["date"] for row in RAW["price"] + RAW["hardware"])
    assert {name for _, name in HARDWARE} == {"H100", "A100-80GB", "L40S"}
    assert len(table.rows()) == len(RAW["price"])


@pytest.mark.parametrize("row", CHARGED_ROWS, ids=row_id)
def test_every_priced_row_estimates_to_its_own_arithmetic(
    table: PriceTable, row: dict[str, Any]
) -> None:
    n = 3
    model = concrete(row["model"])
    if row["unit"] == "second":
        rate = (
            HARDWARE[(row["backend"], row["hardware"])]
            if "hardware" in row
            else Decimal(row["amount_usd"]) / Decimal(row.get("per", 1))
        )
        given = table.estimate(row["backend"], model, n=n, seconds=7.25)
        assert given.usd == usd(Decimal("7.25") * rate)
        typical = table.estimate(row["backend"], model, n=n)
        if rate:
            assert typical.usd == usd(n * Decimal(row["typical_seconds"]) * rate)
            assert "typical" in typical.lines[0]
        else:
            assert typical.usd == 0 and "rate 0 → free" in typical.lines[0]
        estimates = [given, typical]
    else:
        count = 1 if row["unit"] == "run" else n
        each = Decimal(row["amount_usd"]) / Decimal(row.get("per", 1))
        estimate = table.estimate(
            row["backend"], model, n=n, quality=row.get("quality"), size=row.get("size_class")
        )
        assert estimate.usd == usd(count * each)
        assert estimate.lines[0].startswith(f"{count} × {model}")
        assert estimate.lines[0].endswith(
            f" at {money(each)}{per_unit(row)} = {money(usd(count * each))}"
        )
        estimates = [estimate]
    for estimate in estimates:
        assert not estimate.unpriced and estimate.source == "table"
        assert [(r.backend, r.model, r.unit) for r in estimate.rows] == [
            (row["backend"], row["model"], row["unit"])
        ]
        assert estimate.rows[0].quality == row.get("quality")
        assert estimate.rows[0].size_class == row.get("size_class")


def test_the_line_reads_like_a_receipt(table: PriceTable) -> None:
    estimate = table.estimate("openai", "gpt-image-1.5", n=4, quality="high", size="1024x1024")
    assert estimate.lines == ["4 × gpt-image-1.5 high 1024x1024 at $0.133 = $0.532"]
    assert estimate.usd == Decimal("0.532") and estimate.micro_usd == 532_000


def test_a_portrait_size_takes_the_1536_price(table: PriceTable) -> None:
    estimate = table.estimate("openai", "gpt-image-1.5", n=2, quality="medium", size="1024x1536")
    assert estimate.usd == Decimal("0.102")
    assert estimate.lines[0] == "2 × gpt-image-1.5 medium 1024x1536 at $0.051 = $0.102"


def test_quality_and_size_auto_are_priced_at_the_dearest_tier(table: PriceTable) -> None:
    estimate = table.estimate("openai", "gpt-image-1.5", n=2, quality="auto", size="auto")
    assert estimate.usd == Decimal("0.400")
    assert estimate.rows[0].quality == "high"
    assert any("dearest tier (conservative)" in line for line in estimate.lines)
    assert any("dearest size (conservative)" in line for line in estimate.lines)
    one_size = table.estimate("openai", "gpt-image-1-mini", quality=None, size="1024x1024")
    assert one_size.usd == Decimal("0.036")


def test_unknown_models_and_options_are_flagged_not_free(table: PriceTable) -> None:
    for estimate in (
        table.estimate("replicate", "acme/brand-new-model"),
        table.estimate("openai", "gpt-image-9"),
        table.estimate("openai", "gpt-image-2", quality="xhigh", size="2048x2048"),
        table.estimate("openai", "gpt-image-1.5", quality="ultra", size="1024x1024"),
        table.estimate("video", "anything"),
    ):
        assert estimate.unpriced and estimate.usd == 0
        assert estimate.lines[0].startswith("no price known for ")
    cost = table.actual("replicate", "acme/brand-new-model", n=2, metrics={"predict_time": 4})
    assert cost.unpriced and cost.usd == 0 and "no price known" in cost.lines[-1]


def test_a_replicate_version_is_priced_as_its_model(table: PriceTable) -> None:
    versioned = "black-forest-labs/flux-dev:" + "0123456789abcdef" * 4
    assert table.estimate("replicate", versioned, n=2).usd == Decimal("0.05")


def test_openai_usage_is_priced_by_its_tokens(table: PriceTable) -> None:
    usage = {
        "input_tokens": 1_250,
        "input_tokens_details": {"text_tokens": 50, "image_tokens": 1_200},
        "output_tokens": 8_320,
        "total_tokens": 9_570,
    }
    rates = {
        row["token_kind"]: Decimal(row["amount_usd"]) / Decimal(row["per"])
        for row in TOKEN_ROWS
        if row["model"] == "gpt-image-1.5"
    }
    expected = (
        usd(50 * rates["text_in"])
        + usd(1_200 * rates["image_in"])
        + usd(8_320 * rates["image_out"])
    )
    cost = table.actual("openai", "gpt-image-1.5", n=2, quality="high", usage=usage)
    assert cost.source == "reported" and not cost.unpriced
    assert cost.usd == expected == Decimal("0.27609")
    assert "50 text-in tokens at $5.00/M = $0.00025" in cost.lines
    assert "8,320 image-out tokens at $32.00/M = $0.26624" in cost.lines


def test_usage_without_the_input_split_takes_the_dearer_input_rate(table: PriceTable) -> None:
    usage = {"input_tokens": 1_000, "output_tokens": 272, "total_tokens": 1_272}
    cost = table.actual("openai", "gpt-image-1.5", usage=usage)
    assert cost.source == "reported"
    assert cost.usd == usd(1_000 * Decimal("0.000008") + 272 * Decimal("0.000032"))
    assert "split not reported" in cost.lines[0]


def test_usage_for_a_model_without_token_prices_falls_back_to_the_table(
    table: PriceTable,
) -> None:
    usage = {"input_tokens": 10, "output_tokens": 272, "total_tokens": 282}
    cost = table.actual(
        "openai", "gpt-image-1-mini", quality="low", size="1024x1024", usage=usage
    )
    assert cost.source == "table" and cost.usd == Decimal("0.005")
    assert "no token prices for gpt-image-1-mini" in cost.lines[0]


def test_replicate_predict_time_prices_a_time_billed_model(table: PriceTable) -> None:
    cost = table.actual("replicate", "stability-ai/sdxl", n=1, metrics={"predict_time": 3.2})
    assert cost.source == "reported"
    assert cost.usd == usd(Decimal("3.2") * HARDWARE[("replicate", "L40S")])
    assert cost.usd == Decimal("0.00312")
    assert "3.2 s of GPU time on L40S (predict_time reported by replicate)" in cost.lines[0]


def test_each_source_says_where_the_figure_came_from(table: PriceTable) -> None:
    per_output = table.actual(
        "replicate", "black-forest-labs/flux-schnell", n=4, metrics={"predict_time": 0.8}
    )
    assert (per_output.source, per_output.usd) == ("table", Decimal("0.012"))
    no_time = table.actual("replicate", "stability-ai/sdxl", n=2, metrics={})
    assert no_time.source == "estimate"
    assert no_time.usd == usd(2 * Decimal("6.5") * HARDWARE[("replicate", "L40S")])
    exact = table.actual("openai", "gpt-image-1.5", n=2, quality="low", size="1024x1024")
    assert (exact.source, exact.usd) == ("table", Decimal("0.018"))
    assumed = table.actual("openai", "gpt-image-1.5", n=1, quality="auto", size="1024x1024")
    assert (assumed.source, assumed.usd) == ("estimate", Decimal("0.133"))


def test_local_time_is_free_unless_a_rate_is_set(table: PriceTable) -> None:
    assert table.local_usd_per_gpu_second == 0
    free = table.estimate("local", "stabilityai/sd-turbo", n=2)
    assert free.usd == 0 and not free.unpriced and "rate 0 → free" in free.lines[0]
    measured = table.actual("local", "stabilityai/sd-turbo", gpu_seconds=12.5)
    assert measured.source == "reported" and measured.usd == 0

    paid = PriceTable.load(local_usd_per_gpu_second="0.0004")
    assert paid.local_usd_per_gpu_second == Decimal("0.0004")
    assert paid.estimate("local", "stabilityai/sd-turbo", seconds=30).usd == Decimal("0.012")
    assert paid.actual("local", "x", gpu_seconds=12.5).usd == Decimal("0.005")
    with pytest.raises(ConfigError, match="local_usd_per_gpu_second"):
        PriceTable.load(local_usd_per_gpu_second=-1)


def test_bad_arguments_are_refused(table: PriceTable) -> None:
    with pytest.raises(InvalidInput, match="n must be"):
        table.estimate("openai", "gpt-image-1.5", n=-1)
    with pytest.raises(InvalidInput, match="seconds"):
        table.estimate("local", "x", seconds=-3)


USER_FILE = """\
# my own prices
[[price]]
backend = "openai"
model = "gpt-image-1.5"
unit = "image"
quality = "high"
size_class = "1024x1024"
amount_usd = 0.12
source = "my invoice"
date = 2026-06-01

[[price]]
backend = "replicate"
model = "acme/*"
unit = "image"
amount_usd = 0.01
source = "acme's page"
date = "2026-06"

[[price]]
backend = "replicate"
model = "stability-ai/sdxl"
unit = "image"
amount_usd = 0.005
source = "flat price I negotiated"
date = "2026"

[[hardware]]
backend = "replicate"
name = "8xH100"
amount_usd = 0.0122
source = "replicate.com/pricing"
date = "2026"

[[price]]
backend = "replicate"
model = "ostris/flux-dev-lora-trainer"
unit = "second"
hardware = "8xH100"
typical_seconds = 1200
source = "trainer page"
date = "2026"

[[price]]
backend = "local"
model = "*"
unit = "second"
amount_usd = 36
per = 3600
source = "my electricity"
date = "2026"
"""


def test_a_user_file_overrides_and_extends(tmp_path: Path) -> None:
    user = tmp_path / "prices.toml"
    user.write_text(USER_FILE)
    table = PriceTable.load(user)
    override = table.estimate("openai", "gpt-image-1.5", n=2, quality="high", size="1024x1024")
    assert override.usd == Decimal("0.24") and override.rows[0].source == "my invoice"
    untouched = table.estimate("openai", "gpt-image-1.5", quality="high", size="1536x1024")
    assert untouched.usd == Decimal("0.200")
    assert table.estimate("replicate", "acme/anything", n=3).usd == Decimal("0.03")
    # a user row billing sdxl per image replaces the built-in time-billed row
    sdxl = table.actual("replicate", "stability-ai/sdxl", n=2, metrics={"predict_time": 9})
    assert (sdxl.source, sdxl.usd) == ("table", Decimal("0.01"))
    # a new time-billed model on new hardware: rows only, no code
    training = table.actual(
        "replicate", "ostris/flux-dev-lora-trainer", metrics={"predict_time": 600}
    )
    assert (training.source, training.usd) == ("reported", Decimal("7.32"))
    assert table.estimate("replicate", "ostris/flux-dev-lora-trainer").usd == Decimal("14.64")
    assert table.local_usd_per_gpu_second == Decimal("0.01")
    # sdxl's way of billing replaced; the trainer's built-in row (prices.toml) replaced too
    assert len(table.rows()) == len(RAW["price"]) + 3 - 2


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad-prices.toml"
    path.write_text(text)
    return path


GOOD_ROW = """\
[[price]]
backend = "replicate"
model = "acme/ok"
unit = "image"
amount_usd = 0.01
source = "page"
date = "2026"
"""


def _bad_row(**fields: Any) -> str:
    """A [[price]] row at line 10 (after a good row and a blank line)."""
    row = {
        "backend": '"replicate"',
        "model": '"acme/bad"',
        "unit": '"image"',
        "amount_usd": "0.02",
        "source": '"page"',
        "date": '"2026-05"',
    }
    row.update(fields)
    body = "".join(f"{k} = {v}\n" for k, v in row.items() if v is not None)
    return GOOD_ROW + "\n# the next row is wrong\n[[price]]\n" + body


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        (_bad_row(amount_usd=None), 10, "has no amount_usd"),
        (_bad_row(amount_usd="-0.02"), 10, "must be a finite number >= 0"),
        (_bad_row(amount_usd='"0.02"'), 10, "must be a number, not a str"),
        (_bad_row(amount_usd="nan"), 10, "must be a finite number >= 0"),
        (_bad_row(unit='"megapixel"'), 10, "unknown unit 'megapixel'"),
        (_bad_row(date='"2026-13"'), 10, "has date '2026-13'"),
        (_bad_row(date='"May 2026"'), 10, "write YYYY, YYYY-MM or YYYY-MM-DD"),
        (_bad_row(date=None), 10, "is missing date"),
        (_bad_row(source=None), 10, "is missing source"),
        (_bad_row(model='"acme/ok"', amount_usd="0.03"), 10, "duplicates the one at line 1"),
        (_bad_row(ammount_usd="0.02"), 10, "unknown field(s) ammount_usd"),
        (_bad_row(unit='"token"'), 10, 'token_kind exactly when unit is "token"'),
        (_bad_row(size_class='"big"'), 10, "WIDTHxHEIGHT"),
        (_bad_row(confidence='"sure"'), 10, "confidence 'sure'"),
        (_bad_row(unit='"second"', amount_usd=None, hardware='"TPU"'), 10, "hardware 'TPU'"),
        (
            _bad_row(model='"acme/ok"', unit='"second"', typical_seconds="3"),
            10,
            "bills acme/ok per second, but the row at line 1 bills it per image",
        ),
        (GOOD_ROW + "\n[[prices]]\nmodel = 'x'\n", 9, "unknown entry 'prices'"),
    ],
    ids=lambda value: value if isinstance(value, str) and len(value) < 60 else None,
)
def test_bad_price_files_name_file_line_and_reason(
    tmp_path: Path, text: str, line: int, reason: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        PriceTable.load(path)
    message = str(error.value)
    assert f"{path}, line {line}:" in message
    assert reason in message


def test_a_file_that_is_not_toml_is_rejected_with_tomllibs_position(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD_ROW + "amount_usd = = 3\n")
    with pytest.raises(ConfigError) as error:
        PriceTable.load(path)
    assert str(path) in str(error.value) and "not valid TOML" in str(error.value)
    assert "line 8" in str(error.value)


def test_a_missing_user_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Cannot read the price file"):
        PriceTable.load(tmp_path / "nope.toml")


def test_importing_pricing_does_not_import_torch() -> None:
    code = (
        "import sys, pipelines.catalogue.pricing; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, timeout=60)
