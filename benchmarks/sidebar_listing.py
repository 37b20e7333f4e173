"""Sidebar listing: AtelierDataLayer.list_threads against Chainlit's stock SQLAlchemyDataLayer.

One user owns N threads x S steps. Both layers get the same data in their own schema
(ours through the project's migrations, the stock one through the CREATE TABLE
statements from Chainlit's docs plus the `steps."autoCollapse"` and `"modes"` columns
that 2.12 writes), each in its own SQLite file in a temporary folder. Then the first
sidebar page (Pagination(first=20), ThreadFilter(userId=...)) is listed `--runs` times
with each layer after one warm-up call.

    .venv/bin/python benchmarks/sidebar_listing.py [--threads 10000 --steps 20 --runs 30]
    .venv/bin/python benchmarks/sidebar_listing.py \
        --database-url postgresql+asyncpg://postgres@127.0.0.1:5432/test

With --database-url (PostgreSQL) our side runs in a scratch database created on that
server and dropped afterwards; the stock side stays on SQLite, where its sidebar query
was measured in the shared notes. Exit status 1 when a target is missed.
Targets: stock/ours >= 20x on both median and p95, and our p95 < 50 ms.

Search: other users own --other-threads more threads, and words of known frequency are
planted in the messages. Our database is filled at revision 0009, before the search
index; each search is timed there through list_threads with that revision's search
condition (the baseline), then the database is migrated (0010 builds the index; its
time is shown) and the same searches are timed through today's list_threads. Both must
list the same page.
PostgreSQL is vacuumed and analyzed after the fill and after the migration, as
autovacuum would have. Target: on PostgreSQL, p95 < 50 ms for every search of three or
more characters, but for one stress case that is shown outside it (a word in half the
other users' messages and 0.1 % of this user's). --explain prints each search's plan.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# Importing chainlit writes .chainlit/ into its app root: keep that the repository's.
os.environ.setdefault("CHAINLIT_APP_ROOT", str(REPO))

from chainlit.types import Pagination, ThreadFilter  # noqa: E402
from sqlalchemy import event, exists, insert, or_  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from memory.data_layer import AtelierDataLayer  # noqa: E402
from memory.db import create_engine, migrate  # noqa: E402
from memory.media_store import MediaStore  # noqa: E402
from memory.models import Step, Thread, User  # noqa: E402
from memory.requester import Requester  # noqa: E402

PAGE_SIZE = 20
TARGET_RATIO = 20.0
TARGET_P95_MS = 50.0
TARGET_SEARCH_P95_MS = 50.0  # PostgreSQL, searches of 3+ characters
CHUNK = 5_000
BEFORE_SEARCH_INDEX = "0009"  # the revision before the search index (0010)

# Planted words: RARE in a few messages of the user's (oldest threads too) and of
# others'; UNCOMMON in 1 % of everyone's messages; ELSEWHERE in half of the other users'
# messages but 0.1 % of the user's (the index finds many, nearly all someone else's).
RARE, UNCOMMON, ELSEWHERE = "zanzibar", "ultramarine", "vermilion"
RARE_PER_USER = 5

# Chainlit's documented schema (docs.chainlit.io/data-layers/sqlalchemy), plus the
# columns the 2.12 layer writes that the docs leave out ("autoCollapse", "modes").
STOCK_SCHEMA = """
CREATE TABLE users (
    "id" UUID PRIMARY KEY,
    "identifier" TEXT NOT NULL UNIQUE,
    "metadata" JSONB NOT NULL,
    "createdAt" TEXT
);
CREATE TABLE IF NOT EXISTS threads (
    "id" UUID PRIMARY KEY,
    "createdAt" TEXT,
    "name" TEXT,
    "userId" UUID,
    "userIdentifier" TEXT,
    "tags" TEXT[],
    "metadata" JSONB,
    FOREIGN KEY ("userId") REFERENCES users("id") ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS steps (
    "id" UUID PRIMARY KEY,
    "name" TEXT NOT NULL,
    "type" TEXT NOT NULL,
    "threadId" UUID NOT NULL,
    "parentId" UUID,
    "streaming" BOOLEAN NOT NULL,
    "waitForAnswer" BOOLEAN,
    "isError" BOOLEAN,
    "metadata" JSONB,
    "tags" TEXT[],
    "input" TEXT,
    "output" TEXT,
    "createdAt" TEXT,
    "command" TEXT,
    "start" TEXT,
    "end" TEXT,
    "generation" JSONB,
    "showInput" TEXT,
    "language" TEXT,
    "indent" INT,
    "defaultOpen" BOOLEAN,
    "autoCollapse" BOOLEAN,
    "modes" JSONB,
    FOREIGN KEY ("threadId") REFERENCES threads("id") ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS elements (
    "id" UUID PRIMARY KEY,
    "threadId" UUID,
    "type" TEXT,
    "url" TEXT,
    "chainlitKey" TEXT,
    "name" TEXT NOT NULL,
    "display" TEXT,
    "objectKey" TEXT,
    "size" TEXT,
    "page" INT,
    "language" TEXT,
    "forId" UUID,
    "mime" TEXT,
    "props" JSONB,
    FOREIGN KEY ("threadId") REFERENCES threads("id") ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS feedbacks (
    "id" UUID PRIMARY KEY,
    "forId" UUID NOT NULL,
    "threadId" UUID NOT NULL,
    "value" INT NOT NULL,
    "comment" TEXT,
    FOREIGN KEY ("threadId") REFERENCES threads("id") ON DELETE CASCADE
);
"""

PROSE = (
    "a watercolor fox in a misty forest at dawn, soft light, muted palette, wide shot "
    "make it warmer and add a small red lantern hanging from a branch near the fox "
    "here is the new version with the lantern; I kept the seed and raised the guidance"
)
WORDS = PROSE.split()


# ------------------------------------------------------------------------- data


@dataclass(frozen=True)
class FakeThread:
    id: str
    user_id: str
    name: str
    created_at: datetime


@dataclass(frozen=True)
class FakeStep:
    id: str
    thread_id: str
    type: str
    name: str
    input: str
    output: str
    created_at: str


class Dataset:
    """One user's N threads x S steps, and other users' threads, the same for both layers
    (seeded)."""

    def __init__(
        self, threads: int, steps: int, other_users: int, other_threads: int, seed: int = 7
    ) -> None:
        self.rng = random.Random(seed)
        self.user_id = self._uuid()
        self.identifier = "bench-user"
        self.others = [(self._uuid(), f"bench-other-{k}") for k in range(other_users)]
        self.steps_per_thread = steps
        base = datetime(2025, 1, 1, tzinfo=UTC)
        self.threads = [
            FakeThread(
                self._uuid(),
                self.user_id,
                f"Conversation {i}: {self._text(4)}",
                base + timedelta(minutes=i),
            )
            for i in range(threads)
        ]
        self.other_threads = [
            FakeThread(
                self._uuid(),
                self.others[i % len(self.others)][0],
                f"Conversation {i}: {self._text(4)}",
                base + timedelta(minutes=i, seconds=30),
            )
            for i in range(other_threads if self.others else 0)
        ]
        # The RARE word: in the first message of a few threads spread over each side.
        self.rare = {
            group[len(group) * (k + 1) // (RARE_PER_USER + 1)].id
            for group in (self.threads, self.other_threads)
            if group
            for k in range(RARE_PER_USER)
        }

    @property
    def all_threads(self) -> list[FakeThread]:
        return self.threads + self.other_threads

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _text(self, words: int) -> str:
        return " ".join(self.rng.choice(WORDS) for _ in range(words))

    def steps(self) -> Iterator[FakeStep]:
        """Steps in insertion order; createdAt follows the thread's creation."""
        rng = random.Random(11)
        for thread in self.all_threads:
            mine = thread.user_id == self.user_id
            for j in range(self.steps_per_thread):
                user_turn = j % 2 == 0
                stamp = (thread.created_at + timedelta(seconds=j)).replace(tzinfo=None)
                text = " ".join(rng.choice(WORDS) for _ in range(12 if user_turn else 120))
                if rng.random() < 0.01:
                    text += f" {UNCOMMON}"
                if rng.random() < (0.001 if mine else 0.5):
                    text += f" {ELSEWHERE}"
                if j == 0 and thread.id in self.rare:
                    text += f" {RARE}"
                yield FakeStep(
                    id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    thread_id=thread.id,
                    type="user_message" if user_turn else "assistant_message",
                    name="user" if user_turn else "Atelier",
                    input="",
                    output=text,
                    created_at=stamp.isoformat(timespec="milliseconds") + "Z",
                )


def chunks(rows: Iterator[Any], size: int = CHUNK) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


# -------------------------------------------------------------------- our side


async def fill_ours(engine: Any, data: Dataset) -> None:
    """Fill at the revision the engine's database is at (the caller migrates)."""
    version = time.time_ns()
    async with engine.begin() as conn:
        await conn.execute(
            insert(User),
            [
                {
                    "id": user_id,
                    "identifier": identifier,
                    "role": "user",
                    "meta": {},
                    "created_at": datetime.now(UTC),
                }
                for user_id, identifier in [(data.user_id, data.identifier), *data.others]
            ],
        )
        for batch in chunks(iter(data.all_threads)):
            await conn.execute(
                insert(Thread),
                [
                    {
                        "id": t.id,
                        "user_id": t.user_id,
                        "name": t.name,
                        "tags": None,
                        "meta": {},
                        "created_at": t.created_at,
                        "updated_at": t.created_at,
                    }
                    for t in batch
                ],
            )
        position = 0
        for batch in chunks(data.steps()):
            rows = []
            for s in batch:
                position += 1
                rows.append(
                    {
                        "id": s.id,
                        "thread_id": s.thread_id,
                        "parent_id": None,
                        "name": s.name,
                        "type": s.type,
                        "input": s.input,
                        "output": s.output,
                        "meta": {},
                        "tags": None,
                        "generation": None,
                        "modes": None,
                        "command": None,
                        "is_error": False,
                        "streaming": False,
                        "wait_for_answer": None,
                        "show_input": None,
                        "language": None,
                        "default_open": False,
                        "auto_collapse": False,
                        "created_at": s.created_at,
                        "start_at": s.created_at,
                        "end_at": s.created_at,
                        "position": version + position,
                        "write_version": version + position,
                    }
                )
            await conn.execute(insert(Step), rows)


# ------------------------------------------------------------------- stock side


def fill_stock(path: Path, data: Dataset) -> None:
    """The stock schema is plain SQL, so the stdlib driver fills it fastest."""
    db = sqlite3.connect(path)
    try:
        db.executescript(STOCK_SCHEMA)
        db.executemany(
            'INSERT INTO users ("id", "identifier", "metadata", "createdAt") VALUES (?, ?, ?, ?)',
            (
                (user_id, identifier, "{}", datetime.now(UTC).isoformat())
                for user_id, identifier in [(data.user_id, data.identifier), *data.others]
            ),
        )
        identifiers = dict([(data.user_id, data.identifier), *data.others])
        db.executemany(
            'INSERT INTO threads ("id", "createdAt", "name", "userId", "userIdentifier", '
            '"metadata") VALUES (?, ?, ?, ?, ?, ?)',
            (
                (
                    t.id,
                    t.created_at.replace(tzinfo=None).isoformat() + "Z",
                    t.name,
                    t.user_id,
                    identifiers[t.user_id],
                    "{}",
                )
                for t in data.all_threads
            ),
        )
        for batch in chunks(data.steps()):
            db.executemany(
                'INSERT INTO steps ("id", "name", "type", "threadId", "streaming", "isError", '
                '"metadata", "input", "output", "createdAt", "start", "end", "generation", '
                '"showInput", "defaultOpen", "autoCollapse") '
                "VALUES (?, ?, ?, ?, 0, 0, '{}', ?, ?, ?, ?, ?, '{}', 'false', 0, 0)",
                (
                    (
                        s.id,
                        s.name,
                        s.type,
                        s.thread_id,
                        s.input,
                        s.output,
                        s.created_at,
                        s.created_at,
                        s.created_at,
                    )
                    for s in batch
                ),
            )
        db.commit()
    finally:
        db.close()


def stock_layer(path: Path) -> Any:
    """Chainlit's own layer. list_threads needs no Chainlit context and no storage
    client (without one it only logs that elements will not be persisted)."""
    import logging

    from chainlit.data.sql_alchemy import SQLAlchemyDataLayer

    logging.getLogger("chainlit").setLevel(logging.ERROR)
    return SQLAlchemyDataLayer(conninfo=f"sqlite+aiosqlite:///{path}")


# --------------------------------------------------------------------- timing


@dataclass
class Timing:
    label: str
    samples_ms: list[float]
    page_bytes: int
    page_ids: list[str]

    @property
    def median(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def p95(self) -> float:
        ordered = sorted(self.samples_ms)
        return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


async def time_listing(
    label: str,
    list_threads: Callable[[Pagination, ThreadFilter], Awaitable[Any]],
    user_id: str,
    runs: int,
) -> Timing:
    pagination, filters = Pagination(first=PAGE_SIZE), ThreadFilter(userId=user_id)
    page = await list_threads(pagination, filters)  # warm-up: connections, caches
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        page = await list_threads(pagination, filters)
        samples.append((time.perf_counter() - start) * 1000)
    body = json.dumps(page.to_dict(), default=str).encode()
    return Timing(label, samples, len(body), [t["id"] for t in page.data])


# --------------------------------------------------------------------- search


@dataclass(frozen=True)
class Search:
    label: str
    query: str
    in_target: bool = True


def searches(data: Dataset) -> list[Search]:
    named = data.threads[len(data.threads) * 2 // 3].name.split(":")[0] + ":"
    return [
        Search(f"rare word ({RARE_PER_USER} of the user's messages)", RARE),
        Search("uncommon word (1% of messages)", UNCOMMON),
        Search("common word (most messages)", "lantern"),
        # Stress case, outside the target: the planner expects a page of the user's threads
        # to match as soon as everyone's messages do, so it walks them (about 800 here).
        Search("others' word (half theirs, 0.1% the user's)*", ELSEWHERE, in_target=False),
        Search("absent phrase", "no such words"),
        Search("one thread's name", named),
        Search("two characters (no trigram)", "fo"),
    ]


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class BaselineSearchLayer(AtelierDataLayer):
    """list_threads as it is, but with the sidebar search of revision 0009 (before the
    index): one OR of the thread's name and an EXISTS over its messages, both ILIKE."""

    async def _search(self, session: Any, search: str, *_: Any) -> Any:
        pattern = f"%{_escape_like(search)}%"
        in_messages = exists().where(
            Step.thread_id == Thread.id,
            Step.type.in_(("user_message", "assistant_message")),
            Step.output.ilike(pattern, escape="\\"),
        )
        return or_(Thread.name.ilike(pattern, escape="\\"), in_messages)


async def time_calls(label: str, call: Callable[[], Awaitable[list[str]]], runs: int) -> Timing:
    ids = await call()  # warm-up
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        ids = await call()
        samples.append((time.perf_counter() - start) * 1000)
    return Timing(label, samples, 0, ids)


async def time_search(layer: AtelierDataLayer, user_id: str, search: str, runs: int) -> Timing:
    async def call() -> list[str]:
        page = await layer.list_threads(
            Pagination(first=PAGE_SIZE), ThreadFilter(userId=user_id, search=search)
        )
        return [t["id"] for t in page.data]

    return await time_calls(search, call, runs)


async def settle(engine: Any) -> None:
    """PostgreSQL: VACUUM ANALYZE, as autovacuum keeps a live database (GIN statistics and
    pending lists included). SQLite: nothing; the app never runs ANALYZE there."""
    if engine.dialect.name != "postgresql":
        return
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.exec_driver_sql("VACUUM ANALYZE")


class LastListing:
    """Records the sidebar query list_threads sends, to EXPLAIN it afterwards."""

    def __init__(self, engine: Any) -> None:
        self.statement: str | None = None
        self.parameters: Any = None
        event.listen(engine.sync_engine, "before_cursor_execute", self._seen)

    def _seen(self, _conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "JOIN users ON" in statement and "LIMIT" in statement:
            self.statement, self.parameters = statement, parameters


async def explain(engine: Any, listing: LastListing) -> list[str]:
    """The plan of the last sidebar query: EXPLAIN ANALYZE's node lines on PostgreSQL,
    EXPLAIN QUERY PLAN on SQLite."""
    if listing.statement is None:
        return []
    postgres = engine.dialect.name == "postgresql"
    prefix = "EXPLAIN (ANALYZE, COSTS OFF) " if postgres else "EXPLAIN QUERY PLAN "
    async with engine.connect() as conn:
        if postgres:
            await conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_custom_plan")
        rows = (await conn.exec_driver_sql(prefix + listing.statement, listing.parameters)).all()
    if not postgres:
        return [str(row[-1]) for row in rows]
    keep = ("Scan", "Join", "Loop", "Aggregate", "Filter", "Cond", "Time", "Removed", "Limit")
    return [row[0] for row in rows if any(word in row[0] for word in keep)]


def print_searches(
    database: str, results: list[tuple[Search, Timing, Timing]], plans: dict[str, list[str]]
) -> bool:
    """The before/after table; True when the pages agree and (PostgreSQL) targets are met."""
    print(f"\nSearch ({database}): p50 / p95 in ms, first page of {PAGE_SIZE}")
    print(f"{'search':<46} {'listed':>6} {'before (0009)':>17} {'after':>15} {'p95':>7}")
    ok = True
    for search, old, new in results:
        if database == "postgresql" and search.in_target and len(search.query) >= 3:
            ok = ok and new.p95 < TARGET_SEARCH_P95_MS
        same = old.page_ids == new.page_ids
        ok = ok and same
        print(
            f"{search.label[:46]:<46} {len(new.page_ids):>6} "
            f"{old.median:8.1f} /{old.p95:7.1f} {new.median:6.1f} /{new.p95:7.1f} "
            f"{old.p95 / new.p95:6.1f}x{'' if same else '  DIFFERENT PAGE'}"
        )
        for line in plans.get(search.query, []):
            print(f"      {line}")
    print("* a stress case, shown but outside the target")
    return ok


# ----------------------------------------------------------------------- main


async def scratch_postgres(admin_url: str) -> tuple[str, Callable[[], Awaitable[None]]]:
    """Create an empty database next to `admin_url`; return its URL and a dropper."""
    import asyncpg

    name = f"atelier_bench_{uuid.uuid4().hex[:12]}"
    dsn = make_url(admin_url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()

    async def drop() -> None:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    return url, drop


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


async def run(args: argparse.Namespace) -> int:
    data = Dataset(args.threads, args.steps, args.other_users, args.other_threads)
    total_steps = len(data.all_threads) * args.steps
    print(
        f"Sidebar listing: 1 user, {args.threads:,} threads x {args.steps} steps "
        f"({args.threads * args.steps:,} steps), first page of {PAGE_SIZE}, {args.runs} runs "
        f"after 1 warm-up; {len(data.others)} other users own {len(data.other_threads):,} "
        f"more threads ({total_steps:,} steps in all)"
    )
    with tempfile.TemporaryDirectory(prefix="atelier-bench-") as tmp:
        work = Path(tmp)
        drop_ours: Callable[[], Awaitable[None]] | None = None
        if args.database_url:
            ours_url, drop_ours = await scratch_postgres(args.database_url)
        else:
            ours_url = f"sqlite+aiosqlite:///{work / 'ours.db'}"
        engine = create_engine(ours_url)
        database = engine.dialect.name
        stock = None
        try:
            await migrate(engine, BEFORE_SEARCH_INDEX)
            started = time.perf_counter()
            await fill_ours(engine, data)
            await settle(engine)
            fill_ours_s = time.perf_counter() - started
            started = time.perf_counter()
            await asyncio.to_thread(fill_stock, work / "stock.db", data)
            fill_stock_s = time.perf_counter() - started
            print(
                f"fill: ours ({database}, revision {BEFORE_SEARCH_INDEX}) {fill_ours_s:.1f} s, "
                f"stock (sqlite) {fill_stock_s:.1f} s"
            )

            baseline = BaselineSearchLayer(
                engine,
                MediaStore(work / "media"),
                "bench-secret",
                requester=lambda: Requester.user(data.identifier, data.user_id),
            )
            before = [
                await time_search(baseline, data.user_id, search.query, args.search_runs)
                for search in searches(data)
            ]
            started = time.perf_counter()
            await migrate(engine)
            migrate_s = time.perf_counter() - started
            await settle(engine)
            print(f"migration to head (0010 builds the search index): {migrate_s:.1f} s")

            ours_layer = AtelierDataLayer(
                engine,
                MediaStore(work / "media"),
                "bench-secret",
                requester=lambda: Requester.user(data.identifier, data.user_id),
            )
            ours = await time_listing(
                f"ours  AtelierDataLayer ({database})",
                ours_layer.list_threads,
                data.user_id,
                args.runs,
            )
            listing = LastListing(engine)
            after, plans = [], {}
            for search in searches(data):
                after.append(
                    await time_search(ours_layer, data.user_id, search.query, args.search_runs)
                )
                if args.explain:
                    plans[search.query] = await explain(engine, listing)
            stock = stock_layer(work / "stock.db")
            theirs = await time_listing(
                "stock SQLAlchemyDataLayer (sqlite)", stock.list_threads, data.user_id, args.runs
            )
        finally:
            await engine.dispose()
            if stock is not None:
                await stock.engine.dispose()
            if drop_ours is not None:
                await drop_ours()

    for t in (ours, theirs):
        print(
            f"{t.label:<38} median={t.median:9.1f}ms  p95={t.p95:9.1f}ms  "
            f"page={t.page_bytes / 1024:8.1f} KiB"
        )
    same = ours.page_ids == theirs.page_ids
    print(f"same first page from both layers: {'yes' if same else 'NO'}")
    ratio_median = theirs.median / ours.median
    ratio_p95 = theirs.p95 / ours.p95
    ratio_ok = min(ratio_median, ratio_p95) >= TARGET_RATIO
    p95_ok = ours.p95 < TARGET_P95_MS
    print(
        f"ours p95={ours.p95:.1f}ms stock p95={theirs.p95:.0f}ms ratio={ratio_p95:.0f}x "
        f"(median ratio {ratio_median:.0f}x)  target ratio>={TARGET_RATIO:.0f}x: "
        f"{verdict(ratio_ok)}"
    )
    print(f"ours p95={ours.p95:.1f}ms  target p95<{TARGET_P95_MS:.0f}ms: {verdict(p95_ok)}")

    search_ok = print_searches(
        database, list(zip(searches(data), before, after, strict=True)), plans
    )
    if database == "postgresql":
        print(
            f"search at {total_steps:,} steps: every search of 3+ characters but the stress "
            f"case p95 < {TARGET_SEARCH_P95_MS:.0f} ms, all the same page as before: "
            f"{verdict(search_ok)}"
        )
    else:
        print(
            f"search at {total_steps:,} steps: same page as before: {verdict(search_ok)} "
            "(the p95 target is PostgreSQL's)"
        )
    return 0 if ratio_ok and p95_ok and same and search_ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=20, help="steps per thread")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--search-runs", type=int, default=20, help="runs of each search")
    parser.add_argument("--other-users", type=int, default=4)
    parser.add_argument(
        "--other-threads", type=int, default=1_000, help="threads of the other users, in all"
    )
    parser.add_argument("--explain", action="store_true", help="print each search's plan")
    parser.add_argument(
        "--database-url",
        help="run our side on PostgreSQL (postgresql+asyncpg://...): a scratch database "
        "is created on that server and dropped afterwards",
    )
    args = parser.parse_args()
    if args.threads < PAGE_SIZE or args.steps < 1 or args.runs < 1 or args.search_runs < 1:
        parser.error(
            f"need --threads >= {PAGE_SIZE}, --steps >= 1, --runs >= 1 and --search-runs >= 1"
        )
    if args.database_url and not args.database_url.startswith("postgresql"):
        parser.error("--database-url must be a postgresql+asyncpg:// URL (SQLite is the default)")
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
