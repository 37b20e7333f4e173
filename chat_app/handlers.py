"""Chainlit's entry points. Chainlit imports this file by path (see server.py).

It is imported while the app is built, before the first page is served, so the chat's
own modules (`turn`, `commands`: the agent, every tool, the chat model's messages) are
imported by the handlers that use them, on the first chat rather than at start-up.
"""

from __future__ import annotations

import asyncio

import chainlit as cl
from chainlit.types import ThreadDict

from chat_app import batch_display, image_actions, rendering, settings_panel, starters, welcome
from chat_app.runtime import Runtime, get_runtime
from chat_app.session_guard import SESSION_CLAIM
from core.errors import AtelierError, NotFound
from core.logging_setup import get_logger

log = get_logger(__name__)


@cl.data_layer
def _data_layer():
    return get_runtime().data_layer


@cl.password_auth_callback
async def _login(username: str, password: str) -> cl.User | None:
    """Check the password (off the event loop) and open a revocable session.

    The session id rides in the user's metadata, which Chainlit signs into the login
    cookie; chat_app/session_guard.py honours the cookie only while the session lasts.
    Failed logins are counted and limited in front of this (chat_app/login_middleware.py).
    """
    runtime = get_runtime()
    account = await runtime.users.verify(username[:128], password[:1024])
    if account is None:
        log.info("login_failed")
        return None
    try:
        session_id = await runtime.auth_sessions.create(account.id)
    except NotFound:  # removed between the password check and now
        log.info("login_failed")
        return None
    log.info("login", user=account.identifier)
    return cl.User(
        identifier=account.identifier,
        metadata={"role": account.role, SESSION_CLAIM: session_id},
    )


@cl.on_chat_start
async def _start() -> None:
    from chat_app import commands
    from chat_app.turn import current_user_id

    runtime = get_runtime()
    await cl.context.emitter.set_commands(commands.chainlit_commands())
    await settings_panel.show(runtime, await current_user_id(runtime))
    await welcome.send(runtime)


@cl.on_chat_resume
async def _resume(thread: ThreadDict) -> None:
    # The agent's memory is rebuilt from the database on every turn (conversation.py);
    # Chainlit restores the user session (and so the panel) from the thread's metadata.
    from chat_app import commands
    from chat_app.turn import current_user_id

    runtime = get_runtime()
    await cl.context.emitter.set_commands(commands.chainlit_commands())
    user_id = await current_user_id(runtime)
    await settings_panel.show(runtime, user_id)
    await image_actions.restore_buttons(thread, user_id)  # Chainlit keeps no actions
    await batch_display.restore_buttons(runtime, user_id, thread["id"])
    # Work a crash cut short here is told after the history: Chainlit sends the thread
    # when this returns, and the browser replaces what it shows with it.
    task = asyncio.create_task(_tell_after_resume(runtime, user_id, thread["id"]))
    _notices.add(task)
    task.add_done_callback(_notices.discard)


_notices: set[asyncio.Task[None]] = set()  # running resume notices, kept from the GC


async def _tell_after_resume(runtime: Runtime, user_id: str, thread_id: str) -> None:
    from chat_app.turn import tell_interrupted_work

    try:
        await tell_interrupted_work(runtime, user_id, thread_id)
        await batch_display.tell_finished(runtime, user_id, thread_id)
    except Exception:
        log.exception("interruption_notice_failed")


@cl.action_callback(batch_display.PAUSE)
async def _batch_pause(action: cl.Action) -> None:
    await batch_display.act(get_runtime(), action)


@cl.action_callback(batch_display.RESUME)
async def _batch_resume(action: cl.Action) -> None:
    await batch_display.act(get_runtime(), action)


@cl.action_callback(batch_display.STOP)
async def _batch_stop(action: cl.Action) -> None:
    await batch_display.act(get_runtime(), action)


@cl.on_settings_update
async def _settings(values: dict) -> None:
    from chat_app.turn import current_user_id

    runtime = get_runtime()
    user_id = await current_user_id(runtime)
    try:
        await rendering.notice(await settings_panel.update(runtime, values, user_id))
    except AtelierError as exc:
        await rendering.error(exc.message + " The previous settings are still in force.")
        await settings_panel.show(runtime, user_id)


@cl.on_message
async def _message(message: cl.Message) -> None:
    from chat_app.turn import handle_message

    await handle_message(get_runtime(), message)


@cl.set_starters
async def _starters() -> list[cl.Starter]:
    """The welcome screen's starters (chat_app/starters.py): the same for every user."""
    return starters.starters(get_runtime())
