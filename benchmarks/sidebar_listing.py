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
from sqlalchemy import insert  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from memory.data_layer import AtelierDataLayer  # noqa: E402
from memory.db import create_engine, migrate  # noqa: E402
from memory.media_store import MediaStore  # noqa: E402
from memory.models import Step, Thread, User  # noqa: E402
from memory.requester import Requester  # noqa: E402

PAGE_SIZE = 20
TARGET_RATIO = 20.0
TARGET_P95_MS = 50.0
CHUNK = 5_000

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
    """One user's N threads x S steps, the same for both layers (seeded)."""

    def __init__(self, threads: int, steps: int, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.user_id = self._uuid()
        self.identifier = "bench-user"
        self.steps_per_thread = steps
        base = datetime(2025, 1, 1, tzinfo=UTC)
        self.threads = [
            FakeThread(
                self._uuid(), f"Conversation {i}: {self._text(4)}", base + timedelta(minutes=i)
            )
            for i in range(threads)
        ]

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _text(self, words: int) -> str:
        return " ".join(self.rng.choice(WORDS) for _ in range(words))

    def steps(self) -> Iterator[FakeStep]:
        """Steps in insertion order; createdAt follows the thread's creation."""
        rng = random.Random(11)
        for thread in self.threads:
            for j in range(self.steps_per_thread):
                user_turn = j % 2 == 0
                stamp = (thread.created_at + timedelta(seconds=j)).replace(tzinfo=None)
                text = " ".join(rng.choice(WORDS) for _ in range(12 if user_turn else 120))
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
    await migrate(engine)
    version = time.time_ns()
    async with engine.begin() as conn:
        await conn.execute(
            insert(User),
            [
                {
                    "id": data.user_id,
                    "identifier": data.identifier,
                    "role": "user",
                    "meta": {},
                    "created_at": datetime.now(UTC),
                }
            ],
        )
        for batch in chunks(iter(data.threads)):
            await conn.execute(
                insert(Thread),
                [
                    {
                        "id": t.id,
                        "user_id": data.user_id,
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
        db.execute(
            'INSERT INTO users ("id", "identifier", "metadata", "createdAt") VALUES (?, ?, ?, ?)',
            (data.user_id, data.identifier, "{}", datetime.now(UTC).isoformat()),
        )
        db.executemany(
            'INSERT INTO threads ("id", "createdAt", "name", "userId", "userIdentifier", '
            '"metadata") VALUES (?, ?, ?, ?, ?, ?)',
            (
                (
                    t.id,
                    t.created_at.replace(tzinfo=None).isoformat() + "Z",
                    t.name,
                    data.user_id,
                    data.identifier,
                    "{}",
                )
                for t in data.threads
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
    data = Dataset(args.threads, args.steps)
    total_steps = args.threads * args.steps
    print(
        f"Sidebar listing: 1 user, {args.threads:,} threads x {args.steps} steps "
        f"({total_steps:,} steps), first page of {PAGE_SIZE}, {args.runs} runs after 1 warm-up"
    )
    with tempfile.TemporaryDirectory(prefix="atelier-bench-") as tmp:
        work = Path(tmp)
        drop_ours: Callable[[], Awaitable[None]] | None = None
        if args.database_url:
            ours_url, drop_ours = await scratch_postgres(args.database_url)
        else:
            ours_url = f"sqlite+aiosqlite:///{work / 'ours.db'}"
        engine = create_engine(ours_url)
        stock = None
        try:
            started = time.perf_counter()
            await fill_ours(engine, data)
            fill_ours_s = time.perf_counter() - started
            started = time.perf_counter()
            await asyncio.to_thread(fill_stock, work / "stock.db", data)
            fill_stock_s = time.perf_counter() - started
            print(
                f"fill: ours ({engine.dialect.name}) {fill_ours_s:.1f} s, "
                f"stock (sqlite) {fill_stock_s:.1f} s"
            )

            ours_layer = AtelierDataLayer(
                engine,
                MediaStore(work / "media"),
                "bench-secret",
                requester=lambda: Requester.user(data.identifier, data.user_id),
            )
            ours = await time_listing(
                f"ours  AtelierDataLayer ({engine.dialect.name})",
                ours_layer.list_threads,
                data.user_id,
                args.runs,
            )
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
    return 0 if ratio_ok and p95_ok and same else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=20, help="steps per thread")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument(
        "--database-url",
        help="run our side on PostgreSQL (postgresql+asyncpg://...): a scratch database "
        "is created on that server and dropped afterwards",
    )
    args = parser.parse_args()
    if args.threads < PAGE_SIZE or args.steps < 1 or args.runs < 1:
        parser.error(f"need --threads >= {PAGE_SIZE}, --steps >= 1 and --runs >= 1")
    if args.database_url and not args.database_url.startswith("postgresql"):
        parser.error("--database-url must be a postgresql+asyncpg:// URL (SQLite is the default)")
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
