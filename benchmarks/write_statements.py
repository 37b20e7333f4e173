"""Statements per write: what one step write and one ledger reserve/settle cost the database.

Every statement of a write transaction is a round trip, and on SQLite it is taken while
holding the process's one write lock, so each one is time every other writer waits. This
counts the SQL statements (BEGIN included) the data layer and the ledger send for:

- a message step in a new conversation, a new step and an update of a step in an
  existing one (Chainlit writes every message this way, several times per turn);
- a ledger reservation (owner check, budget sums, insert) and its settlement;

on SQLite and, when it answers, PostgreSQL (a database made for the run and dropped).
The baseline is the floor: one statement per write (two with SQLite's BEGIN).

    .venv/bin/python benchmarks/write_statements.py [--postgres-url URL]

Before issue 14: a step write took 5 statements (thread, owner, step's thread, upsert,
activity time), a reservation 7 on PostgreSQL, a settlement 2.

Targets: a step write in an existing conversation at most one above the floor, a
settlement at the floor, a reservation at most 3 above it. Exit 1 when missed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import uuid
from decimal import Decimal
from pathlib import Path

from sqlalchemy import event

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from memory.data_layer import AtelierDataLayer  # noqa: E402
from memory.db import create_engine, migrate, session_factory  # noqa: E402
from memory.ledger import Ledger  # noqa: E402
from memory.media_store import MediaStore  # noqa: E402
from memory.requester import Requester  # noqa: E402
from memory.users import UserStore  # noqa: E402
from tests.db_fixtures import step_dict  # noqa: E402

POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
# Statements allowed beyond the floor, per operation (None: reported only).
TARGETS = {
    "step, new conversation": None,
    "step, new": 1,  # the conversation's activity time, bumped only if it is the user's
    "step, update": 1,
    "ledger reserve": 3,  # the scopes' lock, owner and sums, budgets, then the insert
    "ledger settle": 0,
}


async def count(url: str, media_dir: Path) -> dict[str, list[str]]:
    """The statements each operation sent, by operation."""
    engine = create_engine(url)
    try:
        await migrate(engine)
        account = await UserStore(session_factory(engine)).add(
            "bench-" + uuid.uuid4().hex[:8], "bench-password-123"
        )
        who = Requester.user(account.identifier, account.id)
        layer = AtelierDataLayer(engine, MediaStore(media_dir), "s" * 40, requester=lambda: who)
        ledger = Ledger(engine)
        sent: list[str] = []

        def record(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
            sent.append(statement.split(None, 1)[0].upper())

        event.listen(engine.sync_engine, "before_cursor_execute", record)
        thread_id = str(uuid.uuid4())
        step = step_dict(thread_id)
        found: dict[str, list[str]] = {}

        async def measure(label: str, work) -> object:  # type: ignore[no-untyped-def]
            start = len(sent)
            result = await work
            found[label] = sent[start:]
            return result

        await measure(
            "step, new conversation",
            layer.write_step(step_dict(thread_id, type="user_message"), 1),
        )
        await measure("step, new", layer.write_step(step, 2))
        await measure("step, update", layer.write_step({**step, "output": "more"}, 3))
        reservation = await measure(
            "ledger reserve",
            ledger.reserve(
                user_id=account.id,
                thread_id=thread_id,
                backend="openai",
                model="gpt-image-2",
                what="image",
                estimate_usd=Decimal("0.04"),
            ),
        )
        await measure(
            "ledger settle",
            ledger.settle(
                reservation.id,  # type: ignore[attr-defined]
                user_id=account.id,
                actual_usd=Decimal("0.03"),
                source="reported",
            ),
        )
        return found
    finally:
        await engine.dispose()


async def postgres_database(admin_url: str, name: str, create: bool) -> bool:
    import asyncpg

    dsn = admin_url.replace("postgresql+asyncpg://", "postgresql://")
    try:
        conn = await asyncpg.connect(dsn, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"PostgreSQL not reachable ({type(exc).__name__}); SQLite only.")
        return False
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        if create:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return True


def report(database: str, found: dict[str, list[str]], floor: int) -> bool:
    print(f"\n{database} (floor: {floor} statement(s) per write)")
    print(f"  {'operation':<24} {'stmts':>5} {'x floor':>8}  statements")
    ok = True
    for label, statements in found.items():
        allowed = TARGETS[label]
        over = len(statements) - floor
        verdict = "" if allowed is None else ("PASS" if over <= allowed else "FAIL")
        ok &= verdict != "FAIL"
        ratio = len(statements) / floor
        listed = " ".join(statements)
        print(f"  {label:<24} {len(statements):>5} {ratio:>7.1f}x  {listed} {verdict}")
    return ok


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--postgres-url", default=POSTGRES_URL)
    args = parser.parse_args()
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        found = await count(f"sqlite+aiosqlite:///{tmp}/bench.db", Path(tmp) / "media")
        ok &= report("SQLite", found, floor=2)
        name = "atelier_bench_" + uuid.uuid4().hex[:8]
        if await postgres_database(args.postgres_url, name, create=True):
            try:
                base = args.postgres_url.rsplit("/", 1)[0]
                found = await count(f"{base}/{name}", Path(tmp) / "media")
                ok &= report("PostgreSQL", found, floor=1)
            finally:
                await postgres_database(args.postgres_url, name, create=False)
    print("\nall targets met" if ok else "\nsome targets missed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
