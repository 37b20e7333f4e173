"""Database fixtures: every test gets its own, freshly migrated database.

`db_url` is parametrized over SQLite (a file under tmp_path) and PostgreSQL (a database
created for the test on the server named by ATELIER_TEST_POSTGRES_URL, dropped
afterwards). When no PostgreSQL server answers, the postgres variants are skipped with
the reason, never silently passed.

Import into a test module with `from tests.db_fixtures import *  # noqa`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from memory import requester as memory_requester
from memory.data_layer import AtelierDataLayer
from memory.db import create_engine, migrate, session_factory
from memory.media_store import MediaStore
from memory.users import Account, UserStore

__all__ = [
    "LINK_SECRET",
    "Requester",
    "Who",
    "chainlit_context",
    "data_layer",
    "db_url",
    "engine",
    "media",
    "postgres_database",
    "requester",
    "step_dict",
    "users",
]

POSTGRES_ADMIN_URL = os.environ.get(
    "ATELIER_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
LINK_SECRET = "test-link-secret-" + "x" * 32
# Set once the server has failed to answer, so later tests skip without waiting again.
_postgres_unreachable: list[str] = []


Who = memory_requester.Requester  # what the data layer asks for


class Requester:
    """Stands in for Chainlit's session user: tests switch who is asking.

    `act_as(None)` names nobody (as an HTTP route or socket handler without a login
    would), which the data layer refuses; `as_system()` is the server's own work.
    """

    def __init__(self) -> None:
        self.current: Who | None = None

    def __call__(self) -> Who | None:
        return self.current

    def act_as(self, account: Account | None) -> None:
        self.current = Who.user(account.identifier, account.id) if account else None

    def as_system(self) -> None:
        self.current = Who(None, None, is_system=True, reason="test")


def step_dict(thread_id: str, **overrides: Any) -> dict[str, Any]:
    """A step as Chainlit's `Step.to_dict()` shapes it."""
    created = overrides.pop("created", None) or datetime.now(UTC)
    stamp = created.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
    step: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "threadId": thread_id,
        "parentId": None,
        "name": "assistant",
        "type": "assistant_message",
        "input": "",
        "output": "",
        "metadata": {},
        "tags": None,
        "streaming": False,
        "isError": False,
        "waitForAnswer": None,
        "showInput": None,
        "language": None,
        "defaultOpen": False,
        "autoCollapse": False,
        "createdAt": stamp,
        "start": stamp,
        "end": (created + timedelta(milliseconds=1)).replace(tzinfo=None).isoformat() + "Z",
        "generation": None,
    }
    step.update(overrides)
    return step


def _postgres_dsn(url: str) -> str:
    """asyncpg wants a plain postgresql:// DSN, without SQLAlchemy's driver suffix."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _admin_connection() -> Any:
    shown = make_url(POSTGRES_ADMIN_URL).render_as_string(hide_password=True)
    if _postgres_unreachable:
        pytest.skip(_postgres_unreachable[0])
    try:
        import asyncpg
    except ImportError:
        _postgres_unreachable.append("asyncpg is not installed (pip install -e '.[postgres]')")
        pytest.skip(_postgres_unreachable[0])
    try:
        return await asyncpg.connect(_postgres_dsn(POSTGRES_ADMIN_URL), timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        _postgres_unreachable.append(
            f"PostgreSQL not reachable at {shown}: {type(exc).__name__}: {exc}"
        )
        pytest.skip(_postgres_unreachable[0])


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    """The URL of an empty database that only this test uses."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'atelier.db'}"
        return
    async with postgres_database() as url:
        yield url


@asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """The URL of a PostgreSQL database made for the caller, dropped on exit."""
    name = f"atelier_t_{uuid.uuid4().hex}"
    admin = await _admin_connection()
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        admin = await _admin_connection()
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
async def engine(db_url: str) -> Any:
    """A migrated engine on the test's database, disposed afterwards."""
    engine = create_engine(db_url)
    try:
        await migrate(engine)
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def chainlit_context() -> Any:
    """An HTTP-request Chainlit context, as the server sets one for REST calls.

    Chainlit's `queue_until_user_message` (on create_step, create_element, ...) reads
    `context.session` and raises ChainlitContextException when there is no context.
    With an HTTP session it runs the write at once, which is what tests need.
    """
    from chainlit.context import ChainlitContext, context_var
    from chainlit.session import HTTPSession

    session = HTTPSession(id=str(uuid.uuid4()), client_type="webapp")
    token = context_var.set(ChainlitContext(session))
    yield session
    context_var.reset(token)


@pytest.fixture
def requester() -> Requester:
    return Requester()


@pytest.fixture
def media(tmp_path: Any) -> MediaStore:
    return MediaStore(tmp_path / "media")


@pytest.fixture
def data_layer(
    engine: Any, media: MediaStore, requester: Requester, chainlit_context: Any
) -> AtelierDataLayer:
    return AtelierDataLayer(engine, media, LINK_SECRET, requester=requester)


@pytest.fixture
def users(engine: Any) -> UserStore:
    return UserStore(session_factory(engine))
