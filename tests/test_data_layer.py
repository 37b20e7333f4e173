"""AtelierDataLayer against real databases (SQLite and PostgreSQL), read back through
the data layer or straight from the tables — no mocks."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from chainlit.element import Image
from chainlit.types import Feedback, Pagination, ThreadFilter
from sqlalchemy import func, select, text
from structlog.testing import capture_logs

from core.errors import AccessDenied, InvalidInput, NotFound, PersistenceError
from memory import signed_links
from memory.data_layer import AtelierDataLayer
from memory.db import session_factory
from memory.media_store import MediaStore
from memory.models import Element, MediaRef, Step, Thread
from memory.users import Account, UserStore
from tests.db_fixtures import *  # noqa: F403 (fixtures)
from tests.db_fixtures import LINK_SECRET, step_dict

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(64))
CRAFTED_IDS = ["x' OR '1'='1", "../etc", "a" * 10_240]


async def make_user(users: UserStore, name: str) -> Account:
    return await users.add(name, "correct horse battery")


async def new_thread(dl: AtelierDataLayer, owner: Account, name: str | None = None) -> str:
    thread_id = str(uuid.uuid4())
    await dl.update_thread(thread_id, name=name, user_id=owner.id)
    return thread_id


async def list_all(dl: AtelierDataLayer, owner: Account, **filters: object) -> list[str]:
    page = await dl.list_threads(Pagination(first=100), ThreadFilter(userId=owner.id, **filters))
    return [t["id"] for t in page.data]


def image(thread_id: str, data: bytes = PNG, for_id: str | None = None) -> Image:
    return Image(content=data, name="x.png", thread_id=thread_id, mime="image/png", for_id=for_id)


# ------------------------------------------------------------------------ threads


async def test_create_get_and_rename_thread(data_layer, users, requester):
    alice = await make_user(users, "alice")
    requester.act_as(alice)
    thread_id = await new_thread(data_layer, alice, "First idea")

    thread = await data_layer.get_thread(thread_id)
    assert thread is not None
    assert (thread["name"], thread["userId"], thread["userIdentifier"]) == (
        "First idea",
        alice.id,
        "alice",
    )
    assert thread["steps"] == [] and thread["elements"] == []
    assert await data_layer.get_thread_author(thread_id) == "alice"

    await data_layer.update_thread(thread_id, name="Renamed", metadata={"k": "v"})
    thread = await data_layer.get_thread(thread_id)
    assert thread["name"] == "Renamed"
    assert thread["metadata"] == {"k": "v"}
    assert await list_all(data_layer, alice) == [thread_id]


async def test_list_threads_paginates_newest_first_with_cursor(data_layer, users, requester):
    alice = await make_user(users, "alice")
    requester.act_as(alice)
    created = [await new_thread(data_layer, alice, f"thread {i}") for i in range(45)]

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await data_layer.list_threads(
            Pagination(first=20, cursor=cursor), ThreadFilter(userId=alice.id)
        )
        pages += 1
        assert len(page.data) <= 20
        seen += [t["id"] for t in page.data]
        assert page.pageInfo.endCursor == (page.data[-1]["id"] if page.data else None)
        if not page.pageInfo.hasNextPage:
            break
        cursor = page.pageInfo.endCursor
        assert pages < 10, "pagination does not terminate"

    assert pages == 3
    assert len(seen) == len(set(seen)) == 45
    assert seen == created[::-1]


async def test_the_sidebar_lists_by_last_activity(data_layer, users, requester):
    """A conversation written to again rises to the top, dated by its last message."""
    alice = await make_user(users, "alice")
    requester.act_as(alice)
    first, second, third = [await new_thread(data_layer, alice, f"t{i}") for i in range(3)]
    assert await list_all(data_layer, alice) == [third, second, first]
    await data_layer.create_step(step_dict(first, type="user_message", output="again"))

    page = await data_layer.list_threads(Pagination(first=2), ThreadFilter(userId=alice.id))
    assert [t["id"] for t in page.data] == [first, third]
    resumed = (await data_layer.get_thread(first))["createdAt"]
    assert page.data[0]["createdAt"] > resumed  # listed at its activity, not its creation
    rest = await data_layer.list_threads(
        Pagination(first=2, cursor=page.pageInfo.endCursor), ThreadFilter(userId=alice.id)
    )
    assert [t["id"] for t in rest.data] == [second]


async def test_search_by_name_and_message_text(data_layer, users, requester):
    alice = await make_user(users, "alice")
    requester.act_as(alice)
    by_name = await new_thread(data_layer, alice, "Purple giraffe poster")
    by_user_message = await new_thread(data_layer, alice, "untitled")
    by_assistant_message = await new_thread(data_layer, alice, "untitled")
    by_tool_only = await new_thread(data_layer, alice, "untitled")
    await data_layer.create_step(
        step_dict(by_user_message, type="user_message", output="draw a GIRAFFE please")
    )
    await data_layer.create_step(step_dict(by_assistant_message, output="Here is your giraffe."))
    await data_layer.create_step(
        step_dict(by_tool_only, type="tool", name="generate", output="giraffe.png")
    )

    found = await list_all(data_layer, alice, search="giraffe")
    assert set(found) == {by_name, by_user_message, by_assistant_message}
    assert await list_all(data_layer, alice, search="no such words") == []


async def test_search_wildcards_match_literally(data_layer, users, requester):
    alice = await make_user(users, "alice")
    requester.act_as(alice)
    percent = await new_thread(data_layer, alice, "100% cotton")
    await new_thread(data_layer, alice, "100 cotton")
    underscore = await new_thread(data_layer, alice, "snake_case names")
    await new_thread(data_layer, alice, "snakeXcase names")
    in_message = await new_thread(data_layer, alice, "untitled")
    await data_layer.create_step(step_dict(in_message, type="user_message", output="50% off"))

    assert await list_all(data_layer, alice, search="100%") == [percent]
    assert await list_all(data_layer, alice, search="e_c") == [underscore]
    assert await list_all(data_layer, alice, search="0%") == [in_message, percent]
    assert await list_all(data_layer, alice, search="%") == [in_message, percent]
    assert await list_all(data_layer, alice, search="_") == [underscore]


async def search_pages(dl: AtelierDataLayer, owner: Account, search: str) -> list[str]:
    """Every page of a search, 20 at a time, following the cursor."""
    seen: list[str] = []
    cursor = None
    while True:
        page = await dl.list_threads(
            Pagination(first=20, cursor=cursor), ThreadFilter(userId=owner.id, search=search)
        )
        seen += [t["id"] for t in page.data]
        if not page.pageInfo.hasNextPage:
            return seen
        cursor = page.pageInfo.endCursor
        assert len(seen) < 1000, "search pagination does not terminate"


async def test_search_sees_only_the_requesters_threads(data_layer, users, requester):
    alice = await make_user(users, "alice")
    bob = await make_user(users, "bob")
    requester.act_as(bob)
    bobs_by_name = await new_thread(data_layer, bob, "Zanzibar trip")
    bobs_by_message = await new_thread(data_layer, bob, "untitled")
    await data_layer.create_step(
        step_dict(bobs_by_message, type="user_message", output="off to zanzibar tomorrow")
    )
    requester.act_as(alice)
    alices = await new_thread(data_layer, alice, "untitled")
    await data_layer.create_step(step_dict(alices, output="Here is a map of ZANZIBAR."))

    for search in ("zanzibar", "anz", "za", "z"):
        assert await list_all(data_layer, alice, search=search) == [alices], search
    for search in ("Zanzibar trip", "trip", "tomorrow"):  # Bob's name and message
        assert await list_all(data_layer, alice, search=search) == [], search
    requester.act_as(bob)
    assert await list_all(data_layer, bob, search="zanzibar") == [bobs_by_message, bobs_by_name]
    with pytest.raises(NotFound):  # naming someone else's user id lists nothing of theirs
        await list_all(data_layer, alice, search="zanzibar")


async def test_search_wildcards_in_messages_match_literally(data_layer, users, requester):
    """Searches of three or more characters, which the index answers, mean the same."""
    alice = await make_user(users, "alice")
    requester.act_as(alice)
    texts = {
        "percent": "prices cut 50% off today",
        "digits": "prices cut 500 off today",
        "underscore": "write it in snake_case please",
        "letter": "write it in snakeXcase please",
        "backslash": r"saved to C:\temp\kite.png",
        "quotes": 'she said "hello there" twice',
    }
    ids = {}
    for key, output in texts.items():
        ids[key] = await new_thread(data_layer, alice, "untitled")
        await data_layer.create_step(step_dict(ids[key], type="user_message", output=output))

    async def found(search: str) -> set[str]:
        return {k for k, v in ids.items() if v in await list_all(data_layer, alice, search=search)}

    assert await found("50% off") == {"percent"}
    assert await found("0% o") == {"percent"}
    assert await found("%") == {"percent"}
    assert await found("ake_c") == {"underscore"}
    assert await found("e_case") == {"underscore"}
    assert await found("_") == {"underscore"}
    assert await found(r"C:\temp") == {"backslash"}
    assert await found('"hello') == {"quotes"}
    assert await found('said "hello there" tw') == {"quotes"}
    assert await found("PRICES CUT") == {"percent", "digits"}
    assert await found("%%") == set()


@pytest.mark.parametrize("candidate_limit", [None, 1], ids=["index", "walk"])
async def test_search_finds_a_message_among_many_threads(
    data_layer, users, requester, monkeypatch, candidate_limit
):
    """One word in one message of one thread among 45; a common word pages through all.

    On SQLite a search answered from the index and one that walks the threads (when the
    index says too many messages match) must find the same.
    """
    if candidate_limit is not None:
        monkeypatch.setattr("memory.data_layer._SQLITE_INDEX_CANDIDATES", candidate_limit)
    alice = await make_user(users, "alice")
    bob = await make_user(users, "bob")
    requester.act_as(bob)
    bobs = await new_thread(data_layer, bob, "lantern quetzal")
    await data_layer.create_step(step_dict(bobs, output="a quetzal by a lantern"))
    requester.act_as(alice)
    created = []
    for i in range(45):
        thread_id = await new_thread(
            data_layer, alice, "lantern study" if i % 7 == 0 else "untitled"
        )
        await data_layer.create_step(
            step_dict(thread_id, type="user_message", output=f"draw a red lantern, take {i}")
        )
        reply = "here is the lantern, in watercolor"
        if i == 17:
            reply = "here is the lantern, with a resplendent quetzal on the branch"
        await data_layer.create_step(step_dict(thread_id, output=reply))
        await data_layer.create_step(
            step_dict(thread_id, type="tool", name="generate", output="quetzal.png")
        )
        created.append(thread_id)

    assert await list_all(data_layer, alice, search="quetzal") == [created[17]]
    assert await list_all(data_layer, alice, search="resplendent QUETZAL") == [created[17]]
    assert await search_pages(data_layer, alice, "lantern") == created[::-1]
    assert await search_pages(data_layer, alice, "take 1") == [
        created[i] for i in (19, 18, 17, 16, 15, 14, 13, 12, 11, 10, 1)
    ]
    assert await list_all(data_layer, alice, search="no such words") == []


async def test_search_of_one_or_two_characters(data_layer, users, requester):
    alice = await make_user(users, "alice")
    requester.act_as(alice)
    fox = await new_thread(data_layer, alice, "untitled")
    await data_layer.create_step(step_dict(fox, type="user_message", output="a red fox"))
    cart = await new_thread(data_layer, alice, "Ox cart")
    await new_thread(data_layer, alice, "nothing here")

    assert await list_all(data_layer, alice, search="fo") == [fox]
    assert await list_all(data_layer, alice, search="OX") == [cart, fox]
    assert await list_all(data_layer, alice, search="x") == [cart, fox]
    assert await list_all(data_layer, alice, search="q") == []


async def test_search_follows_edited_and_deleted_messages(data_layer, users, requester, engine):
    alice = await make_user(users, "alice")
    requester.act_as(alice)
    thread_id = await new_thread(data_layer, alice, "untitled")
    step = step_dict(thread_id, output="")
    await data_layer.create_step(step)
    for output in ("Otters", "Otters hold", "Otters hold hands while they sleep"):  # streaming
        await data_layer.update_step({**step, "output": output})
    assert await list_all(data_layer, alice, search="hands while") == [thread_id]

    await data_layer.update_step({**step, "output": "Beavers build dams"})
    assert await list_all(data_layer, alice, search="otters") == []
    assert await list_all(data_layer, alice, search="beavers") == [thread_id]
    await data_layer.update_step({**step, "type": "tool", "output": "Beavers build dams"})
    assert await list_all(data_layer, alice, search="beavers") == []  # not a message now
    await data_layer.update_step({**step, "output": "Beavers build dams"})
    assert await list_all(data_layer, alice, search="beavers") == [thread_id]
    await data_layer.delete_step(step["id"])
    assert await list_all(data_layer, alice, search="beavers") == []

    other = await new_thread(data_layer, alice, "untitled")
    await data_layer.create_step(step_dict(other, type="user_message", output="a heron"))
    await data_layer.delete_thread(other)
    assert await list_all(data_layer, alice, search="heron") == []
    kept = step_dict(thread_id, type="user_message", output="a kingfisher")
    await data_layer.create_step(kept)
    assert await list_all(data_layer, alice, search="kingfisher") == [thread_id]

    async with engine.connect() as conn:
        if engine.dialect.name == "sqlite":  # the FTS documents are exactly the messages
            docs = await conn.scalars(text("SELECT step_id FROM step_search_docs"))
            messages = await conn.scalars(
                select(Step.id).where(Step.type.in_(("user_message", "assistant_message")))
            )
            assert list(docs) == list(messages) == [kept["id"]]
            await conn.execute(
                text("INSERT INTO step_search (step_search) VALUES ('integrity-check')")
            )
        else:
            names = await conn.scalars(
                text("SELECT indexname FROM pg_indexes WHERE indexname LIKE '%_trgm'")
            )
            assert {"ix_steps_output_trgm", "ix_threads_name_trgm"} <= set(names)


async def test_search_works_without_its_index(data_layer, users, requester, engine, media):
    """Where migration 0010 could not build the index (no pg_trgm, no FTS5), search still
    finds the same, unindexed, and says so in the log."""
    alice = await make_user(users, "alice")
    requester.act_as(alice)
    kite = await new_thread(data_layer, alice, "untitled")
    await data_layer.create_step(step_dict(kite, type="user_message", output="a 100% red kite"))
    named = await new_thread(data_layer, alice, "Kites")
    async with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            for trigger in ("steps_search_insert", "steps_search_update", "steps_search_delete"):
                await conn.execute(text(f"DROP TRIGGER {trigger}"))
            await conn.execute(text("DROP TABLE step_search"))
            await conn.execute(text("DROP TABLE step_search_docs"))
        else:
            await conn.execute(text("DROP INDEX ix_steps_output_trgm"))
            await conn.execute(text("DROP INDEX ix_threads_name_trgm"))
    layer = AtelierDataLayer(engine, media, LINK_SECRET, requester=requester)

    with capture_logs() as logs:
        assert await list_all(layer, alice, search="red kite") == [kite]
        assert await list_all(layer, alice, search="0% r") == [kite]
        assert await list_all(layer, alice, search="kite") == [named, kite]
        assert await list_all(layer, alice, search="k") == [named, kite]
    assert [e["event"] for e in logs].count("search_unindexed") == 1


async def test_delete_thread_removes_steps_and_elements(data_layer, users, requester, engine):
    alice = await make_user(users, "alice")
    requester.act_as(alice)
    thread_id = await new_thread(data_layer, alice, "to delete")
    kept = await new_thread(data_layer, alice, "to keep")
    step = step_dict(thread_id, output="hello")
    await data_layer.create_step(step)
    await data_layer.create_step(step_dict(kept, output="stay"))
    await data_layer.create_element(image(thread_id, for_id=step["id"]))

    await data_layer.delete_thread(thread_id)

    assert await data_layer.get_thread(thread_id) is None
    assert await list_all(data_layer, alice) == [kept]
    async with session_factory(engine)() as session:
        for model in (Step, Element, MediaRef):
            rows = await session.scalar(
                select(func.count()).select_from(model).where(model.thread_id == thread_id)
            )
            assert rows == 0, model.__tablename__
        assert await session.scalar(select(func.count()).select_from(Step)) == 1
    with pytest.raises(NotFound):
        await data_layer.delete_thread(thread_id)


# -------------------------------------------------------------------------- steps


async def test_quick_concurrent_step_writes_all_land_in_order(data_layer, users, requester):
    """Chainlit's Step.send()/update() fire create and update as parallel tasks."""
    alice = await make_user(users, "alice")
    requester.act_as(alice)
    thread_id = str(uuid.uuid4())  # created by the first step write, as Chainlit does
    start = datetime.now(UTC)
    steps = [
        step_dict(thread_id, output="", created=start + timedelta(milliseconds=i))
        for i in range(60)
    ]

    tasks = []
    for i, step in enumerate(steps):
        tasks.append(asyncio.create_task(data_layer.create_step(step)))
        tasks.append(asyncio.create_task(data_layer.update_step({**step, "output": f"final {i}"})))
    await asyncio.gather(*tasks)

    thread = await data_layer.get_thread(thread_id)
    assert thread is not None and thread["userId"] == alice.id
    stored = thread["steps"]
    assert [s["id"] for s in stored] == [s["id"] for s in steps]
    assert [s["output"] for s in stored] == [f"final {i}" for i in range(60)]
    stamps = [s["createdAt"] for s in stored]
    assert all(a < b for a, b in zip(stamps, stamps[1:], strict=False))


async def test_older_write_arriving_late_never_wins(data_layer, users, requester):
    alice = await make_user(users, "alice")
    requester.act_as(alice)
    thread_id = await new_thread(data_layer, alice)
    step = step_dict(thread_id)

    await data_layer.write_step({**step, "output": "newest"}, version=300)
    await data_layer.write_step({**step, "output": "stale"}, version=100)
    await data_layer.write_step({**step, "output": "also stale"}, version=300)
    assert [s["output"] for s in (await data_layer.get_thread(thread_id))["steps"]] == ["newest"]

    await data_layer.write_step({**step, "output": "newer still"}, version=301)
    assert [s["output"] for s in (await data_layer.get_thread(thread_id))["steps"]] == [
        "newer still"
    ]


@pytest.mark.parametrize("crafted", CRAFTED_IDS, ids=["sql", "path", "10kb"])
async def test_crafted_thread_ids_are_rejected(data_layer, users, requester, crafted):
    alice = await make_user(users, "alice")
    requester.act_as(alice)
    await new_thread(data_layer, alice, "real")

    with pytest.raises(InvalidInput):
        await data_layer.get_thread(crafted)
    with pytest.raises(InvalidInput):
        await data_layer.update_thread(crafted, name="x")
    with pytest.raises(InvalidInput):
        await data_layer.create_step(step_dict(crafted))
    with pytest.raises(InvalidInput):
        await data_layer.delete_thread(crafted)
    with pytest.raises(InvalidInput):
        await data_layer.list_threads(
            Pagination(first=20, cursor=crafted), ThreadFilter(userId=alice.id)
        )
    assert await data_layer.get_thread_author(crafted) == ""
    assert len(await list_all(data_layer, alice)) == 1


# ---------------------------------------------------------------------- isolation


async def test_messages_in_ones_own_conversation_take_the_short_path(data_layer, users, requester):
    """A step's create and updates in its owner's conversation are written by the
    one-trip path (memory/pg_step_write.py, memory/sqlite_step_writer.py), not sent
    down the full path after failing there."""
    from structlog.testing import capture_logs

    alice = await make_user(users, "alice")
    requester.act_as(alice)
    thread_id = await new_thread(data_layer, alice, "alice's")
    step = step_dict(thread_id, output="first", metadata={"k": [1, 2]}, tags=["t"])
    with capture_logs() as logs:
        await data_layer.create_step(step)
        await data_layer.update_step({**step, "output": "second", "name": "Atelier"})
    assert [e for e in logs if e["event"] == "batched_step_write_failed"] == []
    [stored] = (await data_layer.get_thread(thread_id))["steps"]
    assert (stored["output"], stored["name"], stored["metadata"]) == (
        "second",
        "Atelier",
        {"k": [1, 2]},
    )


async def test_a_step_id_of_another_users_message_cannot_be_taken_over(
    data_layer, users, requester
):
    """Alice writes into her own conversation with the id of Bob's message: refused on
    the one-statement path (memory/pg_step_write.py, memory/sqlite_step_writer.py), and
    Bob's message keeps its words and its place."""
    alice, bob, bobs_thread, bobs_step = await _bobs_message(data_layer, users, requester, "bob's")

    requester.act_as(alice)
    alices_thread = await new_thread(data_layer, alice, "alice's")
    await data_layer.create_step(step_dict(alices_thread, output="alice's own"))
    taken = {**bobs_step, "threadId": alices_thread, "output": "stolen"}
    with pytest.raises(InvalidInput):
        await data_layer.create_step(taken)
    with pytest.raises(InvalidInput):
        await data_layer.update_step(taken)
    assert [s["output"] for s in (await data_layer.get_thread(alices_thread))["steps"]] == [
        "alice's own"
    ]

    requester.act_as(bob)
    assert [s["output"] for s in (await data_layer.get_thread(bobs_thread))["steps"]] == [
        "bob's words"
    ]


async def _bobs_message(data_layer, users, requester, thread_name: str):
    """Alice and Bob; Bob has a conversation with one message of his, and is asking."""
    alice = await make_user(users, "alice")
    bob = await make_user(users, "bob")
    requester.act_as(bob)
    bobs_thread = await new_thread(data_layer, bob, thread_name)
    bobs_step = step_dict(bobs_thread, type="user_message", output="bob's words")
    await data_layer.create_step(bobs_step)
    return alice, bob, bobs_thread, bobs_step


async def test_users_cannot_reach_each_others_threads(data_layer, users, requester, engine):
    alice, bob, bobs_thread, bobs_step = await _bobs_message(
        data_layer, users, requester, "bob's secret"
    )
    bobs_image = image(bobs_thread, for_id=bobs_step["id"])
    await data_layer.create_element(bobs_image)
    feedback_id = await data_layer.upsert_feedback(Feedback(forId=bobs_step["id"], value=1))

    requester.act_as(alice)
    alices_thread = await new_thread(data_layer, alice, "alice's")
    assert await data_layer.get_thread(bobs_thread) is None
    assert await data_layer.get_element(bobs_thread, bobs_image.id) is None
    with pytest.raises(NotFound):
        await data_layer.create_step(step_dict(bobs_thread, output="injected"))
    with pytest.raises(NotFound):
        await data_layer.update_step({**bobs_step, "output": "overwritten"})
    with pytest.raises(NotFound):
        await data_layer.create_element(image(bobs_thread, data=b"alice's bytes"))
    with pytest.raises(NotFound):
        await data_layer.delete_thread(bobs_thread)
    with pytest.raises(NotFound):
        await data_layer.update_thread(bobs_thread, user_id=alice.id)
    with pytest.raises(NotFound):
        await data_layer.update_thread(bobs_thread, name="renamed by alice")
    with pytest.raises(NotFound):
        await data_layer.delete_element(bobs_image.id)
    with pytest.raises(NotFound):
        await data_layer.delete_step(bobs_step["id"])
    with pytest.raises(NotFound):
        await data_layer.upsert_feedback(Feedback(forId=bobs_step["id"], value=0))
    with pytest.raises(NotFound):
        await data_layer.delete_feedback(feedback_id)
    assert await list_all(data_layer, alice) == [alices_thread]
    assert await list_all(data_layer, alice, search="bob") == []
    assert await data_layer.recent_messages(bobs_thread, 10) == []  # no history to borrow

    # A call that names nobody is refused outright; even the server cannot move a
    # thread to another owner.
    requester.act_as(None)
    with pytest.raises(AccessDenied):
        await data_layer.update_thread(bobs_thread, user_id=alice.id)
    requester.as_system()
    with pytest.raises(NotFound):
        await data_layer.update_thread(bobs_thread, user_id=alice.id)

    requester.act_as(bob)
    thread = await data_layer.get_thread(bobs_thread)
    assert thread is not None and thread["name"] == "bob's secret"
    assert [s["output"] for s in thread["steps"]] == ["bob's words"]
    assert [m["output"] for m in await data_layer.recent_messages(bobs_thread, 10)] == [
        "bob's words"
    ]
    assert thread["steps"][0]["feedback"]["value"] == 1
    assert [e["id"] for e in thread["elements"]] == [bobs_image.id]
    assert await data_layer.get_element(bobs_thread, bobs_image.id) is not None
    async with session_factory(engine)() as session:
        refs = (await session.execute(select(MediaRef.thread_id, MediaRef.user_id))).all()
        assert [tuple(r) for r in refs] == [(bobs_thread, bob.id)]
        owner = await session.scalar(select(Thread.user_id).where(Thread.id == bobs_thread))
        assert owner == bob.id


async def test_media_refs_name_only_the_uploading_thread(data_layer, users, requester, engine):
    alice = await make_user(users, "alice")
    bob = await make_user(users, "bob")
    requester.act_as(bob)
    bobs_thread = await new_thread(data_layer, bob)
    bobs_image = image(bobs_thread)
    await data_layer.create_element(bobs_image)
    requester.act_as(alice)
    alices_thread = await new_thread(data_layer, alice)
    await data_layer.create_element(image(alices_thread, data=b"other bytes"))

    requester.act_as(bob)
    key = (await data_layer.get_element(bobs_thread, bobs_image.id))["objectKey"]
    async with session_factory(engine)() as session:
        refs = (
            await session.execute(
                select(MediaRef.thread_id, MediaRef.user_id).where(MediaRef.media_key == key)
            )
        ).all()
    assert [tuple(r) for r in refs] == [(bobs_thread, bob.id)]


# ----------------------------------------------------------------------- elements


async def test_element_bytes_go_to_the_media_store(data_layer, users, requester, media):
    alice = await make_user(users, "alice")
    requester.act_as(alice)
    thread_id = await new_thread(data_layer, alice)
    step = step_dict(thread_id, output="two copies")
    await data_layer.create_step(step)
    first, second = image(thread_id, for_id=step["id"]), image(thread_id, for_id=step["id"])
    await data_layer.create_element(first)
    await data_layer.create_element(second)

    elements = (await data_layer.get_thread(thread_id))["elements"]
    assert {e["id"] for e in elements} == {first.id, second.id}
    keys = {e["objectKey"] for e in elements}
    assert len(keys) == 1, "same bytes must give the same content-addressed key"
    key = keys.pop()
    assert len(key) == 64
    for element in elements:
        assert element["url"].startswith(f"/media/{key}?exp=")
        assert (element["forId"], element["mime"], element["type"]) == (
            step["id"],
            "image/png",
            "image",
        )
        query = parse_qs(urlsplit(element["url"]).query)
        assert signed_links.verify(LINK_SECRET, key, query["exp"][0], query["sig"][0])
    assert media.get(key) == PNG
    assert sum(1 for p in media.root.rglob("*") if p.is_file()) == 1

    fetched = await data_layer.get_element(thread_id, first.id)
    assert fetched["objectKey"] == key and fetched["url"].startswith(f"/media/{key}?exp=")


async def test_element_from_path_is_stored(data_layer, users, requester, media, tmp_path):
    alice = await make_user(users, "alice")
    requester.act_as(alice)
    thread_id = await new_thread(data_layer, alice)
    source = tmp_path / "upload.png"
    source.write_bytes(PNG + b"from disk")
    element = Image(path=str(source), name="upload.png", thread_id=thread_id, mime="image/png")
    await data_layer.create_element(element)

    stored = await data_layer.get_element(thread_id, element.id)
    assert media.get(stored["objectKey"]) == PNG + b"from disk"


# ----------------------------------------------------------------------- feedback


async def test_feedback_upsert_delete_and_filter(data_layer, users, requester):
    alice = await make_user(users, "alice")
    requester.act_as(alice)
    rated = await new_thread(data_layer, alice, "rated")
    unrated = await new_thread(data_layer, alice, "unrated")
    step = step_dict(rated, output="an answer")
    await data_layer.create_step(step)
    await data_layer.create_step(step_dict(unrated, output="another"))

    feedback_id = await data_layer.upsert_feedback(
        Feedback(forId=step["id"], value=1, comment="nice")
    )
    assert (await data_layer.get_thread(rated))["steps"][0]["feedback"] == {
        "id": feedback_id,
        "forId": step["id"],
        "threadId": rated,
        "value": 1,
        "comment": "nice",
    }
    assert await list_all(data_layer, alice, feedback=1) == [rated]
    assert await list_all(data_layer, alice, feedback=0) == []

    again = await data_layer.upsert_feedback(
        Feedback(forId=step["id"], value=0, id=feedback_id, comment=None)
    )
    assert again == feedback_id
    stored = (await data_layer.get_thread(rated))["steps"][0]["feedback"]
    assert (stored["value"], stored["comment"]) == (0, None)
    assert await list_all(data_layer, alice, feedback=0) == [rated]
    assert await list_all(data_layer, alice, feedback=1) == []

    # Without an id, a second rating of the same message updates the same row.
    assert await data_layer.upsert_feedback(Feedback(forId=step["id"], value=1)) == feedback_id

    assert await data_layer.delete_feedback(feedback_id) is True
    assert "feedback" not in (await data_layer.get_thread(rated))["steps"][0]
    assert await data_layer.delete_feedback(feedback_id) is False
    assert await list_all(data_layer, alice, feedback=1) == []

    with pytest.raises(NotFound):
        await data_layer.upsert_feedback(Feedback(forId=str(uuid.uuid4()), value=1))


# ---------------------------------------------------------------- failing writes


async def _drop_table(engine, table: str) -> None:
    await engine.dispose()
    async with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            await connection.execute(text(f'DROP TABLE "{table}" CASCADE'))
        else:
            # With foreign keys off, as migrations drop tables: with them on, SQLite first
            # deletes every row, cascading into steps, and the search index's triggers
            # cannot write to FTS5 while a table is being dropped ("table is locked").
            await connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            await connection.execute(text(f'DROP TABLE "{table}"'))
        await connection.commit()
    await engine.dispose()


@pytest.mark.parametrize("table", ["steps", "elements", "feedbacks", "threads"])
async def test_failed_writes_raise(data_layer, users, requester, engine, table):
    alice = await make_user(users, "alice")
    requester.act_as(alice)
    thread_id = await new_thread(data_layer, alice, "before")
    step = step_dict(thread_id, output="before")
    await data_layer.create_step(step)
    feedback_id = await data_layer.upsert_feedback(Feedback(forId=step["id"], value=1))

    await _drop_table(engine, table)

    with capture_logs() as logs, pytest.raises(PersistenceError):
        if table == "steps":
            await data_layer.update_step({**step, "output": "after"})
        elif table == "elements":
            await data_layer.create_element(image(thread_id))
        elif table == "feedbacks":
            await data_layer.upsert_feedback(Feedback(forId=step["id"], value=0, id=feedback_id))
        else:
            await data_layer.update_thread(thread_id, name="after")
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["persist_failed"]


async def test_write_into_someone_elses_thread_raises_and_stores_nothing(
    data_layer, users, requester, engine
):
    alice = await make_user(users, "alice")
    bob = await make_user(users, "bob")
    requester.act_as(bob)
    bobs_thread = await new_thread(data_layer, bob)

    requester.act_as(alice)
    step = step_dict(bobs_thread, output="sneaky")
    with pytest.raises(NotFound):
        await data_layer.create_step(step)
    with pytest.raises(NotFound):
        await data_layer.write_step(step, version=10**19)
    async with session_factory(engine)() as session:
        assert await session.get(Step, step["id"]) is None


async def test_media_store_failure_is_not_silent(data_layer, users, requester, tmp_path):
    alice = await make_user(users, "alice")
    requester.act_as(alice)
    thread_id = await new_thread(data_layer, alice)
    missing = Image(path=str(tmp_path / "gone.png"), name="gone.png", thread_id=thread_id)
    with pytest.raises(PersistenceError):
        await data_layer.create_element(missing)
    assert (await data_layer.get_thread(thread_id))["elements"] == []


def test_media_store_is_content_addressed(tmp_path):
    store = MediaStore(tmp_path / "m")
    assert store.put(b"same") == store.put(b"same") != store.put(b"other")
    with pytest.raises(NotFound):
        store.get("../" + "0" * 61)


async def test_no_thread_can_be_created_for_someone_else(data_layer, users, requester):
    alice = await make_user(users, "alice")
    bob = await make_user(users, "bob")
    requester.act_as(alice)
    with pytest.raises(NotFound):
        await data_layer.update_thread(str(uuid.uuid4()), name="planted", user_id=bob.id)
    with pytest.raises(NotFound):  # nor can alice list bob's conversations
        await list_all(data_layer, bob)
    requester.act_as(bob)
    assert await list_all(data_layer, bob) == []


async def test_element_id_reused_in_another_thread_is_refused(data_layer, users, requester):
    alice = await make_user(users, "alice")
    requester.act_as(alice)
    first, second = await new_thread(data_layer, alice), await new_thread(data_layer, alice)
    element = image(first)
    await data_layer.create_element(element)
    element.thread_id = second
    with pytest.raises(InvalidInput):
        await data_layer.create_element(element)


async def test_thread_times_carry_an_offset(data_layer, users, requester):
    alice = await make_user(users, "alice")
    requester.act_as(alice)
    thread = await data_layer.get_thread(await new_thread(data_layer, alice))
    assert datetime.fromisoformat(thread["createdAt"]).tzinfo is not None


async def test_naming_a_thread_a_step_already_created_keeps_the_name(data_layer, users, requester):
    alice = await make_user(users, "alice")
    requester.act_as(alice)
    thread_id = str(uuid.uuid4())
    await data_layer.create_step(step_dict(thread_id, type="user_message", output="hi"))
    await data_layer.update_thread(thread_id, name="draw a fox", user_id=alice.id)
    thread = await data_layer.get_thread(thread_id)
    assert (thread["name"], thread["userId"]) == ("draw a fox", alice.id)
