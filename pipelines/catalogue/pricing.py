"""What a paid action will cost before it runs, and what it did cost after.

Prices are data (`prices.toml`, plus an optional file of the user's), so a new model or
backend is a row, not code. This module only does the arithmetic, and says in every
answer where a number came from: the provider's own report (OpenAI `usage` tokens,
Replicate `metrics.predict_time`), the price table, or an estimate resting on an
assumption (quality "auto" held at the dearest tier and shown as the range of tiers, a
typical run time). A model the table does not know is flagged `unpriced`, never
silently free.

Money is `decimal.Decimal` throughout, read from the TOML as exact decimals, and every
figure handed out is rounded half-up to whole micro-dollars (6 places): sums in the
ledger stay exact, and `micro_usd` gives the same figure as an integer for storage.

Only the standard library is imported, so pricing a request never loads a backend.

Length: the table, its TOML rows' checks and the arithmetic per unit (image, token,
second, GPU-second) are one contract with prices.toml; each unit's rule is short, but
they share the row lookup and the rounding.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal

from core import money
from core.errors import ConfigError, InvalidInput
from pipelines.catalogue import toml_rows

BUILTIN_FILE = Path(__file__).with_name("prices.toml")

PER_OUTPUT_UNITS = ("image", "video", "run")
UNITS = (*PER_OUTPUT_UNITS, "second", "token")
TOKEN_KINDS = ("text_in", "image_in", "text_out", "image_out")
CONFIDENCES = ("high", "medium", "low")
MICRO = Decimal("0.000001")
ZERO = Decimal(0)

_PRICE_FIELDS = {
    *("backend", "model", "unit", "amount_usd", "per", "quality", "size_class"),
    *("token_kind", "hardware", "typical_seconds", "source", "date", "confidence"),
}
_HARDWARE_FIELDS = {"backend", "name", "amount_usd", "source", "date", "confidence"}
_TABLES = {"price": _PRICE_FIELDS, "hardware": _HARDWARE_FIELDS}
_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")
_DATE = re.compile(r"^\d{4}(-\d{2}(-\d{2})?)?$")
_VERSION = re.compile(r":[0-9a-f]{64}$")
_GLOB_CHARS = re.compile(r"[*?\[]")
_ASSUMED = ("auto", "")

CostSource = Literal["reported", "table", "estimate"]


@dataclass(frozen=True)
class PriceRow:
    """One `[[price]]` row; `amount_usd` is None for a "second" row priced by its hardware."""

    backend: str
    model: str
    unit: str
    amount_usd: Decimal | None
    source: str
    date: str
    per: Decimal = Decimal(1)
    quality: str | None = None
    size_class: str | None = None
    token_kind: str | None = None
    hardware: str | None = None
    typical_seconds: Decimal | None = None
    confidence: str = "medium"
    file: Path | None = None
    line: int | None = None

    @property
    def key(self) -> tuple[str | None, ...]:
        """What a user row must repeat to replace this row rather than add one."""
        return (self.backend, self.model, self.unit, self.quality, self.size_class, self.token_kind)

    @property
    def where(self) -> str:
        return toml_rows.where(self.file, self.line)


@dataclass(frozen=True)
class HardwareRate:
    """One `[[hardware]]` row: what a second of a provider's GPU costs."""

    backend: str
    name: str
    amount_usd: Decimal
    source: str
    date: str
    confidence: str = "medium"
    file: Path | None = None
    line: int | None = None


@dataclass(frozen=True)
class Estimate:
    """The price of a request before it runs: `lines` say how it was reached.

    `usd` is what a budget holds. `low_usd` is set when the provider picks the price
    tier itself (quality "auto"): the request then costs from `low_usd` to `usd`, and
    is shown as that range. `untold` names what the table cannot price before the run
    (input images billed as tokens), which the cost afterwards counts.
    """

    usd: Decimal
    lines: list[str]
    unpriced: bool = False
    rows: tuple[PriceRow, ...] = ()
    source: Literal["table"] = "table"
    low_usd: Decimal | None = None
    untold: tuple[str, ...] = ()

    @property
    def micro_usd(self) -> int:
        return int(self.usd / MICRO)


@dataclass(frozen=True)
class Cost:
    """What a finished request cost, and whether the provider said so or the table did."""

    usd: Decimal
    source: CostSource
    lines: list[str]
    unpriced: bool = False
    rows: tuple[PriceRow, ...] = ()

    @property
    def micro_usd(self) -> int:
        return int(self.usd / MICRO)


@dataclass(frozen=True)
class _Priced:
    """An estimate plus whether it rests on an assumption (then a cost is "estimate")."""

    estimate: Estimate
    assumed: bool = False


class PriceTable:
    """The merged price rows; `estimate` and `actual` are pure arithmetic over them."""

    def __init__(self, rows: Iterable[PriceRow], hardware: Iterable[HardwareRate]) -> None:
        self._rows = list(rows)
        self._hardware = {(h.backend, h.name.casefold()): h for h in hardware}

    @classmethod
    def load(
        cls,
        user_file: Path | None = None,
        *,
        local_usd_per_gpu_second: Decimal | float | str | None = None,
    ) -> PriceTable:
        """The built-in table, then the user's file: same key replaces, new rows extend.

        A user row that bills a model another way (per image instead of by time, say)
        replaces the built-in rows of the other way for that model. `local_usd_per_gpu_second`
        (from settings) sets what a second of the local GPU costs; the default is 0.
        """
        rows, hardware = _parse(BUILTIN_FILE)
        merged = {row.key: row for row in rows}
        machines = {(h.backend, h.name.casefold()): h for h in hardware}
        if user_file is not None:
            user_rows, user_hardware = _parse(user_file)
            for row in user_rows:
                if row.unit != "token":
                    merged = {
                        key: old
                        for key, old in merged.items()
                        if not _same_model(old, row) or old.unit in ("token", row.unit)
                    }
                merged[row.key] = row
            machines.update({(h.backend, h.name.casefold()): h for h in user_hardware})
        if local_usd_per_gpu_second is not None:
            rate = _setting_rate(local_usd_per_gpu_second)
            key = ("local", "*", "second", None, None, None)
            base = merged.get(key) or PriceRow(
                "local", "*", "second", ZERO, "settings", dt.date.today().isoformat()
            )
            merged[key] = replace(
                base, amount_usd=rate, per=Decimal(1), source="settings", file=None, line=None
            )
        for row in merged.values():
            if row.hardware and (row.backend, row.hardware.casefold()) not in machines:
                known = ", ".join(h.name for h in machines.values() if h.backend == row.backend)
                raise ConfigError(
                    f"Price file {row.where}: the row for {row.model} names hardware "
                    f"{row.hardware!r}, which has no [[hardware]] row for {row.backend} "
                    f"(known: {known or 'none'})."
                )
        return cls(merged.values(), machines.values())

    def rows(self) -> list[PriceRow]:
        return list(self._rows)

    def hardware(self) -> list[HardwareRate]:
        return list(self._hardware.values())

    @property
    def local_usd_per_gpu_second(self) -> Decimal:
        """What a second of the local GPU costs (the local "*" row); 0 = free."""
        rows = self._select("local", "any-model", ("second",))
        return self.rate(rows[0]) if rows else ZERO

    def rate(self, row: PriceRow) -> Decimal:
        """Price of one unit of `row`: its own amount, or its hardware's per-second rate."""
        if row.amount_usd is not None:
            return row.amount_usd / row.per
        return self._hardware[(row.backend, (row.hardware or "").casefold())].amount_usd

    # ------------------------------------------------------------------ before the run
    def estimate(
        self,
        backend: str,
        model: str,
        *,
        n: int = 1,
        quality: str | None = None,
        size: str | None = None,
        seconds: float | Decimal | None = None,
        input_images: int = 0,
    ) -> Estimate:
        """What the request should cost, from the table; `seconds` is the whole run's."""
        _check_count("n", n)
        _check_count("input_images", input_images)
        run_seconds = None if seconds is None else _seconds(seconds)
        if run_seconds is None and seconds is not None:
            raise InvalidInput(f"seconds must be a number >= 0, not {seconds!r}.")
        return self._estimate(backend, model, n, quality, size, run_seconds, input_images).estimate

    def _estimate(
        self,
        backend: str,
        model: str,
        n: int,
        quality: str | None,
        size: str | None,
        seconds: Decimal | None,
        input_images: int = 0,
    ) -> _Priced:
        rows = self._select(backend, model, (*PER_OUTPUT_UNITS, "second"))
        if not rows:
            return _Priced(_unpriced(backend, model))
        if rows[0].unit == "second":
            priced = self._time_estimate(rows[0], _name(model), n, seconds)
        else:
            priced = self._output_estimate(rows, backend, _name(model), n, quality, size)
        if input_images and self._select(backend, model, ("token",)):
            # Not "+ …": a line that begins with a list marker renders as a second bullet.
            untold = f"{input_images} input image(s)"
            line = (
                f"{untold}, billed as input tokens: not in this estimate; the cost after "
                "the run counts them"
            )
            estimate = priced.estimate
            priced = replace(
                priced,
                estimate=replace(
                    estimate, lines=[*estimate.lines, line], untold=(*estimate.untold, untold)
                ),
            )
        return priced

    def _output_estimate(
        self,
        rows: list[PriceRow],
        backend: str,
        label: str,
        n: int,
        quality: str | None,
        size: str | None,
    ) -> _Priced:
        """Per-output price: the row for this quality and size class, or the dearest one
        when the request leaves them to the provider ("auto")."""
        wanted = (quality or "").strip().lower()
        by_quality = any(row.quality for row in rows)
        if by_quality and wanted not in _ASSUMED:
            rows = [row for row in rows if row.quality in (None, wanted)]
            if not rows:
                return _Priced(_unpriced(backend, label, f" at quality {quality!r}"))
        area = _area(size)
        by_size = any(row.size_class for row in rows)
        if by_size and area is not None:
            holds = sorted({a for r in rows if (a := _area(r.size_class)) and a >= area})
            rows = [r for r in rows if r.size_class is None or _area(r.size_class) in holds[:1]]
            if not rows:
                return _Priced(_unpriced(backend, label, f" at {size}"))
        row = max(rows, key=lambda r: (_specificity(r, quality, size), self.rate(r)))
        count = 1 if row.unit == "run" else n
        each = self.rate(row)
        usd = _money(each * count)
        low: Decimal | None = None
        notes: list[str] = []
        if by_quality and wanted in _ASSUMED:
            # What "auto" picks is not documented: OpenAI's API reference for
            # images.generate / images.edit says only that `auto` (the default) "will
            # automatically select the best quality for the given model" (the `quality`
            # parameter as published in openai-python, src/openai/types/
            # image_generate_params.py, generated from OpenAI's OpenAPI spec; read
            # 2026-11-30 in openai 3.57.0). No tier and no price, and settled costs show
            # it often picks less than "high" (about 1/4 of the high price). So the
            # estimate is the range from the cheapest tier to the dearest at the same
            # size; a budget holds the dearest, and the cost after the run is what was
            # billed.
            same_size = [r for r in rows if r.size_class in (None, row.size_class)]
            cheapest = min(same_size, key=self.rate)
            low = _money(self.rate(cheapest) * count)
            notes.append(
                f"quality {quality or 'auto'}: the provider picks the tier, from "
                f"{cheapest.quality} to {row.quality}; a budget holds {row.quality}, the "
                "dearest tier (conservative)"
            )
        if by_size and area is None and row.size_class:
            notes.append(
                f"size {size or 'auto'}: priced as {row.size_class}, the dearest size "
                "(conservative)"
            )
        # Name only the options the price depends on: the asked ones, or the assumed tier.
        shown_quality = (
            (f"quality {quality or 'auto'}" if low is not None else wanted) if by_quality else None
        )
        shown_size = (row.size_class if area is None else size) if by_size else None
        shown = "".join(f" {option}" for option in (shown_quality, shown_size) if option)
        per = {"run": " per run", "video": " per video"}.get(row.unit, "")
        if low is None:
            line = f"{count} × {label}{shown} at {money.usd(each)}{per} = {money.usd(usd)}"
        else:
            low_each = self.rate(cheapest)
            line = (
                f"{count} × {label}{shown} at {money.usd(low_each)}–{money.usd(each)}{per} "
                f"= {money.usd(low)}–{money.usd(usd)}"
            )
        estimate = Estimate(usd, [line, *notes], rows=(row,), low_usd=low)
        return _Priced(estimate, assumed=bool(notes))

    def _time_estimate(self, row: PriceRow, label: str, n: int, seconds: Decimal | None) -> _Priced:
        rate = self.rate(row)
        on = f" on {row.hardware}" if row.hardware else ""
        if seconds is None and rate == 0:
            free = f"(rate 0 → free) = {money.usd(ZERO)}"
            line = f"{label}: GPU time{on} at {money.usd(rate)}/s {free}"
            return _Priced(Estimate(_money(ZERO), [line], rows=(row,)))
        typical = ""
        if seconds is None:
            if row.typical_seconds is None:
                return _Priced(
                    _unpriced(row.backend, label, " (billed by time; no typical time known)")
                )
            seconds = row.typical_seconds * n
            typical = f" (about {n} × {_num(row.typical_seconds)} s, typical)"
        usd = _money(seconds * rate)
        free = " (rate 0 → free)" if rate == 0 else ""
        line = (
            f"{label}: {_num(seconds)} s of GPU time{on}{typical} at {money.usd(rate)}/s{free} "
            f"= {money.usd(usd)}"
        )
        return _Priced(Estimate(usd, [line], rows=(row,)), assumed=bool(typical))

    # ------------------------------------------------------------------- after the run
    def actual(
        self,
        backend: str,
        model: str,
        *,
        n: int = 1,
        quality: str | None = None,
        size: str | None = None,
        usage: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
        gpu_seconds: float | Decimal | None = None,
    ) -> Cost:
        """What the finished request cost: the provider's figures when it gave any.

        Order: OpenAI `usage` tokens × token prices ("reported"); a time-billed model's
        measured seconds (`gpu_seconds`, else Replicate's `metrics.predict_time`) × its
        rate ("reported"); the per-output price for the `n` outputs made ("table"); and
        otherwise the estimate, with its assumptions stated ("estimate").
        """
        _check_count("n", n)
        notes: list[str] = []
        if usage:
            cost = self._token_cost(backend, model, usage, notes)
            if cost is not None:
                return cost
        rows = self._select(backend, model, (*PER_OUTPUT_UNITS, "second"))
        if rows and rows[0].unit == "second":
            measured, how = _measured(gpu_seconds, metrics, backend)
            if measured is not None:
                row, rate = rows[0], self.rate(rows[0])
                usd = _money(measured * rate)
                on = f" on {row.hardware}" if row.hardware else ""
                free = " (rate 0 → free)" if rate == 0 else ""
                line = (
                    f"{_name(model)}: {_num(measured)} s of GPU time{on} ({how}) at "
                    f"{money.usd(rate)}/s{free} = {money.usd(usd)}"
                )
                return Cost(usd, "reported", [*notes, line], rows=(row,))
            if metrics or gpu_seconds is not None:
                notes.append("no usable run time was reported")
        priced = self._estimate(backend, model, n, quality, size, None)
        est = priced.estimate
        time_billed = bool(est.rows) and est.rows[0].unit == "second"
        source: CostSource = "estimate" if priced.assumed or time_billed else "table"
        return Cost(est.usd, source, [*notes, *est.lines], unpriced=est.unpriced, rows=est.rows)

    def _token_cost(
        self, backend: str, model: str, usage: Mapping[str, Any], notes: list[str]
    ) -> Cost | None:
        """Reported tokens × token prices; None (with a note why) when that cannot be done."""
        rows = {row.token_kind: row for row in self._select(backend, model, ("token",))}
        input_tokens = _tokens(usage, "input_tokens")
        output_tokens = _tokens(usage, "output_tokens")
        if not rows or input_tokens is None or output_tokens is None:
            why = (
                f"there are no token prices for {_name(model)}"
                if not rows
                else "the usage block lacks input_tokens or output_tokens"
            )
            notes.append(f"{backend} reported token usage, but {why}: priced from the table")
            return None
        parts: list[tuple[str, int]] = []
        split = _split(usage.get("input_tokens_details"), "text_in", "image_in")
        if split is None:
            parts.append(("input", input_tokens))
        else:
            parts += split
        split = _split(usage.get("output_tokens_details"), "text_out", "image_out")
        parts += split if split is not None else [("image_out", output_tokens)]
        lines: list[str] = []
        used: list[PriceRow] = []
        total = ZERO
        for kind, count in parts:
            row, assumed = _token_row(rows, kind)
            if row is None:
                notes.append(f"no {kind.replace('_', '-')} token price for {_name(model)}")
                return None
            usd = _money(count * self.rate(row))
            total += usd
            used.append(row)
            why = f" ({assumed})" if assumed else ""
            lines.append(
                f"{count:,} {kind.replace('_', '-')} tokens at {_rate(row)}{why} = {money.usd(usd)}"
            )
        lines.append(f"{_name(model)}: {money.usd(total)} for the tokens {backend} reported")
        return Cost(total, "reported", [*notes, *lines], rows=tuple(dict.fromkeys(used)))

    # ------------------------------------------------------------------------ lookup
    def _select(self, backend: str, model: str, units: tuple[str, ...]) -> list[PriceRow]:
        """The rows of `units` under the most specific model pattern that matches."""
        backend = backend.strip().lower()
        name = _name(model).casefold()
        best: tuple[int, int] | None = None
        chosen: list[PriceRow] = []
        for row in self._rows:
            if row.backend != backend or row.unit not in units:
                continue
            pattern = row.model.casefold()
            if _GLOB_CHARS.search(pattern):
                if not fnmatchcase(name, pattern):
                    continue
                rank = (0, len(_GLOB_CHARS.sub("", pattern)))
            elif pattern == name:
                rank = (1, len(pattern))
            else:
                continue
            if best is None or rank > best:
                best, chosen = rank, [row]
            elif rank == best:
                chosen.append(row)
        return chosen


# ---------------------------------------------------------------------------- parsing
def _parse(path: Path) -> tuple[list[PriceRow], list[HardwareRate]]:
    """One price file, checked: every problem names the file, the row's line and why."""
    raw, lines = toml_rows.read_tables(path, "price file", _TABLES)
    rows = [
        _price_row(entry, path, line)
        for entry, line in zip(raw["price"], lines["price"], strict=True)
    ]
    hardware = [
        _hardware_row(entry, path, line)
        for entry, line in zip(raw["hardware"], lines["hardware"], strict=True)
    ]
    _check_duplicates(rows, hardware)
    return rows, hardware


def _price_row(entry: dict[str, Any], path: Path, line: int | None) -> PriceRow:
    def fail(reason: str) -> ConfigError:
        return ConfigError(f"Price file {toml_rows.where(path, line)}: the [[price]] row {reason}.")

    toml_rows.check_fields(entry, _PRICE_FIELDS, fail)
    backend, model, unit = (
        toml_rows.text(entry, name, fail) for name in ("backend", "model", "unit")
    )
    if unit not in UNITS:
        raise fail(f"has unknown unit {unit!r}; use one of {', '.join(UNITS)}")
    hardware = toml_rows.optional_text(entry, "hardware", fail)
    amount = _number(entry, "amount_usd", fail)
    if amount is None and not (unit == "second" and hardware):
        raise fail('has no amount_usd (only a "second" row naming its hardware may omit it)')
    if amount is not None and hardware:
        raise fail("has both amount_usd and hardware; a time-billed row takes its hardware's rate")
    per = _number(entry, "per", fail)
    if per is not None and per == 0:
        raise fail("has per = 0; per is how many units amount_usd buys (> 0)")
    token_kind = toml_rows.optional_text(entry, "token_kind", fail)
    if (unit == "token") != (token_kind is not None):
        raise fail('must give token_kind exactly when unit is "token"')
    if token_kind is not None and token_kind not in TOKEN_KINDS:
        raise fail(f"has unknown token_kind {token_kind!r}; use one of {', '.join(TOKEN_KINDS)}")
    typical = _number(entry, "typical_seconds", fail)
    if unit != "second" and (hardware or typical is not None):
        raise fail('gives hardware or typical_seconds, which only "second" rows take')
    size_class = toml_rows.optional_text(entry, "size_class", fail)
    if size_class is not None and _area(size_class) is None:
        raise fail(f"has size_class {size_class!r}; write it as WIDTHxHEIGHT, e.g. 1024x1024")
    quality = toml_rows.optional_text(entry, "quality", fail)
    return PriceRow(
        backend=backend.lower(),
        model=model,
        unit=unit,
        amount_usd=amount,
        per=per if per is not None else Decimal(1),
        quality=quality.lower() if quality else None,
        size_class=size_class,
        token_kind=token_kind,
        hardware=hardware,
        typical_seconds=typical,
        source=toml_rows.text(entry, "source", fail),
        date=_date(entry, fail),
        confidence=_confidence(entry, fail),
        file=path,
        line=line,
    )


def _hardware_row(entry: dict[str, Any], path: Path, line: int | None) -> HardwareRate:
    def fail(reason: str) -> ConfigError:
        return ConfigError(
            f"Price file {toml_rows.where(path, line)}: the [[hardware]] row {reason}."
        )

    toml_rows.check_fields(entry, _HARDWARE_FIELDS, fail)
    backend, name = toml_rows.text(entry, "backend", fail), toml_rows.text(entry, "name", fail)
    amount = _number(entry, "amount_usd", fail)
    if amount is None:
        raise fail("has no amount_usd (its price per second)")
    return HardwareRate(
        backend=backend.lower(),
        name=name,
        amount_usd=amount,
        source=toml_rows.text(entry, "source", fail),
        date=_date(entry, fail),
        confidence=_confidence(entry, fail),
        file=path,
        line=line,
    )


def _check_duplicates(rows: list[PriceRow], hardware: list[HardwareRate]) -> None:
    seen: dict[tuple[str | None, ...], PriceRow] = {}
    billed: dict[tuple[str, str], PriceRow] = {}
    for row in rows:
        if row.key in seen:
            raise ConfigError(
                f"Price file {row.where}: the [[price]] row duplicates the one at line "
                f"{seen[row.key].line} (same backend, model, unit and options)."
            )
        seen[row.key] = row
        if row.unit == "token":
            continue
        other = billed.setdefault((row.backend, row.model), row)
        if other.unit != row.unit:
            raise ConfigError(
                f"Price file {row.where}: the [[price]] row bills {row.model} per {row.unit}, "
                f"but the row at line {other.line} bills it per {other.unit}; a model is "
                "billed one way."
            )
    machines: dict[tuple[str, str], HardwareRate] = {}
    for rate in hardware:
        key = (rate.backend, rate.name.casefold())
        if key in machines:
            raise ConfigError(
                f"Price file {toml_rows.where(rate.file, rate.line)}: the [[hardware]] row "
                f"duplicates {rate.name!r} at line {machines[key].line}."
            )
        machines[key] = rate


def _number(entry: Mapping[str, Any], name: str, fail: Any) -> Decimal | None:
    value = entry.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise fail(f"has {name} = {value!r}; it must be a number, not a {type(value).__name__}")
    number = Decimal(value)
    if not number.is_finite() or number < 0:
        raise fail(f"has {name} = {value}; it must be a finite number >= 0")
    return number


def _date(entry: Mapping[str, Any], fail: Any) -> str:
    value = entry.get("date")
    if isinstance(value, dt.datetime):
        return value.date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if value is None:
        raise fail("is missing date (when the price was read: 2026, 2026-05 or 2026-05-01)")
    text = str(value).strip()
    if isinstance(value, str) and _DATE.match(text):
        padded = text + "-01-01"[len(text) - 4 :]
        try:
            dt.date.fromisoformat(padded)
        except ValueError:
            pass
        else:
            return text
    raise fail(f"has date {value!r}; write YYYY, YYYY-MM or YYYY-MM-DD")


def _confidence(entry: Mapping[str, Any], fail: Any) -> str:
    value = entry.get("confidence", "medium")
    if value not in CONFIDENCES:
        raise fail(f"has confidence {value!r}; use one of {', '.join(CONFIDENCES)}")
    return str(value)


def _same_model(a: PriceRow, b: PriceRow) -> bool:
    return a.backend == b.backend and a.model.casefold() == b.model.casefold()


def _setting_rate(value: Decimal | float | str) -> Decimal:
    try:
        rate = Decimal(str(value))
    except ArithmeticError:
        rate = Decimal("NaN")
    if isinstance(value, bool) or not rate.is_finite() or rate < 0:
        raise ConfigError(
            f"local_usd_per_gpu_second must be a number >= 0 (USD per GPU-second), not {value!r}."
        )
    return rate


# ------------------------------------------------------------------------- arithmetic
def _name(model: str) -> str:
    """The priced name: Replicate's `owner/name:version` is priced as `owner/name`."""
    return _VERSION.sub("", model.strip())


def _area(size: str | None) -> int | None:
    match = _SIZE.match((size or "").strip().lower())
    return int(match[1]) * int(match[2]) if match else None


def _specificity(row: PriceRow, quality: str | None, size: str | None) -> int:
    concrete_quality = (quality or "").strip().lower() not in _ASSUMED
    return int(concrete_quality and row.quality is not None) + int(
        _area(size) is not None and row.size_class is not None
    )


def _money(value: Decimal) -> Decimal:
    return money.to_micro(value)


def _num(value: Decimal) -> str:
    return format(value.normalize(), "f")


def _rate(row: PriceRow) -> str:
    amount = money.usd(row.amount_usd if row.amount_usd is not None else ZERO)
    if row.per == 1:
        return amount
    if row.per == 1_000_000:
        return f"{amount}/M"
    return f"{amount} per {_num(row.per)}"


def _unpriced(backend: str, model: str, detail: str = "") -> Estimate:
    return Estimate(
        _money(ZERO),
        [f"no price known for {backend}:{_name(model)}{detail}; its cost is not counted"],
        unpriced=True,
    )


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"{name} must be a whole number >= 0, not {value!r}.")


def _seconds(value: Any) -> Decimal | None:
    """A reported or given duration as an exact decimal; None when it is not one."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str):
        return None
    try:
        number = Decimal(str(value))
    except ArithmeticError:
        return None
    return number if number.is_finite() and number >= 0 else None


def _measured(
    gpu_seconds: float | Decimal | None, metrics: Mapping[str, Any] | None, backend: str
) -> tuple[Decimal | None, str]:
    if gpu_seconds is not None:
        return _seconds(gpu_seconds), "measured"
    predict_time = (metrics or {}).get("predict_time")
    if predict_time is None:
        return None, ""
    return _seconds(predict_time), f"predict_time reported by {backend}"


def _tokens(block: Mapping[str, Any] | None, name: str) -> int | None:
    value = (block or {}).get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return int(value) if value == int(value) else None


def _split(details: Any, text_kind: str, image_kind: str) -> list[tuple[str, int]] | None:
    """(text, image) token counts from a `*_tokens_details` block, if it gives both."""
    if not isinstance(details, Mapping):
        return None
    text, image = _tokens(details, "text_tokens"), _tokens(details, "image_tokens")
    if text is None or image is None:
        return None
    return [(text_kind, text), (image_kind, image)]


def _token_row(rows: Mapping[str | None, PriceRow], kind: str) -> tuple[PriceRow | None, str]:
    """The row for a token kind; unsplit input, or a kind without its own price, takes the
    dearer rate of its direction (conservative) and says so."""
    if kind in rows:
        return rows[kind], ""
    direction = "in" if kind in ("input", "text_in", "image_in") else "out"
    same = [row for k, row in rows.items() if k and k.endswith("_" + direction)]
    if not same:
        return None, ""
    row = max(same, key=lambda r: r.amount_usd / r.per if r.amount_usd is not None else ZERO)
    why = "text/image split not reported" if kind == "input" else "no price of its own"
    return row, f"{why}: priced at the dearer {row.token_kind} rate"


__all__ = [
    "BUILTIN_FILE",
    "Cost",
    "Estimate",
    "HardwareRate",
    "PriceRow",
    "PriceTable",
]
