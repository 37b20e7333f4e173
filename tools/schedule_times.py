"""When a schedule runs: parsing people's phrasings, the next due time, missed runs.

Times are computed in the schedule's own time zone and returned in UTC, so "daily 08:00
Europe/London" stays at 08:00 on the clock on both sides of a daylight-saving change.
A phrasing that is not understood is refused with examples rather than guessed at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from core.errors import InvalidInput

Kind = Literal["cron", "interval", "daily", "weekly"]
MissedPolicy = Literal["run_once", "skip"]

MISSED_GRACE = timedelta(minutes=10)
MIN_INTERVAL = timedelta(minutes=5)
MAX_INTERVAL = timedelta(days=366)

EXAMPLES = (
    '"every day at 8", "daily 08:00", "every morning at 8", "at 7:30pm", '
    '"every monday at 9:30", "weekdays at 8am", "weekly mon,thu 07:15", '
    '"every 2 hours", "every 30 minutes", "interval 3600s", "cron 0 8 * * *"'
)

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_NAMES = {
    **{d: d for d in DAYS},
    "monday": "mon",
    "tues": "tue",
    "tuesday": "tue",
    "weds": "wed",
    "wednesday": "wed",
    "thur": "thu",
    "thurs": "thu",
    "thursday": "thu",
    "friday": "fri",
    "saturday": "sat",
    "sunday": "sun",
}
_DAY_GROUPS = {
    "weekday": DAYS[:5],
    "weekdays": DAYS[:5],
    "weekend": DAYS[5:],
    "weekends": DAYS[5:],
}
_DAILY_WORDS = {"day", "days", "daily", "morning", "mornings", "afternoon", "afternoons"}
_DAILY_WORDS |= {"evening", "evenings", "night", "nights"}
_LATE_PERIODS = {"afternoon", "afternoons", "evening", "evenings", "night", "nights"}
_FILLER = {"every", "each", "on", "and", "the", "in", "at", "week", "weekly", "of"}
_UNITS = {
    "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
    "w": 604800, "week": 604800, "weeks": 604800,
}  # fmt: skip

_TIME = re.compile(
    r"(?:\bat\s+)?(?P<time>(?P<h>\d{1,2})(?:[:.](?P<m>\d{2}))?\s*(?P<ampm>am|pm|a\.m\.|p\.m\.)?"
    r"|noon|midday|midnight)$"
)
_EVERY_N = re.compile(r"^(?:every|interval)\s+(?P<n>\d+)?\s*(?P<unit>[a-z]+)$")
_INTERVAL_RAW = re.compile(r"^interval\s+(?P<n>\d+)\s*(?P<unit>[a-z]*)$")
_CRON_FIELD = re.compile(r"^[\d*/,\-]+$")


@dataclass(frozen=True)
class When:
    """kind + normalised expression + IANA zone.

    expression by kind: daily "08:00"; weekly "mon,thu 07:15"; interval "3600s";
    cron "0 8 * * *". `anchor` (the schedule's creation time) aligns interval runs;
    without one, an interval's next run is simply `after` + the interval.
    """

    kind: Kind
    expression: str
    timezone: str
    anchor: datetime | None = None


def zone(name: str) -> ZoneInfo:
    """The IANA zone, or InvalidInput naming it."""
    try:
        return ZoneInfo((name or "").strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(
            f"Unknown time zone {name!r}: use an IANA name such as Europe/London, "
            "America/New_York or UTC."
        ) from None


def parse_when(text: str, tz: str, *, anchor: datetime | None = None) -> When:
    """A When from an English phrasing, a cron line or a normalised expression."""
    zone(tz)
    tz = tz.strip()
    said = " ".join((text or "").strip().split())
    lowered = said.lower().rstrip(".")
    if not lowered:
        raise _nonsense(said)
    if lowered.startswith("cron "):
        return When("cron", _cron(said[5:]), tz, anchor)
    fields = said.split()
    if len(fields) == 5 and all(_CRON_FIELD.match(f) for f in fields[:2]):
        return When("cron", _cron(said), tz, anchor)
    seconds = _interval_seconds(lowered)
    if seconds is not None:
        return When("interval", f"{seconds}s", tz, anchor)
    return _clock(lowered, said, tz, anchor)


def _nonsense(said: str) -> InvalidInput:
    return InvalidInput(f"I cannot read {said!r} as a schedule. Try for example {EXAMPLES}.")


def _cron(expression: str) -> str:
    fields = expression.split()
    if len(fields) != 5 or not croniter.is_valid(" ".join(fields)):
        raise InvalidInput(
            f"{expression.strip()!r} is not a cron expression: it needs five fields "
            "(minute hour day-of-month month day-of-week), e.g. 'cron 0 8 * * *' for "
            "08:00 every day or 'cron 30 7 * * mon-fri'."
        )
    normalised = " ".join(fields).lower()
    try:
        croniter(normalised, datetime(2000, 1, 1)).get_next(datetime)
    except CroniterError:
        raise InvalidInput(f"Cron {normalised!r} never runs (no such date).") from None
    minutes, hours = croniter.expand(normalised)[0][:2]
    if _cron_gap_minutes(minutes, hours) < MIN_INTERVAL.total_seconds() / 60:
        raise InvalidInput(
            f"Cron {normalised!r} runs more often than every 5 minutes; "
            "the shortest schedule is every 5 minutes (e.g. 'cron */5 * * * *')."
        )
    return normalised


def _cron_gap_minutes(minutes: list, hours: list) -> int:
    """The shortest gap in minutes between two runs of a cron's minute/hour fields."""
    mins = list(range(60)) if minutes == ["*"] else sorted(int(m) for m in minutes)
    hrs = set(range(24)) if hours == ["*"] else {int(h) for h in hours}
    gaps = [b - a for a, b in zip(mins, mins[1:], strict=False)]
    if any((h + 1) % 24 in hrs for h in hrs):
        gaps.append(60 - mins[-1] + mins[0])
    return min(gaps, default=24 * 60)


def _interval_seconds(lowered: str) -> int | None:
    """Seconds for "every 2 hours", "every hour", "hourly", "interval 3600s"; None if
    the text is not an interval at all."""
    if lowered == "hourly":
        return _checked_interval(3600, lowered)
    if re.fullmatch(r"every half(?: an)? hour", lowered):
        return _checked_interval(1800, lowered)
    raw = _INTERVAL_RAW.match(lowered)
    if raw and raw["unit"] in ("", *_UNITS):
        return _checked_interval(int(raw["n"]) * _UNITS.get(raw["unit"], 1), lowered)
    match = _EVERY_N.match(lowered)
    if not match or match["unit"] not in _UNITS:
        return None
    if match["n"] is None and match["unit"] in ("day", "days", "week", "weeks"):
        return None  # "every day" alone is a daily schedule that lacks its time
    return _checked_interval(int(match["n"] or 1) * _UNITS[match["unit"]], lowered)


def _checked_interval(seconds: int, lowered: str) -> int:
    if seconds < MIN_INTERVAL.total_seconds():
        raise InvalidInput(
            f"{lowered!r} is too frequent: the shortest interval is 5 minutes "
            "(e.g. 'every 5 minutes' or 'every 2 hours')."
        )
    if seconds > MAX_INTERVAL.total_seconds():
        raise InvalidInput(f"{lowered!r} is too far apart: the longest interval is 366 days.")
    return seconds


def _clock(lowered: str, said: str, tz: str, anchor: datetime | None) -> When:
    """Daily or weekly at a time of day: "every monday at 9:30", "weekly mon,thu 07:15"."""
    found = _TIME.search(lowered)
    if found is None:
        if re.search(r"\bweek(ly)?\b", lowered) and not _days(_words(lowered)):
            raise InvalidInput(
                f"{said!r} needs a day and a time, e.g. 'every monday at 9:30' or "
                "'weekly mon,thu 07:15'."
            )
        if re.search(r"\b(day|daily|morning|week|weekly|weekdays?)\b", lowered) or _days(
            _words(lowered)
        ):
            raise InvalidInput(
                f"{said!r} needs a time of day, e.g. 'every day at 08:00' or "
                "'every monday at 9:30'."
            )
        raise _nonsense(said)
    rest = _day_ranges(lowered[: found.start()].strip())
    words = _words(rest)
    days = _days(words)
    unknown = words - _FILLER - _DAILY_WORDS - set(_DAY_NAMES) - set(_DAY_GROUPS)
    unknown -= {d + "s" for d in _DAY_NAMES}
    # a bare number is a time only after day words ("every day 8"), never alone ("8")
    bare = found["h"] is not None and not (found["m"] or found["ampm"])
    bare = bare and not found.group(0).startswith("at") and not words - _FILLER
    if unknown or bare or re.search(r"\d", rest):
        raise _nonsense(said)
    if ("week" in words or "weekly" in words) and not days:
        raise InvalidInput(
            f"{said!r} does not say which days: e.g. 'weekly mon,thu 07:15' or "
            "'every monday at 9:30'."
        )
    clock = _time_of_day(found, late=bool(words & _LATE_PERIODS), said=said)
    if days:
        ordered = ",".join(d for d in DAYS if d in days)
        return When("weekly", f"{ordered} {clock:%H:%M}", tz, anchor)
    return When("daily", f"{clock:%H:%M}", tz, anchor)


def _day_ranges(text: str) -> str:
    """ "mon-fri", "monday to friday" -> "mon,tue,wed,thu,fri"."""

    def spell(match: re.Match[str]) -> str:
        first, last = (_DAY_NAMES.get(match[i]) for i in (1, 2))
        if first is None or last is None:
            return match[0]
        a, b = DAYS.index(first), DAYS.index(last)
        return ",".join(DAYS[(a + i) % 7] for i in range((b - a) % 7 + 1))

    return re.sub(r"\b([a-z]+)\s*(?:-|to|through|thru|until)\s*([a-z]+)\b", spell, text)


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text))


def _days(words: set[str]) -> set[str]:
    days: set[str] = set()
    for word in words:
        if word in _DAY_GROUPS:
            days.update(_DAY_GROUPS[word])
        elif word in _DAY_NAMES:
            days.add(_DAY_NAMES[word])
        elif word.endswith("s") and word[:-1] in _DAY_NAMES and len(word) > 4:
            days.add(_DAY_NAMES[word[:-1]])  # "mondays"
    return days


def _time_of_day(found: re.Match[str], *, late: bool, said: str) -> time:
    spoken = found["time"]
    if spoken in ("noon", "midday"):
        return time(12, 0)
    if spoken == "midnight":
        return time(0, 0)
    hour, minute = int(found["h"]), int(found["m"] or 0)
    ampm = (found["ampm"] or "").replace(".", "")
    if ampm:
        if not 1 <= hour <= 12:
            raise InvalidInput(f"{said!r}: with am/pm the hour must be 1 to 12.")
        hour = hour % 12 + (12 if ampm == "pm" else 0)
    elif late and 1 <= hour < 12:
        hour += 12  # "every evening at 7" is 19:00
    if hour > 23 or minute > 59:
        raise InvalidInput(f"{said!r} has no such time of day; use 00:00 to 23:59.")
    return time(hour, minute)


def next_after(when: When, after: datetime) -> datetime:
    """The first due time strictly after `after` (aware), as an aware UTC datetime."""
    if after.tzinfo is None:
        raise ValueError("next_after needs an aware datetime")
    after = after.astimezone(UTC)
    if when.kind == "interval":
        return _next_interval(when, after)
    if when.kind == "cron":
        return _next_cron(when, after)
    if when.kind in ("daily", "weekly"):
        return _next_clock(when, after)
    raise ValueError(f"unknown schedule kind {when.kind!r}")


def _interval(when: When) -> timedelta:
    return timedelta(seconds=int(when.expression.removesuffix("s")))


def _next_interval(when: When, after: datetime) -> datetime:
    step = _interval(when)
    if when.anchor is None:
        return after + step
    if when.anchor.tzinfo is None:
        raise ValueError("an interval's anchor must be an aware datetime")
    anchor = when.anchor.astimezone(UTC)
    if anchor > after:
        return anchor
    return anchor + step * ((after - anchor) // step + 1)


def _next_cron(when: When, after: datetime) -> datetime:
    """croniter walks naive local wall time (its own time-zone handling differs between
    versions); the zone is applied here. A fixed-hour job runs once in the repeated autumn
    hour and, in the skipped spring hour, as much later as the clocks jumped (like the
    daily form); a job on every hour ("*") follows real time through both."""
    local_zone = zone(when.timezone)
    every_hour = croniter.expand(when.expression)[0][1] == ["*"]
    # start a little early: a wall time before `after` can still be due after it
    start = after.astimezone(local_zone).replace(tzinfo=None) - timedelta(hours=3)
    runs = croniter(when.expression, start)
    best: tuple[datetime, datetime] | None = None  # (due in UTC, its wall time)
    while True:
        wall: datetime = runs.get_next(datetime)
        if best is not None and wall > best[1] + timedelta(hours=3):
            return best[0]
        for due in _wall_to_utc(wall, local_zone, every_hour=every_hour):
            if due > after and (best is None or due < best[0]):
                best = (due, wall)


def _wall_to_utc(wall: datetime, local_zone: ZoneInfo, *, every_hour: bool) -> list[datetime]:
    first = wall.replace(tzinfo=local_zone, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=local_zone, fold=1).astimezone(UTC)
    if first == second:
        return [first]
    exists = first.astimezone(local_zone).replace(tzinfo=None) == wall
    if not exists:  # in the spring-forward gap
        return [] if every_hour else [first]
    return [first, second] if every_hour else [first]


def _next_clock(when: When, after: datetime) -> datetime:
    """The wall-clock time on the next allowed day; in a spring-forward gap the run moves
    forward by the gap, in the repeated autumn hour it runs at the first occurrence."""
    days_part, _, clock = when.expression.rpartition(" ")
    hour, minute = (int(p) for p in clock.split(":"))
    allowed = {DAYS.index(d) for d in days_part.split(",")} if days_part else set(range(7))
    local_zone = zone(when.timezone)
    start: date = after.astimezone(local_zone).date()
    for offset in range(9):
        day = start + timedelta(days=offset)
        if day.weekday() not in allowed:
            continue
        due = datetime.combine(day, time(hour, minute), tzinfo=local_zone).astimezone(UTC)
        if due > after:
            return due
    raise AssertionError("a weekly schedule has a run within 9 days")


def describe(when: When) -> str:
    """For people: "every day at 08:00 Europe/London", "every 2 hours"."""
    if when.kind == "interval":
        return f"every {_duration(_interval(when))}"
    if when.kind == "cron":
        return f"on the cron schedule '{when.expression}' ({when.timezone})"
    days_part, _, clock = when.expression.rpartition(" ")
    if not days_part:
        return f"every day at {clock} {when.timezone}"
    names = [_FULL_DAY[d] for d in days_part.split(",")]
    if names == [_FULL_DAY[d] for d in DAYS[:5]]:
        on = "weekday"
    elif len(names) == 1:
        on = names[0]
    else:
        on = ", ".join(names[:-1]) + " and " + names[-1]
    return f"every {on} at {clock} {when.timezone}"


_FULL_DAY = {
    "mon": "Monday",
    "tue": "Tuesday",
    "wed": "Wednesday",
    "thu": "Thursday",
    "fri": "Friday",
    "sat": "Saturday",
    "sun": "Sunday",
}


def _duration(step: timedelta) -> str:
    seconds = int(step.total_seconds())
    for unit, size in (("week", 604800), ("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            n = seconds // size
            return unit if n == 1 else f"{n} {unit}s"
    return f"{seconds} seconds"


def due_action(
    next_run_at: datetime, now: datetime, policy: MissedPolicy, when: When
) -> tuple[bool, datetime]:
    """(fire now?, the next_run_at to store).

    Not yet due: (False, unchanged). Due within MISSED_GRACE: fire. Older than that, the
    run was missed (the app was down): "run_once" fires once now, "skip" does not. Either
    way the new next_run_at is the schedule's first due time after `now`, so a long
    outage never fires a burst of catch-up runs.
    """
    if policy not in ("run_once", "skip"):
        raise ValueError(f"unknown missed-run policy {policy!r}")
    if next_run_at > now:
        return False, next_run_at
    if when.kind == "interval":
        when = replace(when, anchor=next_run_at)  # keep the interval's rhythm
    following = next_after(when, now)
    missed = now - next_run_at > MISSED_GRACE
    return (policy == "run_once" or not missed), following
