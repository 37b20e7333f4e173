"""Chainlit's `BaseDataLayer` on the project's own SQLAlchemy models.

Why not the stock `SQLAlchemyDataLayer` (see shared notes): it swallows write errors,
loses step output when `send()` and `update()` race, pastes ids into SQL, and pages the
sidebar in Python. Here:

- every id from a client is validated as a UUID before any query; all SQL is bound;
- every step write carries a version taken when Chainlit *calls* us (before any await),
  and the upsert only applies if it is newer than what is stored, so background tasks
  that finish out of order cannot replace new output with old;
- write failures are retried (SQLite busy), then logged, shown to the user as a toast,
  and raised, never swallowed;
- every read and write of a conversation checks its owner against the requester, who is
  the Chainlit session's user or is said explicitly (`memory.requester`: `acting_as` a
  user for HTTP routes and socket connections, or `system(...)` for the server's own
  work); with no requester it is refused (AccessDenied), never done unchecked. Only the
  identity lookups (`get_user`, `create_user`) and `get_thread_author`, which Chainlit's
  own owner check asks, run without one. A thread can never change owner;
- the sidebar is one keyset-paginated query with search and feedback filters in SQL.

Length: one class implementing Chainlit's `BaseDataLayer` interface, whose ~25 methods
share the owner check, the versioned upsert and the retry; split, each part would need
them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from chainlit.context import context_var
from chainlit.data.base import BaseDataLayer
from chainlit.data.utils import queue_until_user_message
from chainlit.types import Feedback, PageInfo, PaginatedResponse, Pagination, ThreadFilter
from chainlit.user import PersistedUser
from sqlalchemy import (
    ColumnElement,
    Integer,
    Subquery,
    and_,
    bindparam,
    column,
    delete,
    exists,
    func,
    or_,
    select,
    table,
    text,
    tuple_,
    union,
)
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from core.errors import AccessDenied, InvalidInput, NotFound, PersistenceError
from core.logging_setup import get_logger
from memory import media_claims, signed_links
from memory.db import for_reads, session_factory, write_session
from memory.ids import is_uuid, require_uuid
from memory.media_store import MediaStorage
from memory.models import Element, Step, Thread, User, utcnow
from memory.models import Feedback as FeedbackRow
from memory.pg_step_write import PgStepWriter
from memory.requester import Requester
from memory.requester import explicit as explicit_requester
from memory.sqlite_step_writer import Outcome, SqliteStepWriter

if TYPE_CHECKING:
    from chainlit.element import Element as ChainlitElement
    from chainlit.element import ElementDict
    from chainlit.step import StepDict
    from chainlit.types import ThreadDict
    from chainlit.user import User as ChainlitUser

log = get_logger(__name__)
T = TypeVar("T")

MAX_PAGE = 100
_WRITE_ATTEMPTS = 4
_DELETE_WAIT_S = 30  # a deletion waits at most this long for earlier writes (see delete_step)
_SHOW_INPUT = {True: "true", False: "false"}
# A step's columns as `write_step` sets them (attribute names), besides id and position.
_STEP_VALUES = (
    "thread_id",
    "parent_id",
    "name",
    "type",
    "input",
    "output",
    "meta",
    "tags",
    "generation",
    "modes",
    "command",
    "is_error",
    "streaming",
    "wait_for_answer",
    "show_input",
    "language",
    "default_open",
    "auto_collapse",
    "created_at",
    "start_at",
    "end_at",
    "write_version",
)
# An element's columns as `create_element` sets them (created_at takes its default).
_ELEMENT_COLUMNS = (
    "id",
    "thread_id",
    "for_id",
    "type",
    "name",
    "display",
    "size",
    "language",
    "page",
    "mime",
    "props",
    "auto_play",
    "player_config",
    "media_key",
    "external_url",
    "chainlit_key",
)


def _queue_in_session(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Chainlit's write queue (held until the first user message) where a session exists.

    Its decorator raises outside a Chainlit context; the CLI, jobs and tests write at once.
    """
    queued = queue_until_user_message()(method)

    @functools.wraps(method)
    async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if context_var.get(None) is None:
            return await method(self, *args, **kwargs)
        return await queued(self, *args, **kwargs)

    return wrapper


def _newer_in_same_thread(insert: Any) -> Any:
    """A step's upsert: a write replaces the stored step only if it is newer and names
    the same thread (a step id is never moved into another conversation)."""
    return insert.on_conflict_do_update(
        index_elements=["id"],
        set_={c: insert.excluded[c] for c in map(_step_column, _STEP_VALUES)},
        where=and_(
            Step.write_version < insert.excluded.write_version,
            Step.thread_id == insert.excluded.thread_id,
        ),
    )


def _step_column(attribute: str) -> str:
    return Step.__mapper__.attrs[attribute].columns[0].name


def current_requester() -> Requester | None:
    """Who is asking: said explicitly (`memory.requester`), else the Chainlit session's user.

    None when neither names anyone (an HTTP route or socket handler without a login, or
    internal code that did not say `system(...)`); the data layer then refuses.
    """
    said = explicit_requester()
    if said is not None:
        return said
    context = context_var.get(None)
    user = getattr(getattr(context, "session", None), "user", None) if context else None
    identifier = getattr(user, "identifier", None)
    if not identifier:
        return None
    return Requester.user(identifier, getattr(user, "id", None))


def _iso(value: datetime | None) -> str | None:
    """ISO time with an offset: SQLite returns naive datetimes, browsers read those as local."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat()


def _thread_dict(
    thread: Thread,
    identifier: str | None,
    metadata: dict | None = None,
    steps: list | None = None,
    elements: list | None = None,
) -> ThreadDict:
    """The sidebar needs only the header; a resume also gets metadata, steps and elements."""
    return {
        "id": thread.id,
        "createdAt": _iso(thread.created_at) or "",
        "name": thread.name,
        "userId": thread.user_id,
        "userIdentifier": identifier,
        "tags": thread.tags,
        "metadata": metadata,
        "steps": steps or [],
        "elements": elements or [],
    }


def _is_transient(exc: OperationalError) -> bool:
    text = str(exc.orig).lower()
    return any(word in text for word in ("locked", "busy", "deadlock", "could not serialize"))


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# Sidebar search: a case-insensitive substring of a thread's name or of one of its user
# or assistant messages, `%` and `_` literal. Migration 0010 indexes it on both databases.
_SEARCHED_TYPES = ("user_message", "assistant_message")
_HISTORY_TYPES = ("user_message", "assistant_message", "tool")  # what an agent turn reads
_SEARCH_MAX = 200  # characters of a search that count
_TRIGRAM = 3  # a shorter search has no trigram for an index to look up
# SQLite: when more messages than this (in anyone's threads) hold every trigram of a
# search, walking the user's own threads newest first finds a page sooner.
_SQLITE_INDEX_CANDIDATES = 1_000
# The SQLite search index (migration 0010): FTS5 `step_search` over `step_search_docs`.
_SEARCH_DOCS = table("step_search_docs", column("id"), column("thread_id"), column("output"))
_SEARCH_FTS = table("step_search", column("rowid"), column("step_search"))


def _fts_trigrams(search: str) -> str:
    """An FTS5 query for the documents holding every trigram of `search`, each quoted."""
    trigrams = dict.fromkeys(search[i : i + _TRIGRAM] for i in range(len(search) - 2))
    return " AND ".join('"' + t.replace('"', '""') + '"' for t in trigrams)


# Statements read on every turn, built once (functools.cache) with bound parameters:
# building one per call, then its cache key, cost more than running it on SQLite.


@functools.cache
def _thread_and_owner_query() -> Any:
    return (
        select(Thread, User.identifier)
        .outerjoin(User, User.id == Thread.user_id)
        .where(Thread.id == bindparam("thread_id"))
    )


@functools.cache
def _user_query() -> Any:
    return select(User).where(User.identifier == bindparam("identifier"))


@functools.cache
def _author_query() -> Any:
    return (
        select(User.identifier)
        .join(Thread, Thread.user_id == User.id)
        .where(Thread.id == bindparam("thread_id"))
    )


@functools.cache
def _recent_messages_query(system: bool) -> Any:
    """A thread's newest message steps; for a user, only in their own thread (the same
    statement: asked on every agent turn; the full check runs only when nothing came
    back)."""
    query = (
        select(Step.id, Step.type, Step.name, Step.output, Step.is_error)
        .where(Step.thread_id == bindparam("thread_id"), Step.type.in_(_HISTORY_TYPES))
        .order_by(Step.created_at.desc(), Step.position.desc())
        .limit(bindparam("limit", type_=Integer))
    )
    if not system:
        query = query.where(
            Step.thread_id.in_(
                select(Thread.id)
                .join(User, User.id == Thread.user_id)
                .where(
                    Thread.id == bindparam("thread_id"),
                    User.identifier == bindparam("identifier"),
                )
            )
        )
    return query


class AtelierDataLayer(BaseDataLayer):
    def __init__(
        self,
        engine: AsyncEngine,
        media: MediaStorage,
        link_secret: str,
        requester: Callable[[], Requester | None] = current_requester,
    ) -> None:
        self._engine = engine
        self._sessions = session_factory(engine)
        self._reads = for_reads(engine)
        self._media = media
        self._link_secret = link_secret
        self._requester = requester
        self._last_version = 0
        self._insert = media_claims.insert_for(engine)
        self._search_indexed: bool | None = None  # known after the first search
        self._upsert: Any = None
        self._new_element: Any = None
        self._touch: dict[bool, Any] = {}
        self._step_writer: SqliteStepWriter | PgStepWriter | None = None
        self._writing: dict[asyncio.Task[Any], str] = {}  # message writes under way: step id
        if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
            self._step_writer = SqliteStepWriter(engine, self._step_upsert(), self._thread_touch)
        elif engine.dialect.name == "postgresql":
            columns = ["id", "position", *_STEP_VALUES]
            self._step_writer = PgStepWriter(
                engine, columns, self._thread_touch, _newer_in_same_thread
            )

    # ---------------------------------------------------------------- helpers

    def _next_version(self) -> int:
        """Monotonic across calls and (being time based) across restarts."""
        self._last_version = max(self._last_version + 1, time.time_ns())
        return self._last_version

    async def _write(self, what: str, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """Run one write transaction, retrying transient lock errors; never swallow failure."""
        for attempt in range(1, _WRITE_ATTEMPTS + 1):
            try:
                async with write_session(self._sessions) as session:
                    return await work(session)
            except (InvalidInput, NotFound, AccessDenied):
                raise
            except OperationalError as exc:
                if attempt < _WRITE_ATTEMPTS and _is_transient(exc):
                    await asyncio.sleep(0.05 * 2**attempt)
                    continue
                await self._report_failure(what, exc)
                raise PersistenceError(f"Could not save the {what}; it was not stored.") from exc
            except Exception as exc:
                await self._report_failure(what, exc)
                raise PersistenceError(f"Could not save the {what}; it was not stored.") from exc
        raise AssertionError("unreachable")

    async def _report_failure(self, what: str, exc: Exception) -> None:
        log.error("persist_failed", what=what, error=type(exc).__name__, detail=str(exc)[:300])
        try:
            from chainlit.context import context

            await context.emitter.send_toast(
                f"Could not save this {what}. It is shown here but will be missing later.",
                "error",
            )
        except Exception:  # no live session to tell: the log line above stands
            pass

    def _who(self) -> Requester:
        """The requester, or AccessDenied: nothing is read or written for nobody."""
        who = self._requester()
        if who is None or not (getattr(who, "is_system", False) or who.identifier):
            log.error("data_access_without_requester")
            raise AccessDenied("Log in to do this.")
        return who

    def _require_own_user_id(self, user_id: str) -> None:
        """A user may only name themselves (the sidebar, favourites); the server anyone."""
        who = self._who()
        if getattr(who, "is_system", False):
            return
        if who.user_id is None or who.user_id != user_id:
            log.warning("user_scope_denied")
            raise NotFound("No such user.")

    async def _check_thread_access(self, session: AsyncSession, thread_id: str) -> Thread | None:
        """The thread row (None if absent), refusing if the requester is not its owner.

        A thread with no owner is reachable only by the server itself: no user can read
        or claim it.
        """
        found = await self._thread_and_owner(session, thread_id)
        return None if found is None else found[0]

    async def _thread_and_owner(
        self, session: AsyncSession, thread_id: str
    ) -> tuple[Thread, str | None] | None:
        """`_check_thread_access`, with the owner's identifier it reads on the way."""
        who = self._who()
        # The thread and its owner's name in one statement: every step, element and
        # history read starts here, several times per turn.
        found = (
            await session.execute(_thread_and_owner_query(), {"thread_id": thread_id})
        ).one_or_none()
        if found is None:
            return None
        thread, owner = found
        if not getattr(who, "is_system", False) and (owner is None or owner != who.identifier):
            log.warning("thread_access_denied", thread_id=thread_id)
            raise NotFound("No such conversation.")
        return thread, owner

    async def _ensure_thread(
        self, session: AsyncSession, thread_id: str, owner_id: str | None = None
    ) -> Thread:
        """The thread, created if absent (owned by `owner_id`, else by the requester).

        Insert-if-absent, because a step's write and Chainlit's update_thread race to
        create the same row; neither may fail on the other.
        """
        thread = await self._check_thread_access(session, thread_id)
        if thread is not None:
            return thread
        owner_id = owner_id or self._who().user_id
        if owner_id is None:
            raise AccessDenied("A conversation needs an owner; log in to start one.")
        now = utcnow()
        await session.execute(
            self._insert(Thread)
            .values(
                id=thread_id,
                user_id=owner_id,
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_nothing(index_elements=["id"])
        )
        thread = await self._check_thread_access(session, thread_id)
        if thread is None:
            raise NotFound("No such conversation.")
        return thread

    def media_url(self, key: str) -> str:
        return f"/media/{key}?{signed_links.sign(self._link_secret, key)}"

    # ------------------------------------------------------------------ users

    async def get_user(self, identifier: str) -> PersistedUser | None:
        async with self._sessions() as session:
            user = await session.scalar(_user_query(), {"identifier": identifier})
        if user is None:
            return None
        return PersistedUser(
            id=user.id,
            identifier=user.identifier,
            metadata={**(user.meta or {}), "role": user.role},
            createdAt=_iso(user.created_at) or "",
        )

    async def create_user(self, user: ChainlitUser) -> PersistedUser | None:
        """The existing account, never a new one: accounts are made only by `UserStore`.

        Chainlit calls this after login and whenever a cookie names a user `get_user`
        does not know. Creating the row there would bring a removed user back, with no
        password and a fresh id (a fresh daily budget too). So an unknown name is
        refused: None. (Chainlit then falls back to the cookie's own user; the session
        middleware, chat_app/session_middleware.py, has already taken such a cookie out
        of the request, because its session died with the account.)
        """
        existing = await self.get_user(user.identifier)
        if existing is None:
            log.warning("user_not_created", user=user.identifier[:128], reason="unknown account")
        return existing

    # ---------------------------------------------------------------- threads

    async def get_thread_author(self, thread_id: str) -> str:
        if not is_uuid(thread_id):
            return ""
        async with self._reads.connect() as conn:
            owner = await conn.scalar(_author_query(), {"thread_id": require_uuid(thread_id)})
        return owner or ""

    async def update_thread(
        self,
        thread_id: str,
        name: str | None = None,
        user_id: str | None = None,
        metadata: dict | None = None,
        tags: list[str] | None = None,
    ) -> None:
        thread_id = require_uuid(thread_id, "thread id")
        if user_id is not None:
            user_id = require_uuid(user_id, "user id")
        clean_meta = {k: v for k, v in (metadata or {}).items() if k != "is_shared"}

        async def work(session: AsyncSession) -> None:
            who = self._who()
            mine = getattr(who, "is_system", False) or user_id == who.user_id
            if user_id is not None and not mine:
                log.error("thread_for_other_user_refused", thread_id=thread_id)
                raise NotFound("No such conversation.")
            thread = await self._ensure_thread(session, thread_id, user_id)
            if user_id is not None and thread.user_id not in (None, user_id):
                log.error("thread_owner_change_refused", thread_id=thread_id)
                raise NotFound("No such conversation.")
            if user_id is not None:
                thread.user_id = user_id
            if name is not None:
                thread.name = name[:255]
            if tags is not None:
                thread.tags = tags
            if metadata is not None:
                thread.meta = {**(thread.meta or {}), **clean_meta}
            thread.updated_at = utcnow()

        await self._write("conversation", work)

    async def delete_thread(self, thread_id: str) -> None:
        thread_id = require_uuid(thread_id, "thread id")

        async def work(session: AsyncSession) -> None:
            if await self._check_thread_access(session, thread_id) is None:
                raise NotFound("No such conversation.")
            await session.execute(delete(Thread).where(Thread.id == thread_id))

        await self._write("deletion", work)

    async def list_threads(
        self, pagination: Pagination, filters: ThreadFilter
    ) -> PaginatedResponse[ThreadDict]:
        if not filters.userId:
            raise InvalidInput("Listing conversations needs a user.")
        user_id = require_uuid(filters.userId, "user id")
        self._require_own_user_id(user_id)
        page_size = max(1, min(int(pagination.first or 20), MAX_PAGE))
        order = (Thread.updated_at.desc(), Thread.id.desc())
        mine: list[ColumnElement[bool]] = [Thread.user_id == user_id]
        if filters.feedback is not None:
            mine.append(
                exists().where(
                    FeedbackRow.thread_id == Thread.id, FeedbackRow.value == filters.feedback
                )
            )

        async with self._sessions() as session:
            if pagination.cursor:
                cursor_id = require_uuid(pagination.cursor, "cursor")
                anchor = await session.scalar(
                    select(Thread.updated_at).where(
                        Thread.id == cursor_id, Thread.user_id == user_id
                    )
                )
                if anchor is None:
                    raise InvalidInput("Invalid cursor.")
                mine.append(tuple_(Thread.updated_at, Thread.id) < tuple_(anchor, cursor_id))
            query = select(Thread, User.identifier).join(User, User.id == Thread.user_id)
            if filters.search:
                found = await self._search(session, filters.search[:_SEARCH_MAX], mine, page_size)
                query = query.where(*mine, found)
            else:
                query = query.where(*mine)
            query = query.order_by(*order).limit(page_size + 1)
            rows = (await session.execute(query)).all()

        has_next = len(rows) > page_size
        rows = rows[:page_size]
        # Newest activity first, and dated by it: the sidebar groups threads by this date
        # ("Today", "Previous 7 days"), so a resumed conversation rises to "Today".
        data = [
            {**_thread_dict(thread, identifier), "createdAt": _iso(thread.updated_at) or ""}
            for thread, identifier in rows
        ]
        return PaginatedResponse(
            pageInfo=PageInfo(
                hasNextPage=has_next,
                startCursor=data[0]["id"] if data else None,
                endCursor=data[-1]["id"] if data else None,
            ),
            data=data,
        )

    async def _search(
        self,
        session: AsyncSession,
        search: str,
        mine: list[ColumnElement[bool]],
        page_size: int,
    ) -> ColumnElement[bool]:
        """True for the requester's threads (`mine`) whose name or a message holds `search`.

        On PostgreSQL, the ids of at most a page matched by name and a page matched by
        message, each newest first (so the caller's page is among them): each half has
        its own trigram index, which one query with OR could not use. On SQLite one walk
        of the requester's threads, newest first, tries the name and then the message
        (`_message_match`) until the page is full: names have no index there.
        """
        pattern = f"%{_escape_like(search)}%"
        by_name = Thread.name.ilike(pattern, escape="\\")
        by_message = await self._message_match(session, search, pattern)
        if self._engine.dialect.name != "postgresql":
            return or_(by_name, by_message)

        def first_page(match: ColumnElement[bool]) -> Subquery:
            return (
                select(Thread.id)
                .where(*mine, match)
                .order_by(Thread.updated_at.desc(), Thread.id.desc())
                .limit(page_size + 1)
                .subquery()
            )

        names, messages = first_page(by_name), first_page(by_message)
        return Thread.id.in_(union(select(names.c.id), select(messages.c.id)))

    async def _message_match(
        self, session: AsyncSession, search: str, pattern: str
    ) -> ColumnElement[bool]:
        """True for a thread with a user or assistant message containing `search`.

        Two ways to find them: from the index (every message holding the search's
        trigrams, whoever's, then kept if in the requester's threads: cheap when few
        messages match), or by walking the requester's threads in sidebar order and
        reading their messages until a page is full (cheap when many match).
        PostgreSQL's planner weighs the two for the EXISTS below (a semi-join) with its
        statistics of the `pg_trgm` index, and is told to plan each search for its own
        pattern rather than reuse a generic plan of the prepared statement. SQLite's
        cannot weigh them, so its FTS index is first asked how many messages hold the
        trigrams (counting stops at _SQLITE_INDEX_CANDIDATES); the index answers below
        that, the walk above it. A search under three characters has no trigram: walk.
        """
        walk = exists().where(
            Step.thread_id == Thread.id,
            Step.type.in_(_SEARCHED_TYPES),
            Step.output.ilike(pattern, escape="\\"),
        )
        dialect = self._engine.dialect
        if not await self._has_search_index(session):
            return walk
        if dialect.name == "postgresql":
            if (dialect.server_version_info or (0,)) >= (12,):
                await session.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
            return walk
        if dialect.name != "sqlite" or len(search) < _TRIGRAM:
            return walk
        trigrams = _fts_trigrams(search)
        holding = select(_SEARCH_FTS.c.rowid).where(_SEARCH_FTS.c.step_search.match(trigrams))
        candidates = await session.scalar(
            select(func.count()).select_from(holding.limit(_SQLITE_INDEX_CANDIDATES).subquery())
        )
        if (candidates or 0) >= _SQLITE_INDEX_CANDIDATES:
            return walk
        return Thread.id.in_(
            select(_SEARCH_DOCS.c.thread_id).where(
                _SEARCH_DOCS.c.id.in_(holding),
                _SEARCH_DOCS.c.output.ilike(pattern, escape="\\"),
            )
        )

    async def _has_search_index(self, session: AsyncSession) -> bool:
        """Whether migration 0010 could build the search index here; a warning if not."""
        if self._search_indexed is None:
            dialect = self._engine.dialect.name
            if dialect == "sqlite":
                probe = "SELECT count(*) FROM sqlite_master WHERE name = 'step_search'"
            elif dialect == "postgresql":
                probe = (
                    "SELECT count(*) FROM pg_indexes WHERE schemaname = current_schema() "
                    "AND indexname = 'ix_steps_output_trgm'"
                )
            else:
                probe = "SELECT 0"
            self._search_indexed = bool(await session.scalar(text(probe)))
            if not self._search_indexed:
                log.warning(
                    "search_unindexed",
                    database=dialect,
                    effect="sidebar search reads every message of the user's threads",
                )
        return self._search_indexed

    async def get_thread(self, thread_id: str) -> ThreadDict | None:
        thread_id = require_uuid(thread_id, "thread id")
        async with self._sessions() as session:
            try:
                found = await self._thread_and_owner(session, thread_id)
            except NotFound:
                return None
            if found is None:
                return None
            thread, identifier = found
            steps = (
                await session.scalars(
                    select(Step)
                    .where(Step.thread_id == thread_id)
                    .order_by(Step.created_at, Step.position)
                )
            ).all()
            feedback = (
                await session.scalars(select(FeedbackRow).where(FeedbackRow.thread_id == thread_id))
            ).all()
            elements = (
                await session.scalars(
                    select(Element)
                    .where(Element.thread_id == thread_id)
                    .order_by(Element.created_at)
                )
            ).all()
        by_step = {f.step_id: f for f in feedback}
        return _thread_dict(
            thread,
            identifier,
            metadata=thread.meta or {},
            steps=[self._step_dict(s, by_step.get(s.id)) for s in steps],
            elements=[self._element_dict(e) for e in elements],
        )

    async def recent_messages(self, thread_id: str, limit: int) -> list[dict[str, Any]]:
        """The thread's newest `limit` message and tool steps, oldest first, in the
        shape of `get_thread`'s steps (id, type, name, output, isError).

        What an agent turn needs of its history, without loading the whole thread (every
        step, element and feedback, turned into dicts) on every turn of a long chat.
        Someone else's thread has no messages.
        """
        thread_id = require_uuid(thread_id, "thread id")
        who = self._who()
        system = bool(getattr(who, "is_system", False))
        params = {"thread_id": thread_id, "limit": limit, "identifier": who.identifier}
        async with self._reads.connect() as conn:
            rows = (await conn.execute(_recent_messages_query(system), params)).all()
        if not rows:
            async with self._sessions() as session:
                with contextlib.suppress(NotFound):
                    await self._check_thread_access(session, thread_id)  # logs a refusal
            return []
        return [
            {"id": r.id, "type": r.type, "name": r.name, "output": r.output, "isError": r.is_error}
            for r in reversed(rows)
        ]

    # ------------------------------------------------------------------ steps

    async def create_step(self, step_dict: StepDict) -> None:
        await self._write_step_queued(dict(step_dict), self._next_version())

    async def update_step(self, step_dict: StepDict) -> None:
        await self._write_step_queued(dict(step_dict), self._next_version())

    @_queue_in_session
    async def _write_step_queued(self, step_dict: dict[str, Any], version: int) -> None:
        # One queue (one method name) for creates and updates keeps their order.
        task = asyncio.current_task()
        if task is not None:
            self._writing[task] = str(step_dict.get("id"))
        try:
            await self.write_step(step_dict, version)
        finally:
            self._writing.pop(task, None)  # type: ignore[arg-type]

    async def write_step(self, step_dict: dict[str, Any], version: int) -> None:
        """Insert or update a step unless a newer version of it is already stored."""
        step_id = require_uuid(step_dict.get("id"), "step id")
        thread_id = require_uuid(step_dict.get("threadId"), "thread id")
        parent_id = step_dict.get("parentId")
        show_input = step_dict.get("showInput")
        values = {
            "thread_id": thread_id,
            "parent_id": require_uuid(parent_id, "parent step id") if parent_id else None,
            "name": str(step_dict.get("name") or "")[:255],
            "type": str(step_dict.get("type") or "undefined")[:32],
            "input": step_dict.get("input"),
            "output": step_dict.get("output"),
            "meta": step_dict.get("metadata") or {},
            "tags": step_dict.get("tags"),
            "generation": step_dict.get("generation"),
            "modes": step_dict.get("modes"),
            "command": step_dict.get("command"),
            "is_error": bool(step_dict.get("isError")),
            "streaming": bool(step_dict.get("streaming")),
            "wait_for_answer": step_dict.get("waitForAnswer"),
            "show_input": _SHOW_INPUT.get(show_input, show_input)
            if show_input is not None
            else None,
            "language": step_dict.get("language"),
            "default_open": step_dict.get("defaultOpen"),
            "auto_collapse": step_dict.get("autoCollapse"),
            "created_at": step_dict.get("createdAt"),
            "start_at": step_dict.get("start"),
            "end_at": step_dict.get("end"),
            "write_version": version,
        }

        params = {"id": step_id, "position": version, **values}
        if self._step_writer is not None and await self._write_step_batched(params):
            return

        async def work(session: AsyncSession) -> None:
            # Two statements on the common path (a message in the requester's own
            # thread): the thread's activity time is bumped only if it is theirs, and the
            # step is upserted only into its own thread. Either finding nothing sends it
            # down the slow path, which tells a new thread from someone else's and a
            # stale write from a step id taken by another thread.
            if not await self._touch_own_thread(session, thread_id):
                await self._ensure_thread(session, thread_id)
            connection = await session.connection()  # Core: no ORM work per statement
            written = (await connection.execute(self._step_upsert(), params)).scalar()
            if written is None:
                owner_thread = await session.scalar(
                    select(Step.thread_id).where(Step.id == step_id)
                )
                if owner_thread != thread_id:
                    raise InvalidInput("Invalid step id.")

        await self._write("message", work)

    async def _write_step_batched(self, params: dict[str, Any]) -> bool:
        """The write on the common path: on SQLite batched with others
        (memory/sqlite_step_writer.py), on PostgreSQL one statement
        (memory/pg_step_write.py); False when it needs the full path (a new
        conversation, or the writer failed)."""
        assert self._step_writer is not None
        who = self._who()
        touch = {"thread_id": params["thread_id"], "now": utcnow(), "identifier": who.identifier}
        system = bool(getattr(who, "is_system", False))
        try:
            outcome = await self._step_writer.write(params, touch, system=system)
        except Exception as exc:  # the full path retries, and reports what still fails
            log.warning("batched_step_write_failed", error=type(exc).__name__)
            return False
        if outcome is Outcome.FOREIGN:
            raise InvalidInput("Invalid step id.")
        return outcome is Outcome.WRITTEN

    async def flush(self, timeout_s: float = 30) -> None:
        """Wait for the message writes under way to be committed (before the engine is
        disposed at shutdown): Chainlit hands them over in tasks nobody awaits."""
        for _ in range(3):  # tasks made just now have not started their write yet
            await asyncio.sleep(0)
        if self._writing:
            _, late = await asyncio.wait(set(self._writing), timeout=timeout_s)
            if late:
                log.error("message_writes_unfinished_at_shutdown", count=len(late))
        if self._step_writer is not None:
            await self._step_writer.flush()
            self._step_writer.close()
            self._step_writer = None

    async def _touch_own_thread(self, session: AsyncSession, thread_id: str) -> bool:
        """Mark the thread active now if it exists and the requester may write to it."""
        who = self._who()
        system = bool(getattr(who, "is_system", False))
        params = {"thread_id": thread_id, "now": utcnow(), "identifier": who.identifier}
        connection = await session.connection()
        touched = await connection.execute(self._thread_touch(system), params)
        return touched.scalar() is not None

    # Statements built once: building one per write (its clauses, then its cache key)
    # cost more than running it, and a step is written several times per turn.

    def _step_upsert(self) -> Any:
        """Insert a step, or update it from a newer write in the same thread."""
        if self._upsert is None:
            columns = ["id", "position", *_STEP_VALUES]
            insert = self._insert(Step).values({c: bindparam(c) for c in columns})
            self._upsert = _newer_in_same_thread(insert).returning(Step.id)
        return self._upsert

    def _element_insert(self) -> Any:
        """Insert an element unless its id is taken (then nothing is returned)."""
        if self._new_element is None:
            self._new_element = (
                self._insert(Element)
                .values({c: bindparam(c) for c in _ELEMENT_COLUMNS})
                .on_conflict_do_nothing(index_elements=["id"])
                .returning(Element.id)
            )
        return self._new_element

    def _thread_touch(self, system: bool) -> Any:
        """Set a thread's activity time if it is the requester's (any, for the server)."""
        if system not in self._touch:
            threads = Thread.__table__
            bump = (
                threads.update()
                .where(threads.c.id == bindparam("thread_id"))
                .values(updated_at=bindparam("now"))
            )
            if not system:
                owner = select(User.id).where(User.identifier == bindparam("identifier"))
                bump = bump.where(threads.c.user_id.in_(owner))
            self._touch[system] = bump.returning(threads.c.id)
        return self._touch[system]

    @_queue_in_session
    async def delete_step(self, step_id: str) -> None:
        step_id = require_uuid(step_id, "step id")
        # Chainlit hands a message's create, updates and removal to tasks nobody awaits.
        # A write made before this removal may still be on its way (queued in the SQLite
        # step writer, or in a transaction not yet committed): run after it, or it would
        # put the removed step back (a progress bar gone live, still there on resume).
        earlier = {task for task, written in self._writing.items() if written == step_id}
        if earlier:
            _, late = await asyncio.wait(earlier, timeout=_DELETE_WAIT_S)
            if late:
                log.warning("step_delete_before_writes_finished", count=len(late))

        async def work(session: AsyncSession) -> None:
            self._who()
            thread_id = await session.scalar(select(Step.thread_id).where(Step.id == step_id))
            if thread_id is None:
                return
            await self._check_thread_access(session, thread_id)
            await session.execute(delete(FeedbackRow).where(FeedbackRow.step_id == step_id))
            await session.execute(delete(Step).where(Step.id == step_id))

        await self._write("deletion", work)

    async def get_favorite_steps(self, user_id: str) -> list[StepDict]:
        user_id = require_uuid(user_id, "user id")
        self._require_own_user_id(user_id)
        async with self._sessions() as session:
            steps = (
                await session.scalars(
                    select(Step)
                    .join(Thread, Thread.id == Step.thread_id)
                    .where(Thread.user_id == user_id, Step.meta["favorite"].as_boolean())
                    .order_by(Step.created_at.desc())
                    .limit(200)
                )
            ).all()
        return [self._step_dict(s, None) for s in steps]

    def _step_dict(self, step: Step, feedback: FeedbackRow | None) -> StepDict:
        show_input: bool | str | None = step.show_input
        if show_input in ("true", "false"):
            show_input = show_input == "true"
        result: dict[str, Any] = {
            "id": step.id,
            "threadId": step.thread_id,
            "parentId": step.parent_id,
            "name": step.name,
            "type": step.type,
            "input": step.input or "",
            "output": step.output or "",
            "metadata": step.meta or {},
            "tags": step.tags,
            "generation": step.generation,
            "modes": step.modes,
            "command": step.command,
            "isError": step.is_error,
            "streaming": False,
            "waitForAnswer": step.wait_for_answer,
            "showInput": show_input,
            "language": step.language,
            "defaultOpen": step.default_open,
            "autoCollapse": step.auto_collapse,
            "createdAt": step.created_at,
            "start": step.start_at,
            "end": step.end_at,
        }
        if feedback is not None:
            result["feedback"] = {
                "id": feedback.id,
                "forId": feedback.step_id,
                "threadId": feedback.thread_id,
                "value": feedback.value,
                "comment": feedback.comment,
            }
        return result  # type: ignore[return-value]

    # --------------------------------------------------------------- elements

    @_queue_in_session
    async def create_element(self, element: ChainlitElement) -> None:
        element_id = require_uuid(element.id, "element id")
        thread_id = require_uuid(element.thread_id, "thread id")
        stored = await self._stored_file(element)
        if stored is not None:  # already in the media store (an image the app made)
            media_key, size_bytes, data = *stored, None
        else:
            data = await self._element_bytes(element)
            media_key = await asyncio.to_thread(self._media.put, data) if data is not None else None
            size_bytes = len(data or b"")
        mime = element.mime or "application/octet-stream"

        async def work(session: AsyncSession) -> None:
            owner = (await self._ensure_thread(session, thread_id)).user_id
            params = {
                "id": element_id,
                "thread_id": thread_id,
                "for_id": element.for_id if is_uuid(element.for_id) else None,
                "type": element.type,
                "name": (element.name or "")[:255],
                "display": element.display,
                "size": getattr(element, "size", None),
                "language": element.language,
                "page": getattr(element, "page", None),
                "mime": mime[:128],
                "props": getattr(element, "props", None),
                "auto_play": getattr(element, "auto_play", None),
                "player_config": getattr(element, "player_config", None),
                "media_key": media_key,
                "external_url": None if media_key else element.url,
                "chainlit_key": element.chainlit_key,
            }
            connection = await session.connection()  # Core: no ORM work per statement
            inserted = (await connection.execute(self._element_insert(), params)).scalar()
            if inserted is None:  # the id is taken: only a repeat into the same thread
                existing = await session.scalar(
                    select(Element.thread_id).where(Element.id == element_id)
                )
                if existing != thread_id:
                    raise InvalidInput("Invalid element id.")
            if media_key is not None:
                await media_claims.claim(
                    session,
                    self._insert,
                    media_key=media_key,
                    thread_id=thread_id,
                    user_id=owner,
                    mime=mime,
                    size_bytes=size_bytes,
                )

        await self._write("attachment", work)

    async def _stored_file(self, element: ChainlitElement) -> tuple[str, int] | None:
        """(key, size) of a file the app put in the media store itself, named by the
        element's `stored_media_key` (chat_app/rendering.py), if it is there."""
        key = getattr(element, "stored_media_key", None)
        if not isinstance(key, str):
            return None
        try:
            return key, await asyncio.to_thread(self._media.size, key)
        except (NotFound, OSError):
            return None

    async def _element_bytes(self, element: ChainlitElement) -> bytes | None:
        if isinstance(element.content, bytes | bytearray):
            return bytes(element.content)
        if isinstance(element.content, str):
            return element.content.encode()
        if element.path:
            try:
                return await asyncio.to_thread(Path(element.path).read_bytes)
            except OSError as exc:
                await self._report_failure("attachment", exc)
                raise PersistenceError("Could not read the attachment to save it.") from exc
        return None

    async def get_element(self, thread_id: str, element_id: str) -> ElementDict | None:
        thread_id = require_uuid(thread_id, "thread id")
        element_id = require_uuid(element_id, "element id")
        async with self._sessions() as session:
            try:
                await self._check_thread_access(session, thread_id)
            except NotFound:
                return None
            row = await session.scalar(
                select(Element).where(Element.id == element_id, Element.thread_id == thread_id)
            )
        return self._element_dict(row) if row else None

    @_queue_in_session
    async def delete_element(self, element_id: str, thread_id: str | None = None) -> None:
        element_id = require_uuid(element_id, "element id")

        async def work(session: AsyncSession) -> None:
            self._who()
            owner_thread = await session.scalar(
                select(Element.thread_id).where(Element.id == element_id)
            )
            if owner_thread is None:
                return
            if thread_id is not None and require_uuid(thread_id, "thread id") != owner_thread:
                raise NotFound("No such attachment.")
            await self._check_thread_access(session, owner_thread)
            await session.execute(delete(Element).where(Element.id == element_id))

        await self._write("deletion", work)

    def _element_dict(self, element: Element) -> ElementDict:
        url = self.media_url(element.media_key) if element.media_key else element.external_url
        return {  # type: ignore[return-value]
            "id": element.id,
            "threadId": element.thread_id,
            "type": element.type,
            "chainlitKey": None,
            "url": url,
            "objectKey": element.media_key,
            "name": element.name,
            "display": element.display,
            "size": element.size,
            "language": element.language,
            "page": element.page,
            "props": element.props,
            "autoPlay": element.auto_play,
            "playerConfig": element.player_config,
            "forId": element.for_id,
            "mime": element.mime,
        }

    # --------------------------------------------------------------- feedback

    async def upsert_feedback(self, feedback: Feedback) -> str:
        """Rate one of the requester's own messages; a feedback id names their own row.

        The message must be in a conversation the requester owns, and a feedback id that
        already exists must be that message's feedback: another user's message or
        feedback row is "not found", never changed.
        """
        step_id = require_uuid(feedback.forId, "message id")
        feedback_id = require_uuid(feedback.id, "feedback id") if feedback.id else None
        if feedback.value not in (0, 1):
            raise InvalidInput("Feedback must be 0 or 1.")

        async def work(session: AsyncSession) -> str:
            self._who()
            thread_id = await session.scalar(select(Step.thread_id).where(Step.id == step_id))
            if thread_id is None or await self._check_thread_access(session, thread_id) is None:
                raise NotFound("No such message.")
            row = await session.get(FeedbackRow, feedback_id) if feedback_id else None
            if row is not None and (row.step_id, row.thread_id) != (step_id, thread_id):
                log.warning("feedback_access_denied", feedback_id=feedback_id)
                raise NotFound("No such feedback.")
            if row is None:
                row = await session.scalar(
                    select(FeedbackRow).where(
                        FeedbackRow.step_id == step_id, FeedbackRow.thread_id == thread_id
                    )
                )
            if row is None:
                row = FeedbackRow(step_id=step_id, thread_id=thread_id, value=feedback.value)
                if feedback_id:
                    row.id = feedback_id
                session.add(row)
            row.value = int(feedback.value)
            row.comment = (feedback.comment or None) and feedback.comment[:4000]
            await session.flush()
            return row.id

        return await self._write("feedback", work)

    async def delete_feedback(self, feedback_id: str) -> bool:
        """Delete the requester's own feedback; someone else's is "not found"."""
        feedback_id = require_uuid(feedback_id, "feedback id")

        async def work(session: AsyncSession) -> bool:
            self._who()
            row = await session.get(FeedbackRow, feedback_id)
            if row is None:
                return False
            if await self._check_thread_access(session, row.thread_id) is None:
                raise NotFound("No such feedback.")
            await session.delete(row)
            return True

        return await self._write("feedback", work)

    # ------------------------------------------------------------------ other

    async def build_debug_url(self) -> str:
        return ""

    async def close(self) -> None:
        """The engine belongs to the app's runtime, which disposes it on shutdown."""
