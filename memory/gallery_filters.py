"""What a gallery request may ask for, checked once, whoever asks (a URL, the agent).

`GalleryFilters` is built from a page's query string (`from_query`) or directly (the
`find_images` tool, likeness search); either way its values are checked when it is made,
and a bad one is refused with an InvalidInput naming the parameter as the URL spells it,
never corrected quietly. An empty value means "not asked" (a form's blank field).

Dates are UTC days: `since=2026-01-05` starts at that day's midnight, `until=2026-01-31`
takes in the whole of the 31st (the field is `created_at < until`, the next midnight).
Query keys that are not filters (`cursor`, `limit`, `like`, ...) are left to the caller.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation

from core.errors import InvalidInput
from memory.ids import require_uuid

TEXT_MAX = 200  # characters of a prompt search
NAME_MAX = 128  # model, backend, style, lora
IDS_MAX = 500  # ids in one request (a likeness search re-filters its k answers)
SIZE_MAX = 100_000  # pixels on a side
COST_MAX = Decimal("1000000")
KINDS = ("image", "video")
# Where an image came from: a batch the user started, a schedule's run, or the chat.
ORIGINS = ("batch", "schedule", "chat")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_WHOLE = re.compile(r"[0-9]{1,6}")
# Filters only an image has: asking for one leaves clips out.
IMAGE_ONLY = ("style", "kept", "min_score", "has_video", "lora", "batch_id", "schedule_id")


@dataclass(frozen=True)
class GalleryFilters:
    """One user's gallery, narrowed; every field None means "not asked"."""

    text: str | None = None  # substring of prompt_typed or prompt_sent, case-insensitive
    model: str | None = None  # these three: equal, as recorded
    backend: str | None = None
    style: str | None = None
    since: datetime | None = None  # created_at >= since
    until: datetime | None = None  # created_at < until
    kept: bool | None = None  # True: only kept (starred) images; False: only not kept
    min_score: float | None = None  # best curation_candidates.combined >= this
    width: int | None = None
    height: int | None = None
    min_cost_usd: Decimal | None = None
    max_cost_usd: Decimal | None = None  # inclusive
    kind: str | None = None  # "image" | "video" | None (both)
    has_video: bool | None = None  # True: images with a clip made from them; False: none
    lora: str | None = None  # LoRA name used, case-insensitive
    ids: tuple[str, ...] | None = None  # restrict to these
    batch_id: str | None = None  # images of this batch (the user's own)
    schedule_id: str | None = None  # images of this schedule's runs
    origin: str | None = None  # "batch" | "schedule" | "chat" (clips count as chat)

    def __post_init__(self) -> None:
        _check(self)

    @property
    def images_only(self) -> bool:
        """Whether clips are left out: asked for images, or for what only images have."""
        return (
            self.kind == "image"
            or self.origin in ("batch", "schedule")
            or any(getattr(self, n) is not None for n in IMAGE_ONLY)
        )

    @property
    def videos_only(self) -> bool:
        return self.kind == "video"

    @classmethod
    def from_query(cls, params: Mapping[str, str]) -> GalleryFilters:
        """Filters from a query string (the HTTP API's names: q, min_cost, ...)."""

        def get(name: str) -> str | None:
            value = params.get(name)
            if value is None:
                return None
            if not isinstance(value, str):
                raise InvalidInput(f"Invalid {name}: expected text.")
            value = value.strip()
            return value or None

        since, until = get("since"), get("until")
        ids = get("ids")
        return cls(
            text=get("q"),
            model=get("model"),
            backend=get("backend"),
            style=get("style"),
            since=None if since is None else _day(since, "since"),
            until=None if until is None else _day(until, "until", end=True),
            kept=_flag(get("kept"), "kept"),
            min_score=_float(get("min_score"), "min_score"),
            width=_int(get("width"), "width"),
            height=_int(get("height"), "height"),
            min_cost_usd=_money(get("min_cost"), "min_cost"),
            max_cost_usd=_money(get("max_cost"), "max_cost"),
            kind=get("kind"),
            has_video=_flag(get("has_video"), "has_video"),
            lora=get("lora"),
            ids=None if ids is None else tuple(i.strip() for i in ids.split(",") if i.strip()),
            batch_id=get("batch"),
            schedule_id=get("schedule"),
            origin=get("origin"),
        )


# Each field's name in the HTTP API, for messages: a person reads the URL's names.
_QUERY_NAME = {
    "text": "q",
    "min_cost_usd": "min_cost",
    "max_cost_usd": "max_cost",
    "batch_id": "batch",
    "schedule_id": "schedule",
}


def _check(f: GalleryFilters) -> None:
    """Refuse a value that cannot be what the caller meant, naming the parameter."""
    for field in ("text", "model", "backend", "style", "lora", "kind", "origin"):
        value = getattr(f, field)
        if value is not None and not isinstance(value, str):
            raise InvalidInput(f"Invalid {_QUERY_NAME.get(field, field)}: expected text.")
    if f.text is not None and len(f.text) > TEXT_MAX:
        raise InvalidInput(f"Invalid q: a search is at most {TEXT_MAX} characters.")
    for name in ("model", "backend", "style", "lora"):
        value = getattr(f, name)
        if value is not None and len(value) > NAME_MAX:
            raise InvalidInput(f"Invalid {name}: at most {NAME_MAX} characters.")
    if f.lora is not None and "|" in f.lora:
        raise InvalidInput("Invalid lora: a LoRA name has no '|'.")
    if f.kind is not None and f.kind not in KINDS:
        raise InvalidInput("Invalid kind: expected 'image' or 'video'.")
    if f.origin is not None and f.origin not in ORIGINS:
        raise InvalidInput("Invalid origin: expected 'batch', 'schedule' or 'chat'.")
    for field in ("batch_id", "schedule_id"):
        value = getattr(f, field)
        if value is not None:
            name = _QUERY_NAME[field]
            object.__setattr__(f, field, require_uuid(value, name))
    if f.kind == "video" and (
        f.origin in ("batch", "schedule") or any(getattr(f, n) is not None for n in IMAGE_ONLY)
    ):
        asked = ", ".join(
            _QUERY_NAME.get(n, n)
            for n in (*IMAGE_ONLY, "origin")
            if getattr(f, n) is not None and (n != "origin" or f.origin != "chat")
        )
        raise InvalidInput(f"Invalid kind: clips have no {asked}; ask for kind=image or both.")
    for name in ("since", "until"):
        value = getattr(f, name)
        if value is not None and (not isinstance(value, datetime) or value.tzinfo is None):
            raise InvalidInput(f"Invalid {name}: expected a date with a time zone.")
    if f.since is not None and f.until is not None and f.until <= f.since:
        raise InvalidInput("Invalid until: it must be after since.")
    for name in ("kept", "has_video"):
        if getattr(f, name) not in (None, True, False):
            raise InvalidInput(f"Invalid {name}: expected 1 or 0.")
    if f.min_score is not None and (
        isinstance(f.min_score, bool)
        or not isinstance(f.min_score, int | float)
        or not math.isfinite(f.min_score)
    ):
        raise InvalidInput("Invalid min_score: expected a number.")
    for name in ("width", "height"):
        value = getattr(f, name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= SIZE_MAX
        ):
            raise InvalidInput(f"Invalid {name}: expected a whole number from 1 to {SIZE_MAX}.")
    for field_name, name in (("min_cost_usd", "min_cost"), ("max_cost_usd", "max_cost")):
        value = getattr(f, field_name)
        if value is not None and (
            not isinstance(value, Decimal) or not value.is_finite() or not 0 <= value < COST_MAX
        ):
            raise InvalidInput(f"Invalid {name}: expected dollars, e.g. 0.04.")
    if (
        f.min_cost_usd is not None
        and f.max_cost_usd is not None
        and f.max_cost_usd < f.min_cost_usd
    ):
        raise InvalidInput("Invalid max_cost: it is below min_cost.")
    if f.ids is not None:
        if not isinstance(f.ids, tuple) or len(f.ids) > IDS_MAX:
            raise InvalidInput(f"Invalid ids: expected at most {IDS_MAX} ids.")
        object.__setattr__(f, "ids", tuple(require_uuid(i, "ids: an id") for i in f.ids))


def _day(value: str, name: str, *, end: bool = False) -> datetime:
    """Midnight UTC of a YYYY-MM-DD day (the next one for `end`), or an ISO time."""
    try:
        if _DATE.fullmatch(value):
            day = date.fromisoformat(value)
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return start + timedelta(days=1) if end else start
        moment = datetime.fromisoformat(value)
    except (ValueError, OverflowError):
        raise InvalidInput(f"Invalid {name}: expected a date as YYYY-MM-DD.") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _flag(value: str | None, name: str) -> bool | None:
    if value is None:
        return None
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise InvalidInput(f"Invalid {name}: expected 1 or 0.")


def _float(value: str | None, name: str) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        raise InvalidInput(f"Invalid {name}: expected a number.") from None
    if not math.isfinite(number):
        raise InvalidInput(f"Invalid {name}: expected a number.")
    return number


def _int(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    if not _WHOLE.fullmatch(value):
        raise InvalidInput(f"Invalid {name}: expected a whole number from 1 to {SIZE_MAX}.")
    return int(value)


def _money(value: str | None, name: str) -> Decimal | None:
    if value is None:
        return None
    try:
        amount = Decimal(value.removeprefix("$"))
    except InvalidOperation:
        raise InvalidInput(f"Invalid {name}: expected dollars, e.g. 0.04.") from None
    if not amount.is_finite() or not 0 <= amount < COST_MAX:
        raise InvalidInput(f"Invalid {name}: expected dollars, e.g. 0.04.")
    return amount
