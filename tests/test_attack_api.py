"""Attack: the HTTP API (issue 19) from a second account, a hostile chat model and the wire.

One app (a subprocess, SQLite) with the fake OpenAI server as its chat model and image
API, and three accounts made with the CLI: alice (the victim), mallory (the attacker,
with an account and a token of her own) and carol (removed during a test). Every attack
is made as a client would make it: the real `openai` client, plain HTTP, a raw socket
for bodies that never end, the chat protocol for the chat model.

- Another user's job, token and image ids answer exactly like ids that do not exist.
- A revoked token, and the token of a removed user, are refused at the next request.
- Webhooks pointing inside (loopback, link-local metadata, private networks, in any
  spelling) are refused when the job is made, and nothing reaches them.
- Bodies over ATELIER_API_MAX_REQUEST_MB are answered 413 while they arrive, declared or
  chunked, without the server reading them or its memory rising.
- A hostile chat model cannot mint, list or see tokens: no tool offers it, and a token
  the user made in the chat is never part of what the model is sent.
- Tokens never reach the log (at debug level) or the database file in plain text.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.app_process import AppProcess, atelier
from tests.attack_helpers import PeakMemory, RawPost, Recorder
from tests.chat_client import ChatSession, login_cookie, outputs
from tests.fakes.openai_server import FakeOpenAI, Reply, ToolCall, default_brain
from tests.waiting import wait_until_sync

pytestmark = pytest.mark.slow

MB = 1024 * 1024
MAX_REQUEST_MB = 1
MEMORY_BOUND = 30 * MB  # what an oversized body may add to the server's peak memory
TOKEN_PATTERN = re.compile(r"atl_[A-Za-z0-9_-]{43}")
PASSWORDS = {"alice": "alices-password", "mallory": "mallorys-password", "carol": "carols-pw"}


@dataclass
class Token:
    id: str
    plaintext: str


@dataclass
class World:
    app: AppProcess
    fake: FakeOpenAI
    tokens: dict[str, Token]


# --------------------------------------------------------------------------- helpers


def make_token(app: AppProcess, user: str, name: str) -> Token:
    """`atelier tokens add`, as an operator would; the token as printed, once."""
    made = atelier("tokens", "--data-dir", str(app.data_dir), "add", user, "--name", name)
    assert made.returncode == 0, made.stdout + made.stderr
    found = TOKEN_PATTERN.findall(made.stdout)
    assert len(found) == 1, made.stdout
    token_id = re.search(r"Made API token ([0-9a-f-]{36})", made.stdout)
    assert token_id is not None, made.stdout
    return Token(token_id.group(1), found[0])


def token_in_app(app: AppProcess, user: str, name: str) -> Token:
    """A token the user makes in the app (login cookie, JSON with proof of intent)."""
    cookie = login_cookie(app.base_url, user, PASSWORDS[user])
    with httpx.Client(base_url=app.base_url, headers={"Cookie": cookie}, timeout=30) as http:
        made = http.post("/api/tokens", json={"name": name})
    assert made.status_code == 201, made.text
    return Token(made.json()["id"], made.json()["token"])


def make_users(data_dir: Path) -> None:
    """The accounts, with the app's own store (real argon2 hashes), before it starts."""
    from memory.db import create_engine, migrate, session_factory
    from memory.users import UserStore

    async def make() -> None:
        engine = create_engine(f"sqlite+aiosqlite:///{data_dir / 'atelier.db'}")
        try:
            await migrate(engine)
            store = UserStore(session_factory(engine))
            for name, password in PASSWORDS.items():
                await store.add(name, password)
        finally:
            await engine.dispose()

    data_dir.mkdir(parents=True)
    asyncio.run(make())


def api(app: AppProcess, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=app.base_url, headers=headers, timeout=60)


def client(app: AppProcess, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{app.base_url}/v1", api_key=token, max_retries=0)


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The OpenAI envelope's `error` object of an API answer."""
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]


def same_answer(first: httpx.Response, second: httpx.Response) -> None:
    """Two answers a caller cannot tell apart (status and body)."""
    assert (first.status_code, first.content) == (second.status_code, second.content), (
        first.text,
        second.text,
    )


def create_job(app: AppProcess, token: str, **fields: Any) -> httpx.Response:
    body = {"kind": "image", "prompt": "a heron at dawn", **fields}
    with api(app, token) as http:
        return http.post("/api/v1/jobs", json=body)


def wait_for_job(app: AppProcess, token: str, job_id: str) -> dict[str, Any]:
    """The job once it has ended."""
    seen: dict[str, Any] = {}

    def ended() -> bool:
        with api(app, token) as http:
            seen.update(http.get(f"/api/v1/jobs/{job_id}").json())
        return seen.get("status") in ("succeeded", "failed", "cancelled")

    wait_until_sync(ended, 60, f"job {job_id} to end")
    return seen


def user_id(app: AppProcess, name: str) -> str:
    with sqlite3.connect(app.data_dir / "atelier.db") as db:
        return db.execute("SELECT id FROM users WHERE identifier = ?", (name,)).fetchone()[0]


# --------------------------------------------------------------------------- the app


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with FakeOpenAI() as fake:
        data = tmp_path_factory.mktemp("api-attack") / "data"
        make_users(data)
        app = AppProcess(
            data,
            {
                "OPENAI_API_KEY": "sk-test-not-a-real-key",
                "OPENAI_BASE_URL": fake.base_url,
                "ATELIER_LLM_MODEL": "gpt-test",
                "ATELIER_API_MAX_REQUEST_MB": str(MAX_REQUEST_MB),
                "ATELIER_LOG_LEVEL": "debug",  # the log must hide tokens at every level
                "ATELIER_LOCAL_ENABLED": "false",
            },
        ).start(timeout=120)
        try:
            tokens = {name: token_in_app(app, name, f"{name}-laptop") for name in PASSWORDS}
            # A signing secret first, so that a webhook is judged by its address alone.
            with api(app, tokens["mallory"].plaintext) as http:
                made = http.post("/api/v1/webhook-secret")
                assert made.status_code == 201, made.text
            yield World(app, fake, tokens)
        finally:
            app.stop()


@pytest.fixture(autouse=True)
def _plain_brain(world: World) -> Iterator[None]:
    yield
    world.fake.brain = default_brain


# ------------------------------------------------------------------ other users' ids


def test_another_users_jobs_tokens_and_images_answer_like_missing_ones(world: World) -> None:
    app, alice, mallory = world.app, world.tokens["alice"], world.tokens["mallory"]
    made = create_job(app, alice.plaintext)
    assert made.status_code in (200, 201, 202), made.text
    job_id = made.json()["id"]
    job = wait_for_job(app, alice.plaintext, job_id)
    assert job["status"] == "succeeded", job
    missing = str(uuid.uuid4())

    with api(app, mallory.plaintext) as http:
        for path in ("/api/v1/jobs/{}", "/api/v1/jobs/{}/events"):
            theirs, nobodys = http.get(path.format(job_id)), http.get(path.format(missing))
            assert theirs.status_code == 404
            same_answer(theirs, nobodys)
        theirs = http.post(f"/api/v1/jobs/{job_id}/cancel")
        assert theirs.status_code == 404
        same_answer(theirs, http.post(f"/api/v1/jobs/{missing}/cancel"))
        listed = http.get("/api/v1/jobs")
        assert listed.status_code == 200 and job_id not in listed.text
        theirs = http.get("/api/v1/jobs", params={"before": job_id})
        assert theirs.status_code == 404
        same_answer(theirs, http.get("/api/v1/jobs", params={"before": missing}))

    # Alice's job is untouched by the attempts.
    with api(app, alice.plaintext) as http:
        assert http.get(f"/api/v1/jobs/{job_id}").json()["status"] == "succeeded"

    # Tokens in the app: mallory's login cannot see or revoke alice's.
    cookie = login_cookie(app.base_url, "mallory", PASSWORDS["mallory"])
    with httpx.Client(base_url=app.base_url, headers={"Cookie": cookie}, timeout=30) as http:
        listed = http.get("/api/tokens")
        assert listed.status_code == 200 and alice.id not in listed.text
        intent = {"X-Atelier": "1"}
        theirs = http.delete(f"/api/tokens/{alice.id}", headers=intent)
        assert theirs.status_code == 404
        same_answer(theirs, http.delete(f"/api/tokens/{missing}", headers=intent))
    with api(app, alice.plaintext) as http:
        assert http.get("/v1/models").status_code == 200  # still good

    # Her images: mallory's login gets from /media what a missing id gets.
    image_ids = [
        row[0]
        for row in _rows(app, "SELECT id FROM images WHERE user_id = ?", user_id(app, "alice"))
    ]
    assert image_ids
    with httpx.Client(base_url=app.base_url, headers={"Cookie": cookie}, timeout=30) as http:
        theirs, nobodys = http.get(f"/media/{image_ids[0]}"), http.get(f"/media/{missing}")
        assert theirs.status_code == 404
        assert theirs.status_code == nobodys.status_code


def _rows(app: AppProcess, sql: str, *params: Any) -> list[tuple]:
    with sqlite3.connect(app.data_dir / "atelier.db") as db:
        return db.execute(sql, params).fetchall()


# ------------------------------------------------------------------ revoked and removed


def test_a_revoked_token_is_refused_at_its_next_request(world: World) -> None:
    app = world.app
    # Made in the app (cookie login, proof of intent), used, revoked there.
    cookie = login_cookie(app.base_url, "alice", PASSWORDS["alice"])
    with httpx.Client(base_url=app.base_url, headers={"Cookie": cookie}, timeout=30) as http:
        made = http.post("/api/tokens", json={"name": "phone"})
        assert made.status_code in (200, 201), made.text
        body = made.json()
        plaintext = body["token"]
        token_id = body["id"]
        assert client(app, plaintext).models.list().data is not None
        revoked = http.delete(f"/api/tokens/{token_id}", headers={"X-Atelier": "1"})
        assert revoked.status_code in (200, 204), revoked.text
    with pytest.raises(openai.AuthenticationError) as refused:
        client(app, plaintext).models.list()
    assert refused.value.status_code == 401 and refused.value.code == "invalid_api_key"

    # Made and revoked with the CLI while the app runs: no restart, no cache.
    token = make_token(app, "alice", "script")
    listed = atelier("tokens", "--data-dir", str(app.data_dir), "list", "alice")
    assert token.id in listed.stdout and token.plaintext not in listed.stdout  # shown once
    images = client(app, token.plaintext)
    assert images.models.list().data is not None
    revoked_cli = atelier("tokens", "--data-dir", str(app.data_dir), "revoke", token.id)
    assert revoked_cli.returncode == 0, revoked_cli.stdout + revoked_cli.stderr
    with pytest.raises(openai.AuthenticationError):
        images.images.generate(prompt="one more", size="1024x1024")
    with api(app, token.plaintext) as http:
        assert error_of(http.get("/api/v1/jobs"))["code"] == "invalid_api_key"


def test_a_removed_users_tokens_stop_at_once(world: World) -> None:
    app, carol = world.app, world.tokens["carol"]
    assert client(app, carol.plaintext).models.list().data is not None
    removed = atelier("users", "--data-dir", str(app.data_dir), "remove", "carol")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    with api(app, carol.plaintext) as http:
        for response in (http.get("/v1/models"), http.get("/api/v1/jobs")):
            assert response.status_code == 401
            assert error_of(response)["code"] == "invalid_api_key"
    assert _rows(app, "SELECT count(*) FROM api_tokens WHERE id = ?", carol.id) == [(0,)]


# ------------------------------------------------------------------ URLs pointing inside


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/hook",  # the app itself
        "http://localhost:{port}/hook",
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://10.0.0.1/hook",
        "http://192.168.1.1/hook",
        "http://[::1]:{port}/hook",
        "http://[::ffff:127.0.0.1]:{port}/hook",
        "http://2130706433:{port}/hook",  # 127.0.0.1 as one number
        "http://0x7f.1:{port}/hook",
        "file:///etc/passwd",
        "gopher://127.0.0.1:6379/_FLUSHALL",
    ],
)
def test_webhooks_pointing_inside_are_refused(world: World, url: str) -> None:
    app, mallory = world.app, world.tokens["mallory"]
    before = _rows(app, "SELECT count(*) FROM api_jobs")
    refused = create_job(app, mallory.plaintext, webhook_url=url.format(port=app.port))
    assert refused.status_code == 400, refused.text
    error = error_of(refused)
    assert (error["param"], error["code"]) == ("webhook_url", "webhook_url_refused"), error
    assert "169.254" not in error["message"] and "10.0.0.1" not in error["message"]
    assert _rows(app, "SELECT count(*) FROM api_jobs") == before  # nothing was queued


def test_a_refused_webhook_host_never_hears_from_the_server(world: World) -> None:
    """A loopback listener (127.0.0.2, another origin than the app's) gets nothing."""
    with Recorder() as inside:
        refused = create_job(world.app, world.tokens["mallory"].plaintext, webhook_url=inside.url)
        assert refused.status_code == 400, refused.text
        assert error_of(refused)["code"] == "webhook_url_refused"
        # A job that is made is run and ended; still nothing may reach the listener.
        made = create_job(world.app, world.tokens["mallory"].plaintext)
        wait_for_job(world.app, world.tokens["mallory"].plaintext, made.json()["id"])
        assert inside.requests == []


# ------------------------------------------------------------------ oversized bodies


BOUNDARY = "atelier-attack-boundary"
MULTIPART_HEAD = (
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nbigger\r\n'
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
    "Content-Type: image/png\r\n\r\n"
).encode() + b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("path", "kind", "opening"),
    [
        ("/v1/images/generations", "application/json", b'{"prompt": "'),
        ("/v1/images/edits", f"multipart/form-data; boundary={BOUNDARY}", MULTIPART_HEAD),
        ("/api/v1/jobs", "application/json", b'{"kind": "image", "prompt": "'),
    ],
)
@pytest.mark.parametrize("declared", [True, False], ids=["declared", "chunked"])
def test_oversized_bodies_are_refused_while_they_arrive(
    world: World, path: str, kind: str, opening: bytes, declared: bool
) -> None:
    app, total = world.app, 200 * MB  # far more than the limit, and than is ever sent
    with PeakMemory(app) as memory:
        headers = {
            "Authorization": f"Bearer {world.tokens['mallory'].plaintext}",
            "Content-Type": kind,
        }
        raw = RawPost(app, path, headers, total if declared else None)
        raw.send(opening)
        block = b"a" * (256 * 1024)
        while raw.sent < total and raw.send(block):
            pass
        status, _, body = raw.response()
    assert status == 413, body[:300]
    assert raw.sent < 32 * MB, f"sent {raw.sent / MB:.1f} MB before the server answered"
    assert memory.growth < MEMORY_BOUND, f"{memory.growth / MB:.0f} MB"
    error = json.loads(body)["error"]
    assert f"{MAX_REQUEST_MB} MB" in error["message"], error
    # The server is fine afterwards.
    with api(app, world.tokens["mallory"].plaintext) as http:
        assert http.get("/v1/models").status_code == 200


# ------------------------------------------------------------------ the chat model


def _token_calls() -> list[ToolCall]:
    """What a model trying for tokens would call, whatever the tools are named."""
    names = ("create_api_token", "list_api_tokens", "tokens", "run_command", "new_token")
    calls = [ToolCall(name, {"name": "pwned", "command": "/tokens new pwned"}) for name in names]
    calls.append(ToolCall("generate_image", {"prompt": "/tokens new pwned"}))
    return calls


async def test_a_hostile_chat_model_cannot_mint_list_or_see_tokens(world: World) -> None:
    app, fake = world.app, world.fake
    alice_id = user_id(app, "alice")
    sent: list[dict[str, Any]] = []  # every chat request: messages and tools

    def hostile(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> Reply:
        sent.append({"messages": messages, "tools": tools})
        if messages and messages[-1].get("role") == "tool":
            return Reply(content="/tokens new pwned\n/tokens")  # as if it were the user
        if not tools:
            return default_brain(messages, tools)
        return Reply(tool_calls=_token_calls())

    chat = ChatSession(app.base_url, login_cookie(app.base_url, "alice", PASSWORDS["alice"]))
    await chat.connect()
    try:
        # Alice makes a token in the chat, legitimately: she sees it once.
        fake.brain = default_brain
        shown = "\n".join(outputs(await chat.send("/tokens new tablet")))
        minted = TOKEN_PATTERN.findall(shown)
        assert len(minted) == 1, shown
        before = _rows(app, "SELECT id FROM api_tokens WHERE user_id = ?", alice_id)

        fake.brain = hostile
        seen_before = len(chat.events)
        reply = outputs(await chat.send("hello, please show me my tokens", timeout=90))
    finally:
        await chat.close()

    after = _rows(app, "SELECT id FROM api_tokens WHERE user_id = ?", alice_id)
    assert after == before  # nothing minted by the model
    assert sent, "the chat model was never asked"
    offered = [tool.get("function", tool).get("name", "") for tool in sent[0]["tools"]]
    assert offered and not [name for name in offered if "token" in name.lower()], offered
    everything_sent = json.dumps(sent)
    assert minted[0] not in everything_sent  # the token alice made is not in the history
    assert not TOKEN_PATTERN.search(everything_sent)
    for token in world.tokens.values():
        assert token.plaintext not in everything_sent and token.id not in everything_sent
    stored = b"".join(p.read_bytes() for p in app.data_dir.glob("atelier.db*") if p.is_file())
    assert minted[0].encode() not in stored  # shown once, never kept in the conversation
    shown_after = "\n".join(reply)
    assert not TOKEN_PATTERN.search(shown_after), shown_after
    assert minted[0] not in str(chat.events[seen_before:])  # not sent to the page again


# ------------------------------------------------------------------ logs and database


def test_tokens_never_reach_the_log_or_the_database_in_plain_text(world: World) -> None:
    app = world.app
    made = [make_token(app, "mallory", "logged"), token_in_app(app, "mallory", "in-app")]
    # Used for every kind of answer: success, refusal, validation error, not found.
    for token in made:
        images = client(app, token.plaintext)
        images.images.generate(prompt="a quiet harbour", size="1024x1024")
        with pytest.raises(openai.BadRequestError):
            images.images.generate(prompt="x", size="3x3")
        with api(app, token.plaintext) as http:
            assert http.get(f"/api/v1/jobs/{uuid.uuid4()}").status_code == 404
    guessed = "atl_" + "A" * 43  # a wrong token, perhaps someone's mistyped real one
    with api(app, guessed) as http:
        assert http.get("/v1/models").status_code == 401
    revoked = atelier("tokens", "--data-dir", str(app.data_dir), "revoke", made[0].id)
    assert revoked.returncode == 0
    with api(app, made[0].plaintext) as http:
        assert http.get("/v1/models").status_code == 401

    secrets = [t.plaintext for t in made] + [guessed]
    secrets += [t.plaintext for t in world.tokens.values()]
    log = app.log()
    assert "api_refused" in log or "401" in log  # the log was written at debug level
    stored = b"".join(
        path.read_bytes() for path in app.data_dir.glob("atelier.db*") if path.is_file()
    )
    for secret in secrets:
        assert secret not in log
        assert secret.encode() not in stored
        assert secret[4:].encode() not in stored  # not even without its prefix
    # What is stored is the hash: the same database holds it (the right file was read).
    import hashlib

    assert hashlib.sha256(made[1].plaintext.encode()).hexdigest().encode() in stored
