"""Feedback on another user's messages, and data-layer calls that name nobody.

Issue 12, finding 6: Chainlit's PUT/DELETE /feedback reached the data layer with no
Chainlit context, and the data layer took "no context" for "nobody to check": one user
could overwrite or delete the feedback on another user's message. Now the routes run as
the logged-in user, the data layer checks the message's and the feedback row's owner, and
a call that names nobody is refused unless it says it is the server's own work.
"""

from __future__ import annotations

import uuid

import httpx
import pytest
from chainlit.element import Image
from chainlit.types import Feedback, Pagination, ThreadFilter

from core.errors import AccessDenied, NotFound
from memory import requester as requesters
from memory.data_layer import AtelierDataLayer
from tests.app_process import ADMIN_PASSWORD, AppProcess, add_user
from tests.chat_client import ChatSession, login_cookie
from tests.db_fixtures import *  # noqa: F403 (fixtures)
from tests.db_fixtures import LINK_SECRET, step_dict
from tests.waiting import wait_until

# ------------------------------------------------------------------- over the protocol


async def _chat(app: AppProcess, user: str, password: str) -> tuple[ChatSession, str]:
    """A conversation with one reply; returns the session and the reply's message id."""
    chat = ChatSession(app.base_url, login_cookie(app.base_url, user, password))
    await chat.connect()
    reply = await chat.send(f"hello from {user}")
    step_id = next(m["id"] for m in reply if "You said" in (m.get("output") or ""))
    # Steps are written in the background after task_end.
    await wait_until(lambda: _step(app, chat, step_id) is not None, 10, "the reply's step")
    return chat, step_id


def _thread(app: AppProcess, chat: ChatSession) -> dict:
    response = httpx.get(
        f"{app.base_url}/project/thread/{chat.thread_id}", headers={"Cookie": chat.cookie}
    )
    return response.json() if response.status_code == 200 else {}


def _step(app: AppProcess, chat: ChatSession, step_id: str) -> dict | None:
    steps = _thread(app, chat).get("steps") or []
    return next((s for s in steps if s["id"] == step_id), None)


def _rate(app: AppProcess, chat: ChatSession, **feedback: object) -> httpx.Response:
    return httpx.put(
        f"{app.base_url}/feedback",
        json={"sessionId": chat.session_id, "feedback": feedback},
        headers={"Cookie": chat.cookie},
    )


def _unrate(app: AppProcess, cookie: str | None, feedback_id: object) -> httpx.Response:
    return httpx.request(
        "DELETE",
        f"{app.base_url}/feedback",
        json={"feedbackId": feedback_id},
        headers={"Cookie": cookie} if cookie else {},
    )


@pytest.mark.slow
async def test_feedback_only_on_your_own_messages(make_app) -> None:
    app = make_app()
    add_user(app, "bob", "bobs-password")
    alice, alices_step = await _chat(app, "admin", ADMIN_PASSWORD)
    bob, bobs_step = await _chat(app, "bob", "bobs-password")

    # Bob cannot rate alice's message: not found, and nothing is stored.
    refused = _rate(app, bob, forId=alices_step, value=0, comment="bob was here")
    assert refused.status_code == 404, refused.text
    assert "feedback" not in _step(app, alice, alices_step)

    mine = _rate(app, alice, forId=alices_step, value=1, comment="mine")
    assert mine.status_code == 200, mine.text
    feedback_id = mine.json()["feedbackId"]

    # Nor overwrite alice's rating, by her message or by her feedback id on his own.
    for attempt in (
        {"forId": alices_step, "value": 0, "id": feedback_id},
        {"forId": alices_step, "value": 0},
        {"forId": bobs_step, "value": 0, "id": feedback_id},
    ):
        response = _rate(app, bob, **attempt, comment="overwritten")
        assert response.status_code == 404, (attempt, response.text)
    # Nor delete it.
    assert _unrate(app, bob.cookie, feedback_id).status_code == 404
    assert _unrate(app, None, feedback_id).status_code == 401
    stored = _step(app, alice, alices_step)["feedback"]
    assert (stored["id"], stored["value"], stored["comment"]) == (feedback_id, 1, "mine")
    assert "feedback" not in _step(app, bob, bobs_step)

    # Bob's own message takes his rating; alice still changes and removes her own.
    assert _rate(app, bob, forId=bobs_step, value=1).status_code == 200
    changed = _rate(app, alice, forId=alices_step, value=0, id=feedback_id, comment=None)
    assert changed.status_code == 200 and changed.json()["feedbackId"] == feedback_id
    assert _unrate(app, alice.cookie, feedback_id).status_code == 200
    assert "feedback" not in _step(app, alice, alices_step)

    # Malformed ids and values are the client's error, never a server error.
    assert _rate(app, alice, forId="x' OR 1=1", value=1).status_code == 400
    assert _rate(app, alice, forId=alices_step, value=1, id="../x").status_code == 400
    assert _rate(app, alice, forId=alices_step, value=7).status_code == 422
    assert _unrate(app, alice.cookie, "a" * 5000).status_code == 400
    await alice.close()
    await bob.close()
    assert "Traceback" not in app.log()


# -------------------------------------------------------------- the data layer itself


async def _owned_thread(layer: AtelierDataLayer, users, requester, name: str):
    account = await users.add(name, "correct horse battery")
    requester.act_as(account)
    thread_id = str(uuid.uuid4())
    await layer.update_thread(thread_id, name=f"{name}'s", user_id=account.id)
    step = step_dict(thread_id, output=f"{name}'s words")
    await layer.create_step(step)
    feedback_id = await layer.upsert_feedback(Feedback(forId=step["id"], value=1))
    return account, thread_id, step, feedback_id


async def test_a_call_that_names_nobody_is_refused(data_layer, users, requester) -> None:
    alice, thread_id, step, feedback_id = await _owned_thread(data_layer, users, requester, "a")
    image = Image(content=b"png", name="x.png", thread_id=thread_id, mime="image/png")
    requester.act_as(None)
    calls = {
        "get_thread": lambda: data_layer.get_thread(thread_id),
        "get_element": lambda: data_layer.get_element(thread_id, str(uuid.uuid4())),
        "create_step": lambda: data_layer.create_step(step_dict(thread_id)),
        "update_step": lambda: data_layer.update_step({**step, "output": "changed"}),
        "delete_step": lambda: data_layer.delete_step(step["id"]),
        "update_thread": lambda: data_layer.update_thread(thread_id, name="renamed"),
        "delete_thread": lambda: data_layer.delete_thread(thread_id),
        "list_threads": lambda: data_layer.list_threads(
            Pagination(first=10), ThreadFilter(userId=alice.id)
        ),
        "favorites": lambda: data_layer.get_favorite_steps(alice.id),
        "upsert_feedback": lambda: data_layer.upsert_feedback(
            Feedback(forId=step["id"], value=0, id=feedback_id)
        ),
        "delete_feedback": lambda: data_layer.delete_feedback(feedback_id),
        "create_element": lambda: data_layer.create_element(image),
        "delete_element": lambda: data_layer.delete_element(str(uuid.uuid4())),
    }
    for name, call in calls.items():
        with pytest.raises(AccessDenied):
            await call()
            pytest.fail(f"{name} ran for nobody")

    requester.act_as(alice)
    thread = await data_layer.get_thread(thread_id)
    assert thread["name"] == "a's" and thread["steps"][0]["output"] == "a's words"
    assert thread["steps"][0]["feedback"]["value"] == 1


async def test_the_real_requester_comes_from_context_or_an_explicit_marker(
    engine, media, users, requester, chainlit_context
) -> None:
    """The default requester: a Chainlit context without a user names nobody; `system`
    and `acting_as` say who it is explicitly."""
    injected = AtelierDataLayer(engine, media, LINK_SECRET, requester=requester)
    alice, thread_id, step, feedback_id = await _owned_thread(injected, users, requester, "a")
    bob = await users.add("b", "correct horse battery")
    layer = AtelierDataLayer(engine, media, LINK_SECRET)  # reads context / explicit marker

    with pytest.raises(AccessDenied):  # the HTTPSession of the fixture has no user
        await layer.get_thread(thread_id)
    with requesters.acting_as(bob.identifier, bob.id):
        assert await layer.get_thread(thread_id) is None
        with pytest.raises(NotFound):
            await layer.upsert_feedback(Feedback(forId=step["id"], value=0, id=feedback_id))
        with pytest.raises(NotFound):
            await layer.delete_feedback(feedback_id)
    with requesters.acting_as(alice.identifier, alice.id):
        assert (await layer.get_thread(thread_id))["steps"][0]["feedback"]["value"] == 1
    with requesters.system("test: the server reads a thread for maintenance"):
        assert (await layer.get_thread(thread_id))["name"] == "a's"
    with pytest.raises(ValueError), requesters.system(""):
        pass
