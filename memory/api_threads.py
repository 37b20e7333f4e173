"""The conversation an API token's images land in: "API · <token name>", one per token.

Images made over the API are the user's like any other, so they are kept where the user
looks for images: a conversation in the history sidebar, and through it the gallery and
the lineage. Each token gets its own conversation, so a user can tell which tool made
what. Its id is derived from the token's id (a UUID5), which makes "find or create" one
INSERT … ON CONFLICT DO NOTHING: two requests of the same token at the same moment land
in the same conversation, with no lookup to race on.

Each request is written as the chat writes a message and its answer (as
memory/gallery_actions.py does for a reused image): a user step with what was asked
(and the uploaded images as its elements), then an assistant step whose elements are
the results, named "<image id>.<ext>" so the chat puts the image's buttons on them when
the conversation is opened. A refused or failed request gets an error step instead, so
the history says what happened to it.

Only the owner's conversation is written: a derived id that somehow belongs to another
user is NotFound, as everywhere else.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from core.errors import NotFound
from memory import media_claims
from memory.db import session_factory, write_session
from memory.images import ImageRecord
from memory.models import Thread, new_id, utcnow
from memory.written_messages import image_elements, message_step

# Fixed namespace for the conversation ids of API tokens (never change it: ids derive from it).
_NAMESPACE = uuid.UUID("0b6f3f8e-5d0a-4c7e-9a51-7a3e1c2f9d40")
_NAME_CHARS = 255


@dataclass(frozen=True)
class ApiConversation:
    """Where one API request is recorded: the conversation and its two steps' ids."""

    thread_id: str
    request_step_id: str
    reply_step_id: str


def conversation_id(token_id: str) -> str:
    """The id of the token's conversation (the same every time, for the same token)."""
    return str(uuid.uuid5(_NAMESPACE, f"api-token:{token_id}"))


def conversation_name(token_name: str) -> str:
    return f"API · {token_name}"[:_NAME_CHARS]


class ApiThreads:
    """Writes API requests and their results into each token's conversation."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._sessions = session_factory(engine)
        self._insert = media_claims.insert_for(engine)

    async def open(self, user_id: str, token_id: str, token_name: str) -> ApiConversation:
        """The token's conversation (made now if it is new, or was deleted), raised to the
        top of the sidebar, and fresh step ids for one request.

        One statement: the insert, or on conflict the bump of `updated_at`, guarded so
        that a row of another user is left alone and returns nothing (NotFound)."""
        thread_id = conversation_id(token_id)
        now = utcnow()
        insert = self._insert(Thread).values(
            id=thread_id,
            user_id=user_id,
            name=conversation_name(token_name),
            meta={"api_token_id": token_id},
            created_at=now,
            updated_at=now,
        )
        upsert = insert.on_conflict_do_update(
            index_elements=["id"],
            set_={"updated_at": now},
            where=Thread.user_id == user_id,
        ).returning(Thread.user_id)
        async with write_session(self._sessions) as session:
            owner = (await session.execute(upsert)).scalar_one_or_none()
        if owner != user_id:
            raise NotFound("No such conversation.")
        return ApiConversation(thread_id, new_id(), new_id())

    async def add_request(
        self,
        where: ApiConversation,
        author: str,
        text: str,
        inputs: Sequence[ImageRecord] = (),
    ) -> None:
        """The user step: what the client asked for, with the images it sent (the
        conversation was raised to the top by `open` a moment before)."""
        step = message_step(where.request_step_id, where.thread_id, author, "user_message", text)
        async with write_session(self._sessions) as session:
            session.add(step)
            session.add_all(image_elements(where.thread_id, where.request_step_id, inputs))

    async def add_reply(
        self,
        where: ApiConversation,
        text: str,
        images: Sequence[ImageRecord] = (),
        *,
        is_error: bool = False,
    ) -> None:
        """The assistant step: the results (or why there are none), in one transaction."""
        step = message_step(
            where.reply_step_id,
            where.thread_id,
            "Atelier",
            "assistant_message",
            text,
            is_error=is_error,
        )
        async with write_session(self._sessions) as session:
            session.add(step)
            session.add_all(image_elements(where.thread_id, where.reply_step_id, images))
            # The conversation rises to the top of the sidebar with its newest activity.
            await session.execute(
                update(Thread).where(Thread.id == where.thread_id).values(updated_at=utcnow())
            )
