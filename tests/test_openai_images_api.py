"""The OpenAI-compatible images API, spoken to by the real `openai` client.

One app (a subprocess, `atelier run`) for the module, whose OpenAI backend is the fake
OpenAI server: every image is drawn by the fake, priced, reserved and settled by the
app's ledger, and recorded in the token's "API · <name>" conversation. Three accounts:
alice (the images), bob (the second account, who must not see alice's), carol (a tiny
daily budget). Tokens are made by the app's token store, and with `atelier tokens` where
the operator's path is what is tested (add, revoke).
What is checked is what a client and the user would see: the SDK's objects and
exceptions, the conversation in the history, the gallery's record and lineage.
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

import httpx
import openai
import pytest
from PIL import Image
from sqlalchemy import select

from core.errors import NotFound
from memory.api_threads import ApiThreads, conversation_id
from memory.api_tokens import ApiTokenStore
from memory.db import create_engine, session_factory
from memory.ledger import Ledger
from memory.models import Step, Thread
from memory.users import UserStore
from tests.app_process import AppProcess, add_user, app_rows, atelier
from tests.chat_client import ChatSession, login_cookie
from tests.db_fixtures import db_url, engine  # noqa: F401 - fixtures
from tests.fakes.openai_server import FakeOpenAI

pytestmark = pytest.mark.slow

RATE_PER_MINUTE = 12
PASSWORDS = {"alice": "alice-password-1", "bob": "bob-password-12", "carol": "carol-password"}


@dataclass
class World:
    app: AppProcess
    fake: FakeOpenAI
    ids: dict[str, str]  # user name -> user id
    cookies: dict[str, str]  # user name -> login cookie

    def token(self, user: str, name: str) -> tuple[str, str]:
        """A new API token for `user`: (token, token id), made by the app's token store
        in its database (as its /tokens command does; the CLI costs a process)."""
        return asyncio.run(_add_token(self.app, self.ids[user], name))

    def cli_token(self, user: str, name: str) -> tuple[str, str]:
        """A new API token made with `atelier tokens add`, as an operator would."""
        made = atelier("tokens", "--data-dir", str(self.app.data_dir), "add", user, "--name", name)
        assert made.returncode == 0, made.stderr
        token = next(line for line in made.stdout.splitlines() if line.startswith("atl_"))
        token_id = re.search(r"Made API token ([0-9a-f-]{36})", made.stdout)
        assert token_id, made.stdout
        return token, token_id[1]

    def client(self, token: str, **options: object) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.app.base_url}/v1", api_key=token, **options)

    def as_user(self, user: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.app.base_url,
            headers={"Cookie": self.cookies[user], "X-Atelier": "1"},
            timeout=30,
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("openai-api")
    with FakeOpenAI() as fake:
        app = AppProcess(
            root / "data",
            {
                "OPENAI_API_KEY": "sk-test-not-a-real-key",
                "OPENAI_BASE_URL": fake.base_url,
                "ATELIER_API_RATE_PER_MINUTE": str(RATE_PER_MINUTE),
            },
        ).start()
        try:
            for name, password in PASSWORDS.items():
                add_user(app, name, password)
            rows = app_rows(app, "SELECT id, identifier FROM users")
            ids = {row["identifier"]: row["id"] for row in rows}
            cookies = {name: login_cookie(app.base_url, name, pw) for name, pw in PASSWORDS.items()}
            asyncio.run(_tiny_budget(app, ids["carol"]))
            yield World(app, fake, ids, cookies)
        finally:
            app.stop()
            if "Traceback" in app.log():
                print(app.log())


async def _add_token(app: AppProcess, user_id: str, name: str) -> tuple[str, str]:
    db = create_engine(f"sqlite+aiosqlite:///{app.data_dir / 'atelier.db'}")
    try:
        record, token = await ApiTokenStore(session_factory(db)).add(user_id, name)
    finally:
        await db.dispose()
    return token, record.id


async def _tiny_budget(app: AppProcess, user_id: str) -> None:
    """Carol's own daily budget, as she would set it in the settings panel."""
    db = create_engine(f"sqlite+aiosqlite:///{app.data_dir / 'atelier.db'}")
    try:
        await Ledger(db).set_budget("user_day", user_id, Decimal("0.001"), user_id=user_id)
    finally:
        await db.dispose()


def _png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image


def _atelier(result: openai.types.ImagesResponse) -> dict:
    extra = result.model_extra or {}
    assert "atelier" in extra, result
    return extra["atelier"]


# ------------------------------------------------------------------------ models


def test_models_lists_backend_ids_and_plain_names(world: World) -> None:
    token, _ = world.token("alice", "models")
    ids = [model.id for model in world.client(token).models.list()]
    assert "openai:gpt-image-2" in ids
    assert "gpt-image-2" in ids  # the plain alias a client that knows OpenAI sends
    assert "gpt-image-1.5" not in ids and "openai:gpt-image-1.5" not in ids  # shut down


# ------------------------------------------------------------------- generations


def test_generate_b64_is_recorded_with_cost_in_history_and_lineage(world: World) -> None:
    token, token_id = world.cli_token("alice", "sdk")
    result = world.client(token).images.generate(
        model="gpt-image-2", prompt="a red fox in the snow", size="1536x1024", quality="low"
    )
    assert len(result.data) == 1 and result.data[0].url is None
    image = _png(base64.b64decode(result.data[0].b64_json))
    assert image.size == (1536, 1024)
    assert result.size == "1536x1024" and result.quality == "low"
    assert result.usage is not None and result.usage.output_tokens > 0
    sent = world.fake.last_request("/images/generations").json
    assert sent["model"] == "gpt-image-2" and sent["size"] == "1536x1024"

    extra = _atelier(result)
    image_id = extra["images"][0]["id"]
    assert Decimal(extra["cost_usd"]) > 0 and extra["cost_source"] == "reported"
    assert extra["conversation_id"] == conversation_id(token_id)

    alice = world.as_user("alice")
    # In the history: the token's conversation, the request and the image.
    threads = alice.post(
        "/project/threads", json={"pagination": {"first": 20}, "filter": {}}
    ).json()["data"]
    assert any(t["id"] == extra["conversation_id"] and t["name"] == "API · sdk" for t in threads)
    thread = alice.get(f"/project/thread/{extra['conversation_id']}").json()
    kinds = [(s["type"], s["output"]) for s in thread["steps"]]
    assert ("user_message", "a red fox in the snow") in [(k, o.split("\n")[0]) for k, o in kinds]
    assert any(k == "assistant_message" and image_id in o for k, o in kinds)
    assert any(e["name"].startswith(image_id) for e in thread["elements"])
    # In the gallery, with its cost; in the lineage, as a generated image.
    detail = alice.get(f"/api/gallery/items/{image_id}").json()
    assert Decimal(detail["cost_usd"]) == Decimal(extra["images"][0]["cost_usd"])
    assert detail["backend"] == "openai" and detail["model"] == "gpt-image-2"
    assert detail["parameters"]["cost"]["source"] == "reported"
    lineage = alice.get(f"/api/gallery/items/{image_id}/lineage").json()
    assert image_id in [node["id"] for node in lineage["nodes"]]
    spent = app_rows(
        world.app,
        "SELECT status, actual_usd FROM ledger_entries WHERE image_id = '" + image_id + "'",
    )
    assert [row["status"] for row in spent] == ["settled"]

    # Bob: not in his gallery, history or files, with his cookie or his token.
    bob = world.as_user("bob")
    assert bob.get(f"/api/gallery/items/{image_id}").status_code == 404
    assert bob.get(f"/api/gallery/items/{image_id}/lineage").status_code == 404
    assert bob.get(f"/project/thread/{extra['conversation_id']}").status_code in (401, 403, 404)
    media_key = detail["media_url"].rsplit("/", 1)[1]
    assert bob.get(f"/media/{media_key}").status_code == 404
    bob_token, _ = world.token("bob", "bob-sdk")
    answer = httpx.get(
        f"{world.app.base_url}/media/{media_key}",
        headers={"Authorization": f"Bearer {bob_token}"},
        timeout=30,
    )
    assert answer.status_code in (401, 404)
    assert alice.get(f"/media/{media_key}").status_code == 200


def test_the_api_conversation_resumes_in_the_chat_and_its_image_edits(world: World) -> None:
    """The image is the conversation's own: opened in the chat, "/edit" edits it."""
    token, token_id = world.token("alice", "resume")
    result = world.client(token).images.generate(model="gpt-image-2", prompt="a blue boat")
    image_id = _atelier(result)["images"][0]["id"]

    async def resume_and_edit() -> dict:
        chat = ChatSession(world.app.base_url, world.cookies["alice"])
        await chat.connect(resume_thread=conversation_id(token_id))
        try:
            await chat.send("/edit make the boat red")
        finally:
            await chat.close()
        assert chat.resumed is not None
        return chat.resumed

    resumed = asyncio.run(resume_and_edit())
    assert resumed["name"] == "API · resume"
    assert any(e.get("name", "").startswith(image_id) for e in resumed["elements"])
    rows = app_rows(world.app, f"SELECT id FROM images WHERE parent_id = '{image_id}'")
    assert len(rows) == 1


def test_generate_url_is_a_signed_link(world: World) -> None:
    token, _ = world.token("alice", "url")
    result = world.client(token).images.generate(
        model="openai:gpt-image-2", prompt="a lighthouse", response_format="url", n=2
    )
    assert [d.b64_json for d in result.data] == [None, None]
    urls = [d.url for d in result.data]
    assert all(url.startswith(f"{world.app.base_url}/media/") for url in urls)
    fetched = httpx.get(urls[0], timeout=30)  # no login: the signature is the permission
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
    assert _png(fetched.content).size == (1024, 1024)
    forged = re.sub(r"sig=[0-9a-f]+", "sig=" + "0" * 32, urls[0])
    assert httpx.get(forged, timeout=30).status_code == 401


def test_stream_sends_partial_images_then_the_image(world: World) -> None:
    token, _ = world.token("alice", "stream")
    events = list(
        world.client(token).images.generate(
            model="gpt-image-2", prompt="a windmill", stream=True, partial_images=2
        )
    )
    kinds = [event.type for event in events]
    assert kinds[-1] == "image_generation.completed"
    partials = [e for e in events if e.type == "image_generation.partial_image"]
    assert 1 <= len(partials) <= 2
    assert [e.partial_image_index for e in partials] == list(range(len(partials)))
    assert _png(base64.b64decode(events[-1].b64_json)).size == (1024, 1024)


def test_a_stream_that_fails_midway_raises_and_spends_nothing(world: World) -> None:
    token, token_id = world.token("alice", "stream-fails")
    stream = world.client(token, max_retries=0).images.generate(
        model="gpt-image-2", prompt="a kite FAIL_STREAM", stream=True, partial_images=1
    )
    seen = []
    with pytest.raises(openai.APIError) as failed:
        for event in stream:
            seen.append(event.type)
    assert seen == ["image_generation.partial_image"]
    assert "OpenAI stopped while drawing" in failed.value.message
    thread = conversation_id(token_id)
    steps = app_rows(
        world.app, f"SELECT type, is_error, output FROM steps WHERE thread_id = '{thread}'"
    )
    assert [(row["type"], bool(row["is_error"])) for row in steps] == [
        ("user_message", False),
        ("assistant_message", True),
    ]
    held = app_rows(world.app, f"SELECT status FROM ledger_entries WHERE thread_id = '{thread}'")
    assert [row["status"] for row in held] == ["released"]


# ------------------------------------------------------------------------- edits


def test_edit_with_mask_derives_from_the_upload(world: World) -> None:
    token, _ = world.token("alice", "edits")
    source = Image.new("RGB", (1024, 1024), (200, 40, 40))
    mask = Image.new("RGBA", (1024, 1024), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (256, 256, 768, 768))  # transparent: repaint here
    files = {}
    for name, picture in (("source", source), ("mask", mask)):
        out = io.BytesIO()
        picture.save(out, "PNG")
        files[name] = (f"{name}.png", out.getvalue(), "image/png")
    result = world.client(token).images.edit(
        model="gpt-image-2",
        image=files["source"],
        mask=files["mask"],
        prompt="make the middle blue",
        size="1024x1024",
    )
    edited = _png(base64.b64decode(result.data[0].b64_json))
    assert edited.size == (1024, 1024)
    sent = world.fake.last_request("/images/edits").form
    assert sent["prompt"] == ["make the middle blue"] and len(sent["mask"]) == 1

    image_id = _atelier(result)["images"][0]["id"]
    alice = world.as_user("alice")
    detail = alice.get(f"/api/gallery/items/{image_id}").json()
    assert detail["parameters"]["lineage"]["operation"] == "edit"
    assert detail["parameters"]["lineage"]["mask"] is not None
    parent = alice.get(f"/api/gallery/items/{detail['parent_id']}").json()
    assert parent["backend"] == "upload" and (parent["width"], parent["height"]) == (1024, 1024)
    assert Decimal(detail["cost_usd"]) > 0
    assert world.as_user("bob").get(f"/api/gallery/items/{image_id}").status_code == 404


def test_streamed_edit_of_several_images(world: World) -> None:
    token, token_id = world.token("alice", "edit-stream")
    parts = []
    for shade in (40, 160):
        out = io.BytesIO()
        Image.new("RGB", (1024, 1536), (shade, shade, 90)).save(out, "PNG")
        parts.append((f"in{shade}.png", out.getvalue(), "image/png"))
    events = list(
        world.client(token).images.edit(
            model="gpt-image-2", image=parts, prompt="blend them", stream=True, partial_images=1
        )
    )
    assert [e.type for e in events] == ["image_edit.partial_image", "image_edit.completed"]
    assert _png(base64.b64decode(events[-1].b64_json)).size == (1024, 1536)  # the source's
    assert len(world.fake.last_request("/images/edits").form["image[]"]) == 2
    thread = conversation_id(token_id)
    made = app_rows(
        world.app,
        f"SELECT backend, parent_id FROM images WHERE thread_id = '{thread}' ORDER BY created_at",
    )
    assert [row["backend"] for row in made] == ["upload", "upload", "openai"]
    assert made[2]["parent_id"] is not None


def test_edit_refuses_a_mask_of_another_size(world: World) -> None:
    token, _ = world.token("alice", "bad-mask")
    out, small = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (1024, 1024)).save(out, "PNG")
    Image.new("RGBA", (512, 512)).save(small, "PNG")
    with pytest.raises(openai.BadRequestError) as refused:
        world.client(token).images.edit(
            image=("a.png", out.getvalue(), "image/png"),
            mask=("m.png", small.getvalue(), "image/png"),
            prompt="x",
        )
    assert refused.value.param == "mask"


# ------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("asked", "param"),
    [
        ({"size": "1000x1000"}, "size"),  # gpt-image-2 edges are multiples of 16
        ({"n": 11}, "n"),
        ({"quality": "ultra"}, "quality"),
        ({"response_format": "gif"}, "response_format"),
        ({"model": "gpt-image-1.5"}, "model"),  # shut down on 2026-12-01
        ({"model": "no-such-model"}, "model"),
    ],
)
def test_invalid_requests_name_the_param(world: World, asked: dict, param: str) -> None:
    token, _ = world.token("alice", "invalid")
    before = len(world.fake.requests_to("/images/generations"))
    request = {"model": "gpt-image-2", "prompt": "a cat", **asked}
    with pytest.raises((openai.BadRequestError, openai.NotFoundError)) as refused:
        world.client(token, max_retries=0).images.generate(**request)
    assert refused.value.param == param
    assert refused.value.body["message"]  # type: ignore[index]
    assert len(world.fake.requests_to("/images/generations")) == before


def test_revoked_token_is_refused_at_once(world: World) -> None:
    token, token_id = world.cli_token("alice", "to-revoke")
    client = world.client(token, max_retries=0)
    assert client.models.list().data
    revoked = atelier("tokens", "--data-dir", str(world.app.data_dir), "revoke", token_id)
    assert revoked.returncode == 0, revoked.stderr
    with pytest.raises(openai.AuthenticationError) as refused:
        client.images.generate(prompt="a cat")
    assert refused.value.status_code == 401 and refused.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        world.client("atl_" + "x" * 43, max_retries=0).models.list()


def test_over_budget_names_the_limit_and_spends_nothing(world: World) -> None:
    token, _ = world.token("carol", "budget")
    before = len(world.fake.requests_to("/images/generations"))
    with pytest.raises(openai.BadRequestError) as refused:
        world.client(token, max_retries=0).images.generate(
            model="gpt-image-2", prompt="a cat", quality="medium"
        )
    assert refused.value.code == "budget_exceeded"
    assert "budget for today" in refused.value.message and "limit $0.001" in refused.value.message
    with pytest.raises(openai.BadRequestError) as streamed:  # refused before any event
        list(
            world.client(token, max_retries=0).images.generate(
                model="gpt-image-2", prompt="a cat", stream=True, partial_images=2
            )
        )
    assert streamed.value.code == "budget_exceeded"
    assert len(world.fake.requests_to("/images/generations")) == before
    reserved = app_rows(
        world.app,
        f"SELECT status FROM ledger_entries WHERE user_id = '{world.ids['carol']}'",
    )
    assert all(row["status"] != "reserved" for row in reserved)


def test_what_the_chat_would_confirm_is_refused_naming_the_threshold(world: World) -> None:
    token, _ = world.token("alice", "threshold")
    before = len(world.fake.requests_to("/images/generations"))
    with pytest.raises(openai.BadRequestError) as refused:
        world.client(token, max_retries=0).images.generate(
            model="gpt-image-2", prompt="a cat", n=10, quality="high", size="2048x2048"
        )
    assert refused.value.code == "confirmation_required"
    assert "confirmation threshold of $1.00" in refused.value.message
    assert len(world.fake.requests_to("/images/generations")) == before


def test_rate_limit_answers_429_with_retry_after(world: World) -> None:
    token, _ = world.token("alice", "busy")
    client = world.client(token, max_retries=0)
    for _ in range(RATE_PER_MINUTE):
        client.models.list()
    with pytest.raises(openai.RateLimitError) as limited:
        client.models.list()
    assert limited.value.code == "rate_limit_exceeded"
    assert int(limited.value.response.headers["retry-after"]) >= 1
    other, _ = world.token("alice", "not-busy")  # the limit is the token's own
    assert world.client(other, max_retries=0).models.list().data


# ------------------------------------------------------------ the conversation store


async def test_one_conversation_per_token_owned_by_its_user(engine) -> None:  # noqa: F811
    """On SQLite and PostgreSQL: requests at the same moment share the token's
    conversation; another user can never write into it."""
    users = UserStore(session_factory(engine))
    alice = await users.add("alice", PASSWORDS["alice"])
    bob = await users.add("bob", PASSWORDS["bob"])
    threads = ApiThreads(engine)
    token_id = "6d1f3a52-1111-4c2b-9a0e-3f5b7c9d1e2f"
    opened = await asyncio.gather(*(threads.open(alice.id, token_id, "tool") for _ in range(8)))
    assert {where.thread_id for where in opened} == {conversation_id(token_id)}
    assert len({where.reply_step_id for where in opened}) == 8
    await threads.add_request(opened[0], "alice", "a fox")
    await threads.add_reply(opened[0], "Not made: over budget", is_error=True)
    with pytest.raises(NotFound):
        await threads.open(bob.id, token_id, "tool")
    async with session_factory(engine)() as session:
        thread = await session.get(Thread, conversation_id(token_id))
        steps = (await session.scalars(select(Step).where(Step.thread_id == thread.id))).all()
    assert (thread.user_id, thread.name) == (alice.id, "API · tool")
    assert sorted((s.type, s.output, s.is_error) for s in steps) == [
        ("assistant_message", "Not made: over budget", True),
        ("user_message", "a fox", False),
    ]
