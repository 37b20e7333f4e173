"""Schedule times: phrasings people type, DST-correct next runs, the missed-run policy.

Due times are checked as wall-clock times in the schedule's zone across the 2026 UK
daylight-saving changes (29 March forward, 25 October back), which is where a schedule
computed in UTC, or with a fixed offset, drifts by an hour.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from core.errors import InvalidInput
from tools.schedule_times import (
    MISSED_GRACE,
    When,
    describe,
    due_action,
    next_after,
    parse_when,
)

LONDON = ZoneInfo("Europe/London")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def local(*args: int, zone: ZoneInfo = LONDON) -> datetime:
    return datetime(*args, tzinfo=zone)


def runs(when: When, after: datetime, n: int) -> list[datetime]:
    out = []
    for _ in range(n):
        after = next_after(when, after)
        out.append(after)
    return out


# ---------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "kind", "expression"),
    [
        ("every day at 8", "daily", "08:00"),
        ("daily 08:00", "daily", "08:00"),
        ("every morning at 8", "daily", "08:00"),
        ("every evening at 7", "daily", "19:00"),
        ("at 8am", "daily", "08:00"),
        ("at 7:30pm", "daily", "19:30"),
        ("at 12am", "daily", "00:00"),
        ("every day at noon", "daily", "12:00"),
        ("Every Day At 8.", "daily", "08:00"),
        ("every monday at 9:30", "weekly", "mon 09:30"),
        ("every Mon at 9:30", "weekly", "mon 09:30"),
        ("mondays and thursdays at 7:15am", "weekly", "mon,thu 07:15"),
        ("weekly mon,thu 07:15", "weekly", "mon,thu 07:15"),
        ("weekly thu,mon 07:15", "weekly", "mon,thu 07:15"),
        ("every tues and fri at 6pm", "weekly", "tue,fri 18:00"),
        ("every saturday and sunday at 10", "weekly", "sat,sun 10:00"),
        ("weekdays at 8", "weekly", "mon,tue,wed,thu,fri 08:00"),
        ("every weekday at 8am", "weekly", "mon,tue,wed,thu,fri 08:00"),
        ("weekends at 9am", "weekly", "sat,sun 09:00"),
        ("weekly mon-fri 08:00", "weekly", "mon,tue,wed,thu,fri 08:00"),
        ("every monday to wednesday at 8", "weekly", "mon,tue,wed 08:00"),
        ("fri-mon at 8", "weekly", "mon,fri,sat,sun 08:00"),
        ("every 2 hours", "interval", "7200s"),
        ("every 30 minutes", "interval", "1800s"),
        ("every 5 mins", "interval", "300s"),
        ("every hour", "interval", "3600s"),
        ("hourly", "interval", "3600s"),
        ("every half hour", "interval", "1800s"),
        ("every 2 days", "interval", "172800s"),
        ("interval 3600s", "interval", "3600s"),
        ("interval 900", "interval", "900s"),
        ("cron 0 8 * * *", "cron", "0 8 * * *"),
        ("0 8 * * *", "cron", "0 8 * * *"),
        ("cron 30 7 * * MON-FRI", "cron", "30 7 * * mon-fri"),
        ("cron */5 * * * *", "cron", "*/5 * * * *"),
    ],
)
def test_parse_when_reads_the_forms_people_type(text: str, kind: str, expression: str) -> None:
    when = parse_when(text, "Europe/London")
    assert (when.kind, when.expression, when.timezone) == (kind, expression, "Europe/London")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("every minute", "shortest interval is 5 minutes"),
        ("every 4 minutes", "shortest interval is 5 minutes"),
        ("interval 60s", "shortest interval is 5 minutes"),
        ("cron * * * * *", "every 5 minutes"),
        ("cron 0,2 8 * * *", "every 5 minutes"),
        ("cron 58 * * * *", None),  # hourly at :58 is fine
        ("cron 0 8 * *", "five fields"),
        ("cron 61 8 * * *", "five fields"),
        ("cron 0 0 30 2 *", "never runs"),
        ("every day", "time of day"),
        ("every tuesday", "time of day"),
        ("weekly at 8", "which days"),
        ("every week", "a day and a time"),
        ("at 25:00", "00:00 to 23:59"),
        ("at 13pm", "1 to 12"),
        ("8", "every day at 8"),
        ("bananas", "every day at 8"),
        ("every 2 days at 8", "cron 0 8 * * *"),
        ("", "every 2 hours"),
    ],
)
def test_parse_when_refuses_with_a_reason(text: str, says: str | None) -> None:
    if says is None:
        assert parse_when(text, "UTC").kind == "cron"
        return
    with pytest.raises(InvalidInput) as error:
        parse_when(text, "UTC")
    assert says in str(error.value)


def test_nonsense_is_answered_with_examples_of_valid_forms() -> None:
    with pytest.raises(InvalidInput) as error:
        parse_when("whenever you feel like it", "UTC")
    message = str(error.value)
    for example in ("every day at 8", "weekly mon,thu 07:15", "every 2 hours", "cron 0 8"):
        assert example in message


def test_an_unknown_time_zone_is_named() -> None:
    with pytest.raises(InvalidInput, match="Mars/Olympus"):
        parse_when("every day at 8", "Mars/Olympus")
    with pytest.raises(InvalidInput, match="time zone"):
        parse_when("every day at 8", "")


def test_describe_reads_back_in_words() -> None:
    assert describe(parse_when("daily 08:00", "Europe/London")) == (
        "every day at 08:00 Europe/London"
    )
    assert describe(parse_when("weekly mon,thu 07:15", "UTC")) == (
        "every Monday and Thursday at 07:15 UTC"
    )
    assert describe(parse_when("weekdays at 8", "UTC")) == "every weekday at 08:00 UTC"
    assert describe(parse_when("every 2 hours", "UTC")) == "every 2 hours"
    assert describe(parse_when("every hour", "UTC")) == "every hour"
    assert describe(parse_when("every 90 minutes", "UTC")) == "every 90 minutes"
    assert "0 8 * * *" in describe(parse_when("cron 0 8 * * *", "Asia/Tokyo"))


# ------------------------------------------------------------------------- next runs


def test_daily_keeps_the_local_clock_time_across_spring_forward() -> None:
    when = parse_when("daily 08:00", "Europe/London")
    got = runs(when, local(2026, 3, 27, 9, 0), 3)
    assert got == [utc(2026, 3, 28, 8, 0), utc(2026, 3, 29, 7, 0), utc(2026, 3, 30, 7, 0)]
    assert [d.astimezone(LONDON).hour for d in got] == [8, 8, 8]
    assert all(d.tzinfo is UTC for d in got)


def test_daily_keeps_the_local_clock_time_across_fall_back() -> None:
    when = parse_when("daily 08:00", "Europe/London")
    got = runs(when, local(2026, 10, 23, 9, 0), 3)
    assert got == [utc(2026, 10, 24, 7, 0), utc(2026, 10, 25, 8, 0), utc(2026, 10, 26, 8, 0)]
    assert [d.astimezone(LONDON).hour for d in got] == [8, 8, 8]


def test_a_time_in_the_skipped_hour_runs_once_an_hour_later_on_the_clock() -> None:
    when = parse_when("daily 01:30", "Europe/London")
    got = runs(when, local(2026, 3, 28, 2, 0), 2)
    # 01:30 does not exist on 29 March: it runs at 02:30 BST (01:30 UTC), then as usual
    assert got == [utc(2026, 3, 29, 1, 30), utc(2026, 3, 30, 0, 30)]


def test_a_time_in_the_repeated_hour_runs_once() -> None:
    when = parse_when("daily 01:30", "Europe/London")
    got = runs(when, local(2026, 10, 24, 2, 0), 2)
    assert got == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]


def test_cron_keeps_local_time_across_both_changes() -> None:
    when = parse_when("cron 0 8 * * *", "Europe/London")
    spring = runs(when, local(2026, 3, 28, 7, 0), 2)
    assert spring == [utc(2026, 3, 28, 8, 0), utc(2026, 3, 29, 7, 0)]
    autumn = runs(when, local(2026, 10, 24, 7, 0), 2)
    assert autumn == [utc(2026, 10, 24, 7, 0), utc(2026, 10, 25, 8, 0)]


def test_a_fixed_time_cron_does_not_repeat_in_the_repeated_hour() -> None:
    when = parse_when("cron 30 1 * * *", "Europe/London")
    got = runs(when, local(2026, 10, 24, 12, 0), 2)
    assert got == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]


def test_a_fixed_time_cron_in_the_skipped_hour_runs_like_the_daily_form() -> None:
    cron = parse_when("cron 30 1 * * *", "Europe/London")
    daily = parse_when("daily 01:30", "Europe/London")
    start = local(2026, 3, 28, 2, 0)
    assert runs(cron, start, 3) == runs(daily, start, 3)


def test_an_every_quarter_hour_cron_skips_the_hour_that_does_not_exist() -> None:
    when = parse_when("cron */15 * * * *", "Europe/London")
    got = runs(when, utc(2026, 3, 29, 0, 40), 3)
    assert got == [utc(2026, 3, 29, 0, 45), utc(2026, 3, 29, 1, 0), utc(2026, 3, 29, 1, 15)]
    assert [d.astimezone(LONDON).strftime("%H:%M") for d in got] == ["00:45", "02:00", "02:15"]


def test_an_every_quarter_hour_cron_follows_real_time_through_the_repeated_hour() -> None:
    when = parse_when("cron */15 * * * *", "Europe/London")
    got = runs(when, utc(2026, 10, 25, 0, 50), 6)
    assert [d - got[0] for d in got] == [timedelta(minutes=15 * i) for i in range(6)]
    assert got[0] == utc(2026, 10, 25, 1, 0)


def test_weekly_picks_the_next_allowed_day_in_local_time() -> None:
    when = parse_when("weekly mon,thu 07:15", "America/New_York")
    new_york = ZoneInfo("America/New_York")
    # Sunday 1 March 2026, 23:00 in New York is already Monday in UTC
    got = runs(when, local(2026, 3, 1, 23, 0, zone=new_york), 4)
    as_local = [d.astimezone(new_york) for d in got]
    assert [(d.strftime("%a"), d.hour, d.minute) for d in as_local] == [
        ("Mon", 7, 15),
        ("Thu", 7, 15),
        ("Mon", 7, 15),
        ("Thu", 7, 15),
    ]
    # US clocks go forward on 8 March: the UTC time moves, the local time does not
    assert got[2] == utc(2026, 3, 9, 11, 15) and got[0] == utc(2026, 3, 2, 12, 15)


def test_next_after_is_strictly_after() -> None:
    when = parse_when("daily 08:00", "UTC")
    assert next_after(when, utc(2026, 5, 1, 8, 0)) == utc(2026, 5, 2, 8, 0)
    cron = parse_when("cron 0 8 * * *", "UTC")
    assert next_after(cron, utc(2026, 5, 1, 8, 0)) == utc(2026, 5, 2, 8, 0)


def test_interval_is_aligned_to_its_anchor() -> None:
    created = utc(2026, 5, 1, 10, 7)
    when = parse_when("every 2 hours", "Europe/London", anchor=created)
    assert next_after(when, created) == utc(2026, 5, 1, 12, 7)
    assert next_after(when, utc(2026, 5, 1, 12, 7)) == utc(2026, 5, 1, 14, 7)
    # a late caller still lands on the rhythm, not on caller + 2 h
    assert next_after(when, utc(2026, 5, 1, 15, 0)) == utc(2026, 5, 1, 16, 7)
    unanchored = When("interval", "7200s", "UTC")
    assert next_after(unanchored, utc(2026, 5, 1, 15, 0)) == utc(2026, 5, 1, 17, 0)


def test_an_interval_ignores_daylight_saving() -> None:
    when = parse_when("every 1 hours", "Europe/London", anchor=utc(2026, 10, 24, 23, 0))
    got = runs(when, utc(2026, 10, 24, 23, 0), 4)
    assert [d - utc(2026, 10, 24, 23, 0) for d in got] == [timedelta(hours=h) for h in (1, 2, 3, 4)]


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError):
        next_after(parse_when("daily 08:00", "UTC"), datetime(2026, 5, 1, 8, 0))


# --------------------------------------------------------------------- missed runs

DAILY = When("daily", "08:00", "Europe/London")


def test_not_yet_due_does_nothing() -> None:
    due = utc(2026, 5, 1, 7, 0)
    assert due_action(due, due - timedelta(seconds=1), "run_once", DAILY) == (False, due)


def test_due_within_the_grace_fires_and_moves_to_the_next_day() -> None:
    due = utc(2026, 5, 1, 7, 0)
    for policy in ("run_once", "skip"):
        fire, following = due_action(due, due + MISSED_GRACE, policy, DAILY)
        assert (fire, following) == (True, utc(2026, 5, 2, 7, 0))


def test_a_missed_run_fires_once_with_run_once() -> None:
    due = utc(2026, 5, 1, 7, 0)
    now = utc(2026, 5, 4, 12, 0)  # the app was down for three days
    assert due_action(due, now, "run_once", DAILY) == (True, utc(2026, 5, 5, 7, 0))


def test_a_missed_run_is_skipped_with_skip() -> None:
    due = utc(2026, 5, 1, 7, 0)
    now = due + MISSED_GRACE + timedelta(seconds=1)
    assert due_action(due, now, "skip", DAILY) == (False, utc(2026, 5, 2, 7, 0))


def test_a_missed_interval_keeps_its_rhythm() -> None:
    when = When("interval", "1800s", "UTC", anchor=utc(2026, 5, 1, 0, 5))
    due = utc(2026, 5, 1, 9, 5)
    fire, following = due_action(due, utc(2026, 5, 1, 11, 40), "run_once", when)
    assert fire and following == utc(2026, 5, 1, 12, 5)
    fire, following = due_action(due, due + timedelta(minutes=3), "skip", when)
    assert fire and following == utc(2026, 5, 1, 9, 35)


def test_the_next_run_stored_is_always_in_the_future() -> None:
    when = parse_when("every 5 minutes", "UTC")
    due = utc(2026, 5, 1, 9, 0)
    now = due + timedelta(minutes=9)  # within the grace, but two due times have passed
    fire, following = due_action(due, now, "run_once", when)
    assert fire and following == utc(2026, 5, 1, 9, 10) and following > now


def test_an_unknown_policy_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        due_action(utc(2026, 5, 1), utc(2026, 5, 2), "catch_up", DAILY)  # type: ignore[arg-type]
