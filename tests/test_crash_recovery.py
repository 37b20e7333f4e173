"""Crash-safe work: a process killed mid-action leaves nothing held and its user is told.

The end-to-end tests run the real app in a subprocess against a fake OpenAI that answers
the first image requests and holds the rest (a provider still working), kill -9 the app
while a request is held, start it again on the same data directory, and look at what the
user sees and what the ledger holds. The in-process tests check the ownership rule on
SQLite and PostgreSQL: a live process's reservations are never released by another
process's start-up, a dead one's are, at once.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select

from memory.db import create_engine, migrate
from memory.instances import AppInstances
from memory.ledger import BudgetExceeded, Ledger
from memory.models import AppInstance, utcnow
from tests.app_process import ADMIN_PASSWORD, AppProcess, app_rows
from tests.chat_client import ChatSession, login_cookie, outputs
from tests.db_fixtures import db_url  # noqa: F401 - fixture
from tests.fakes.openai_server import FakeOpenAI, RecordedRequest
from tests.waiting import wait_until

# --------------------------------------------------------------------------- in process


@pytest.fixture
async def ledger_db(db_url: str) -> Any:  # noqa: F811
    engine = create_engine(db_url)
    try:
        await migrate(engine)
        yield engine
    finally:
        await engine.dispose()


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


async def _reserve(ledger: Ledger, user: str, thread: str, usd: str = "0.40") -> str:
    entry = await ledger.reserve(
        user_id=user,
        thread_id=thread,
        backend="openai",
        model="gpt-image-2",
        what="image",
        estimate_usd=Decimal(usd),
        message_id=str(uuid.uuid4()),
    )
    return entry.id


@pytest.fixture
def running_pid() -> Iterator[int]:
    """The pid of a process that runs for the whole test."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc.pid
    proc.kill()
    proc.wait()


async def test_a_live_process_keeps_its_reservations_a_dead_ones_are_released(
    ledger_db, running_pid
):
    """Processes sharing one database: start-up releases only what dead ones held."""
    user, thread = str(uuid.uuid4()), str(uuid.uuid4())
    here = "this-boot/pid:[1]"  # the machine every in-process instance claims to be on

    ledgers: dict[str, Ledger] = {}

    def instance(name: str, **kwargs: Any) -> AppInstances:
        ledgers[name] = Ledger(ledger_db)
        return AppInstances(ledger_db, ledgers[name], **{"machine": here, **kwargs})

    # On another machine (pids mean nothing there), beating; and one here whose pid runs.
    remote = instance("remote", machine="other-boot/pid:[7]", pid=4242)
    local = instance("local", pid=running_pid)
    # One here whose pid has exited: killed, with its heartbeat still fresh.
    killed = instance("killed", pid=_dead_pid())
    # Elsewhere, silent for longer than three intervals.
    silent = instance("silent", machine="third-boot/pid:[9]", pid=4242)
    for owner in (remote, local, killed, silent):
        await owner.register()
    held = {name: await _reserve(ledger, user, thread) for name, ledger in ledgers.items()}
    # A reservation whose process's row is gone (it stopped, or was found dead before).
    orphan_ledger = Ledger(ledger_db, instance_id=str(uuid.uuid4()))
    held["orphan"] = await _reserve(orphan_ledger, user, thread)
    # One made before processes owned reservations: only the age-based sweep takes it.
    held["unowned"] = await _reserve(Ledger(ledger_db), user, thread)
    later = utcnow() + timedelta(seconds=5)
    async with ledger_db.begin() as conn:
        await conn.execute(
            AppInstance.__table__.update()
            .where(AppInstance.id == silent.id)
            .values(heartbeat_at=later - timedelta(seconds=31))
        )
    for owner in (remote, local, killed):
        await owner.beat(later)

    starting = instance("starting")  # another app process starting on the same database
    await starting.register(later)
    assert await starting.release_dead(later) == 3

    ledger = Ledger(ledger_db)
    status = {name: (await ledger.entry(rid, user_id=user)).status for name, rid in held.items()}
    assert status == {
        "remote": "reserved",
        "local": "reserved",
        "killed": "released",
        "silent": "released",
        "orphan": "released",
        "unowned": "reserved",
    }
    async with ledger_db.connect() as conn:
        rows = set((await conn.scalars(select(AppInstance.id))).all())
    assert rows == {remote.id, local.id, starting.id}  # the dead are forgotten

    # Released counts as nothing spent: a budget the dead holds would block now allows.
    await ledger.set_budget("user_day", user, Decimal("1.65"), user_id=user)
    entry = await ledger.reserve(
        user_id=user,
        thread_id=thread,
        backend="openai",
        model="gpt-image-2",
        what="image",
        estimate_usd=Decimal("0.40"),
    )
    with pytest.raises(BudgetExceeded, match="reserved \\$1.60"):
        await _reserve(ledger, user, thread, "0.20")
    await ledger.release(entry.id, user_id=user)

    # The live ones settle as usual; the user of the interrupted ones is told once.
    await ledgers["remote"].settle(
        held["remote"], user_id=user, actual_usd=Decimal("0.40"), source="table"
    )
    await starting.refresh_untold()
    assert starting.untold_threads == {thread}
    told = await ledger.claim_interrupted(user_id=user, thread_id=thread)
    assert {entry.id for entry in told} == {held["killed"], held["silent"], held["orphan"]}
    assert await ledger.claim_interrupted(user_id=user, thread_id=thread) == []
    await starting.refresh_untold()
    assert starting.untold_threads == set()

    # A process that was only stalled settles what it finished: that money was spent.
    settled = await ledger.settle(
        held["silent"], user_id=user, actual_usd=Decimal("0.40"), source="table"
    )
    assert (settled.status, settled.interrupted_at) == ("settled", None)
    # The age-based sweep is the last resort for what no process owns.
    assert await ledger.release_stale(timedelta(hours=6), now=later + timedelta(hours=7)) == 1
    assert (await ledger.entry(held["local"], user_id=user)).status == "reserved"


async def test_a_process_found_dead_after_a_stall_comes_back(ledger_db):
    """Its row was removed by another process; its next beat adds it again."""
    stalled = AppInstances(ledger_db, Ledger(ledger_db), machine="a/pid:[1]", pid=10)
    other = AppInstances(ledger_db, Ledger(ledger_db), machine="b/pid:[1]", pid=10)
    await stalled.register()
    await other.register()
    await other.release_dead(utcnow() + timedelta(minutes=1))
    await stalled.beat()
    async with ledger_db.connect() as conn:
        assert await conn.scalar(select(AppInstance.id).where(AppInstance.id == stalled.id))
    await stalled.unregister()


# --------------------------------------------------------------------------- end to end


class HoldingOpenAI(FakeOpenAI):
    """The fake OpenAI, holding the image requests that `hold` picks until `release()`,
    as a provider does while it still works; the others are answered at once."""

    def __init__(self, **kwargs: Any) -> None:
        self.hold: Callable[[RecordedRequest], bool] | None = None
        self.held = 0
        self._count_lock = threading.Lock()
        self._released = threading.Event()
        super().__init__(**kwargs)

    def release(self) -> None:
        self._released.set()

    async def _generate(self, request: Any, recorded: RecordedRequest) -> Any:
        hold = self.hold is not None and self.hold(recorded)
        with self._count_lock:
            self.held += hold
        if hold:
            await asyncio.to_thread(self._released.wait)  # set by the fixture at the latest
        return await super()._generate(request, recorded)


@pytest.fixture
def fake_openai() -> Iterator[HoldingOpenAI]:
    with HoldingOpenAI() as fake:
        yield fake
        fake.release()


async def _send_and_crash(
    app: AppProcess, chat: ChatSession, fake: HoldingOpenAI, text: str, stored: int = 0
):
    """Send `text`; once an image request is held at the provider and `stored` images
    are stored, kill -9 the app."""
    sending = asyncio.create_task(chat.send(text, timeout=300))

    typed = text.replace("'", "''")
    saved = f"SELECT id FROM steps WHERE type = 'user_message' AND output = '{typed}'"

    def ready() -> bool:
        if sending.done():
            return True
        # The user's message must be stored too: the notice after the crash quotes it,
        # and Chainlit writes that step in the background, racing the provider request.
        return (
            fake.held >= 1
            and len(app_rows(app, "SELECT id FROM images")) >= stored
            and bool(app_rows(app, saved))
        )

    await wait_until(
        ready, 60, f"a held image request, {stored} stored image(s) and the saved message"
    )
    assert not sending.done(), outputs(sending.result())
    [entry] = app_rows(app, "SELECT * FROM ledger_entries")
    assert entry["status"] == "reserved" and entry["instance_id"]
    assert app.proc is not None
    app.proc.kill()  # SIGKILL: no clean-up of any kind
    app.proc.wait()
    app.proc = None
    sending.cancel()
    with pytest.raises((asyncio.CancelledError, Exception)):
        await sending
    return entry


async def _resume_and_read_notice(app: AppProcess, thread_id: str) -> tuple[ChatSession, dict]:
    resumed = ChatSession(app.base_url, login_cookie(app.base_url, "admin", ADMIN_PASSWORD))
    await resumed.connect(resume_thread=thread_id)

    def notice() -> dict | None:
        return next(
            (m for m in resumed.messages.values() if "interrupted" in (m.get("output") or "")),
            None,
        )

    await wait_until(notice, 20, "the interruption notice")
    return resumed, notice()  # type: ignore[return-value]


@pytest.mark.slow
async def test_a_generation_killed_mid_request_is_released_and_told(make_app, fake_openai):
    app = make_app()
    chat = ChatSession(app.base_url, login_cookie(app.base_url, "admin", ADMIN_PASSWORD))
    await chat.connect()
    chat.ask_answer = "confirm_spend"
    fake_openai.hold = lambda request: True
    entry = await _send_and_crash(app, chat, fake_openai, "/image a fox in the snow")
    estimate = Decimal(str(entry["estimate_usd"]))

    # A day budget the dead reservation would use up: it held one request, there is room
    # for one and a half.
    app.env["ATELIER_BUDGET_USER_DAY_USD"] = str((estimate * 3 / 2).quantize(Decimal("0.0001")))
    app.start()
    [row] = app_rows(app, "SELECT * FROM ledger_entries")
    assert row["status"] == "released" and row["interrupted_at"] is not None
    instances = {r["id"] for r in app_rows(app, "SELECT id FROM app_instances")}
    assert len(instances) == 1 and entry["instance_id"] not in instances

    resumed, notice = await _resume_and_read_notice(app, chat.thread_id)
    text = notice["output"]
    assert "“/image a fox in the snow”" in text and "Nothing was counted" in text, text
    assert "Send your message again" in text

    fake_openai.hold = None
    fake_openai.release()
    reply = outputs(await resumed.send("/image a fox in the snow"))
    assert not any("over the budget" in t or "interrupted" in t for t in reply), reply
    assert len(app_rows(app, "SELECT * FROM images")) == 1
    statuses = [r["status"] for r in app_rows(app, "SELECT * FROM ledger_entries")]
    assert sorted(statuses) == ["released", "settled"]
    await resumed.close()

    # Told once: another visit says nothing more about it.
    again = ChatSession(app.base_url, resumed.cookie)
    await again.connect(resume_thread=chat.thread_id)
    await again.send("/help")
    assert not any("interrupted" in (m.get("output") or "") for m in again.messages.values())
    await again.close()


@pytest.mark.slow
async def test_a_curation_killed_mid_way_shows_its_candidates(make_app, fake_openai):
    app = make_app()
    chat = ChatSession(app.base_url, login_cookie(app.base_url, "admin", ADMIN_PASSWORD))
    await chat.connect()
    chat.ask_answer = "confirm_spend"
    # 12 candidates take two requests (10 at most each): the first is answered, the
    # provider is still working on the other when the app is killed.
    fake_openai.hold = lambda request: (request.json or {}).get("n", 1) < 10
    await _send_and_crash(app, chat, fake_openai, "/curate a red apple --n 12", stored=10)
    made = app_rows(app, "SELECT id FROM images ORDER BY created_at")
    assert len(made) == 10 and app_rows(app, "SELECT * FROM curations") == []

    app.start()
    assert [r["status"] for r in app_rows(app, "SELECT * FROM ledger_entries")] == ["released"]
    resumed, notice = await _resume_and_read_notice(app, chat.thread_id)
    text = notice["output"]
    assert "A curation was interrupted" in text and "“/curate a red apple --n 12”" in text
    assert f"made {len(made)} candidate(s)" in text, text
    for row in made:
        assert f"`{row['id'][:8]}`" in text

    # ...and shown: every stored candidate, as an image of that message.
    def shown() -> list[str]:
        return [e["name"] for e in resumed.elements if e.get("forId") == notice["id"]]

    await wait_until(lambda: len(shown()) == len(made), 20, "the candidates to be shown")
    assert shown() == [f"{row['id']}.png" for row in made]

    # The command it gives ranks the candidates that were made, with no provider call.
    command = re.search(r"`(/curate [^`]*--images [0-9a-f,]+)`", text)
    assert command, text
    requests = len(fake_openai.requests_to("/images/generations"))
    reply = outputs(await resumed.send(command.group(1)))
    assert any(f"Curated {len(made)} candidate(s)" in t for t in reply), reply
    assert len(fake_openai.requests_to("/images/generations")) == requests
    ranked = app_rows(app, "SELECT image_id FROM curation_candidates")
    assert {r["image_id"] for r in ranked} == {r["id"] for r in made}
    assert [r["status"] for r in app_rows(app, "SELECT * FROM ledger_entries")] == ["released"]
    await resumed.close()
