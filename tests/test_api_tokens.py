"""API tokens, the bearer-token check, per-token limits and the API's error envelope.

The store runs on real SQLite and PostgreSQL; the limits on memory and on the Redis at
127.0.0.1:6379 (two limiters sharing it stand for two app processes); the routes, the
CLI and the `/tokens` chat command against the app running as a subprocess, with two
accounts attacking each other's tokens.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from pydantic import BaseModel
from sqlalchemy import text, update

from chat_app.api_errors import ApiError, ApiRoute
from chat_app.api_limits import ApiLimits
from chat_app.login_limits import storage_for
from chat_app.shared_slots import MemorySlots, RedisSlots
from core.errors import InvalidInput, NotFound, RateLimited
from memory.api_tokens import MAX_ACTIVE_PER_USER, ApiCaller, ApiTokenStore
from memory.db import session_factory
from memory.ledger import BudgetExceeded, ScopeUsage
from memory.models import ApiToken
from tests.app_process import AppProcess, add_user, app_rows, atelier
from tests.chat_client import ChatSession, login_cookie, outputs
from tests.db_fixtures import db_url, engine, users  # noqa: F401 - fixtures
from tests.waiting import wait_until_sync

REDIS_URL = "redis://127.0.0.1:6379/0"
API_SLOTS = "atelier-api"  # the namespace ApiLimits.from_settings gives its slots
RATE = 6  # the app's requests per minute per token, in this module
USERS = ("alice", "bob", "carol")


# ------------------------------------------------------------------ the store


@pytest.fixture
def store(engine: Any) -> ApiTokenStore:  # noqa: F811
    return ApiTokenStore(session_factory(engine))


async def test_a_token_is_shown_once_stored_as_a_hash_and_revoked_at_once(
    store: ApiTokenStore,
    engine: Any,  # noqa: F811
    users: Any,  # noqa: F811
) -> None:
    alice = await users.add("alice", "alice-password")
    record, token = await store.add(alice.id, "open-webui", expires_days=30)

    assert token.startswith("atl_") and len(token) == 47
    assert record.prefix == token[:12] and record.status == "active"
    assert record.expires_at is not None
    caller = await store.authenticate(token)
    assert caller == ApiCaller(alice.id, "alice", record.id, "open-webui")

    async with engine.connect() as conn:
        rows = (await conn.execute(text("SELECT * FROM api_tokens"))).mappings().all()
    assert len(rows) == 1
    assert rows[0]["token_hash"] == hashlib.sha256(token.encode()).hexdigest()
    assert all(token not in str(value) for value in rows[0].values())
    assert (await store.list(alice.id))[0].last_used_at is not None  # touched by the use

    revoked = await store.revoke(record.id, alice.id)
    assert revoked.status == "revoked"
    assert await store.authenticate(token) is None  # the very next request
    assert (await store.revoke(record.id, alice.id)).status == "revoked"  # idempotent

    for forged in ("", "atl_", token[:-1] + "A", "Bearer " + token, token + "x", "x" * 47):
        assert await store.authenticate(forged) is None


async def test_another_users_token_ids_answer_like_missing_ones(
    store: ApiTokenStore,
    users: Any,  # noqa: F811
) -> None:
    alice = await users.add("alice", "alice-password")
    bob = await users.add("bob", "bob-password")
    record, token = await store.add(alice.id, "laptop")
    await store.add(bob.id, "script")

    assert [r.name for r in await store.list(bob.id)] == ["script"]
    for attempt in (
        store.revoke(record.id, bob.id),
        store.get(record.id, bob.id),
        store.revoke(str(uuid.uuid4()), bob.id),
        store.revoke("not-an-id", bob.id),
    ):
        with pytest.raises(NotFound, match="No such API token"):
            await attempt
    assert await store.authenticate(token) is not None  # bob's attempts changed nothing

    operator = await store.revoke(record.id)  # `atelier tokens revoke`: any user's
    assert operator.status == "revoked" and await store.authenticate(token) is None


async def test_expired_tokens_and_removed_users_tokens_stop_working(
    store: ApiTokenStore,
    engine: Any,  # noqa: F811
    users: Any,  # noqa: F811
) -> None:
    alice = await users.add("alice", "alice-password")
    bob = await users.add("bob", "bob-password")
    expiring, expiring_token = await store.add(alice.id, "short", expires_days=1)
    _, bob_token = await store.add(bob.id, "bob's")
    async with engine.begin() as conn:
        await conn.execute(
            update(ApiToken)
            .where(ApiToken.id == expiring.id)
            .values(expires_at=datetime(2020, 1, 1, tzinfo=UTC))
        )
    assert await store.authenticate(expiring_token) is None
    assert (await store.list(alice.id))[0].status == "expired"

    assert await store.authenticate(bob_token) is not None
    await users.remove("bob")
    assert await store.authenticate(bob_token) is None
    async with engine.connect() as conn:
        left = await conn.scalar(
            text("SELECT count(*) FROM api_tokens WHERE user_id = :u"), {"u": bob.id}
        )
    assert left == 0  # gone with the user
    bob_again = await users.add("bob", "bob-password")  # same name, new account
    assert await store.list(bob_again.id) == []


async def test_names_expiry_and_the_number_of_active_tokens_are_checked(
    store: ApiTokenStore,
    users: Any,  # noqa: F811
) -> None:
    alice = await users.add("alice", "alice-password")
    bad = [("", None), ("x" * 65, None), ("bell\x07name", None), ("ok", 0), ("ok", 99999)]
    for name, days in bad:
        with pytest.raises(InvalidInput):
            await store.add(alice.id, name, days)
    with pytest.raises(NotFound):
        await store.add(str(uuid.uuid4()), "no such user")

    made = [await store.add(alice.id, f"t{i}") for i in range(MAX_ACTIVE_PER_USER)]
    with pytest.raises(InvalidInput, match="revoke one"):
        await store.add(alice.id, "one too many")
    await store.revoke(made[0][0].id, alice.id)
    await store.add(alice.id, "in its place")


# ------------------------------------------------------------------ limits


def _caller() -> ApiCaller:
    return ApiCaller("u", "alice", str(uuid.uuid4()), "t")


@pytest.fixture(params=["memory", "redis"])
async def limiters(request: pytest.FixtureRequest) -> AsyncIterator[list[ApiLimits]]:
    """Two limiters for the same tokens: one process's twice (memory), or two processes
    sharing Redis."""
    if request.param == "memory":
        one = ApiLimits(
            storage_for(None),
            MemorySlots(),
            per_minute=10,
            concurrent_jobs=3,
            max_request_bytes=1024,
        )
        yield [one, one]
        return
    from redis.asyncio import Redis

    clients = [Redis.from_url(REDIS_URL) for _ in range(2)]
    try:
        await clients[0].ping()
    except OSError as exc:
        pytest.fail(f"Redis is not reachable at {REDIS_URL}: {exc}")
    yield [
        ApiLimits(
            storage_for(REDIS_URL),
            RedisSlots(client, namespace=API_SLOTS),
            per_minute=10,
            concurrent_jobs=3,
            max_request_bytes=1024,
        )
        for client in clients
    ]
    for client in clients:
        await client.aclose()


async def _outcomes(calls: list[Any]) -> tuple[int, list[ApiError]]:
    results = await asyncio.gather(*calls, return_exceptions=True)
    refused = [r for r in results if isinstance(r, ApiError)]
    assert all(not isinstance(r, BaseException) or isinstance(r, ApiError) for r in results)
    return len(results) - len(refused), refused


async def test_parallel_requests_never_exceed_a_tokens_rate(limiters: list[ApiLimits]) -> None:
    caller, other = _caller(), _caller()
    admitted, refused = await _outcomes(
        [limiters[i % 2].admit(caller) for i in range(40)]  # both "processes" at once
    )
    assert admitted == 10 and len(refused) == 30
    for error in refused:
        assert (error.status, error.type, error.code) == (429, "requests", "rate_limit_exceeded")
        assert 1 <= int(error.headers["Retry-After"]) <= 60
        assert "10 requests per minute" in error.message
    await limiters[1].admit(other)  # another token has its own count


async def test_parallel_jobs_never_exceed_a_tokens_slots(limiters: list[ApiLimits]) -> None:
    caller = _caller()
    results = await asyncio.gather(
        *[limiters[i % 2].acquire_slot(caller) for i in range(20)], return_exceptions=True
    )
    slots = [r for r in results if isinstance(r, str)]
    refused = [r for r in results if isinstance(r, ApiError)]
    assert len(slots) == 3 and len(refused) == 17
    assert all(e.status == 429 and e.headers["Retry-After"] == "5" for e in refused)

    await limiters[0].release_slot(caller, slots[0])
    await limiters[0].release_slot(caller, slots[0])  # twice: still one slot freed
    async with limiters[1].job_slot(caller):
        with pytest.raises(ApiError) as full:
            await limiters[0].acquire_slot(caller)
        assert full.value.code == "rate_limit_exceeded"
    for slot in slots[1:]:
        await limiters[0].release_slot(caller, slot)
    freed = [await limiters[i % 2].acquire_slot(caller) for i in range(3)]
    assert len(set(freed)) == 3


async def test_a_dead_processes_slots_lapse_while_held_ones_are_renewed() -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(REDIS_URL)
    try:
        lease = 0.4
        live = ApiLimits(
            storage_for(REDIS_URL),
            RedisSlots(client, lease_s=lease, namespace=API_SLOTS),
            per_minute=10,
            concurrent_jobs=2,
            max_request_bytes=1024,
            lease_s=lease,
        )
        caller = _caller()
        held = await live.acquire_slot(caller)  # renewed by this "process"
        # A process that took a slot and died: nobody renews its lease.
        dead = RedisSlots(client, lease_s=lease, namespace=API_SLOTS)
        assert await dead.take(caller.token_id, 2) is not None
        with pytest.raises(ApiError):
            await live.acquire_slot(caller)
        deadline = time.monotonic() + 10
        taken = None
        while taken is None:
            assert time.monotonic() < deadline, "the dead process's slot never lapsed"
            try:
                taken = await live.acquire_slot(caller)
            except ApiError:
                await asyncio.sleep(0.05)
        # The held slot outlived several leases: its renewals kept it.
        with pytest.raises(ApiError):
            await live.acquire_slot(caller)
        await live.release_slot(caller, held)
        await live.release_slot(caller, taken)
    finally:
        await client.aclose()


# ------------------------------------------------------------------ the error envelope


class _Body(BaseModel):
    prompt: str
    n: int = 1


class _SmallBodies(ApiRoute):
    max_body_bytes = 200


def _envelope_app() -> FastAPI:
    router = APIRouter(prefix="/v1", route_class=_SmallBodies)

    @router.post("/things")
    async def things(body: _Body) -> dict[str, Any]:
        usage = ScopeUsage("user_day", Decimal("4"), Decimal("0"), Decimal("5"), "user", None)
        raising = {
            "invalid": InvalidInput("That size is not supported."),
            "missing": NotFound("No such image."),
            "budget": BudgetExceeded(usage, Decimal("2")),
            "busy": RateLimited("The provider is busy.", retry_after_s=2.2),
            "api": ApiError(409, "Conflict.", code="conflict", param="prompt"),
            "crash": RuntimeError("password=hunter2 leaked in a bug"),
        }
        if body.prompt in raising:
            raise raising[body.prompt]
        return {"ok": body.n}

    app = FastAPI()
    app.include_router(router)
    return app


async def test_the_api_answers_every_error_in_openais_envelope() -> None:
    transport = httpx.ASGITransport(app=_envelope_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:

        async def error(body: Any, **kwargs: Any) -> tuple[int, dict[str, Any], httpx.Headers]:
            response = await client.post("/v1/things", json=body, **kwargs)
            assert set(response.json()) == {"error"}, response.text
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}
            return response.status_code, error, response.headers

        assert (await client.post("/v1/things", json={"prompt": "fine"})).json() == {"ok": 1}
        status, body, _ = await error({"prompt": "invalid"})
        assert (status, body["message"], body["type"]) == (
            400,
            "That size is not supported.",
            "invalid_request_error",
        )
        assert (await error({"prompt": "missing"}))[:2] == (
            404,
            {
                "message": "No such image.",
                "type": "invalid_request_error",
                "param": None,
                "code": "not_found",
            },
        )
        status, body, _ = await error({"prompt": "budget"})
        assert (status, body["code"]) == (400, "budget_exceeded") and "limit $5" in body["message"]
        status, body, headers = await error({"prompt": "busy"})
        assert (status, body["code"], headers["retry-after"]) == (429, "rate_limit_exceeded", "3")
        status, body, _ = await error({"prompt": "api"})
        assert (status, body["code"], body["param"]) == (409, "conflict", "prompt")
        status, body, _ = await error({"prompt": "crash"})
        assert (status, body["type"]) == (500, "server_error") and "hunter2" not in str(body)

        status, body, _ = await error({"n": 2})
        assert (status, body["param"]) == (400, "prompt")
        assert body["message"] == "Missing required parameter: 'prompt'."
        status, body, _ = await error({"prompt": "x", "n": "many"})
        assert (status, body["param"]) == (400, "n")
        response = await client.post(
            "/v1/things", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert response.status_code == 400 and response.json()["error"]["code"] is None

        big = {"prompt": "x" * 300}
        status, body, _ = await error(big)  # Content-Length says it is too big
        assert (status, body["code"]) == (413, "request_too_large")

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
            yield b'{"prompt": "'
            for _ in range(50):
                yield b"xxxxxxxxxx"
            yield b'"}'

        response = await client.post(
            "/v1/things", content=chunks(), headers={"content-type": "application/json"}
        )
        assert (
            response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
        )


# ------------------------------------------------------------------ the app


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppProcess]:
    data = tmp_path_factory.mktemp("api-tokens") / "data"
    running = AppProcess(data, {"ATELIER_API_RATE_PER_MINUTE": str(RATE)}).start()
    with ThreadPoolExecutor() as pool:  # each `atelier users add` takes seconds
        list(pool.map(lambda name: add_user(running, name, f"{name}-password"), USERS))
    yield running
    running.stop()


def _cli(app: AppProcess, *args: str) -> Any:
    return atelier("tokens", "--data-dir", str(app.data_dir), *args)


def _me(app: AppProcess, token: str) -> httpx.Response:
    return httpx.get(
        app.base_url + "/api/v1/me", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


def _new_token(app: AppProcess, user: str, name: str) -> str:
    """A token made in the app, as the user would (quicker than the CLI's process)."""
    made = httpx.post(
        app.base_url + "/api/tokens",
        json={"name": name},
        headers={"Cookie": login_cookie(app.base_url, user, f"{user}-password")},
        timeout=30,
    )
    assert made.status_code == 201, made.text
    return made.json()["token"]


def _code(response: httpx.Response) -> str | None:
    return response.json()["error"]["code"]


def test_cli_tokens_work_until_revoked_and_die_with_their_user(app: AppProcess) -> None:
    made = _cli(app, "add", "alice", "--name", "cli test", "--expires", "7")
    assert made.returncode == 0, made.stderr
    token = made.stdout.splitlines()[0]
    token_id = made.stdout.split("Made API token ")[1].split()[0]
    me = _me(app, token)
    assert me.status_code == 200, me.text
    assert me.json()["user"] == "alice" and me.json()["token"] == {
        "id": token_id,
        "name": "cli test",
    }
    assert me.headers["cache-control"] == "no-store"

    listed = _cli(app, "list", "alice")
    assert token_id in listed.stdout and token[:12] in listed.stdout
    assert token not in listed.stdout and "active" in listed.stdout

    assert _cli(app, "revoke", token_id).returncode == 0
    refused = _me(app, token)  # the next request: no cache in the app
    assert refused.status_code == 401 and _code(refused) == "invalid_api_key"

    carol = _new_token(app, "carol", "soon gone")
    assert _me(app, carol).status_code == 200
    removed = atelier("users", "--data-dir", str(app.data_dir), "remove", "carol")
    assert removed.returncode == 0, removed.stderr
    assert _code(_me(app, carol)) == "invalid_api_key"

    missing = httpx.get(app.base_url + "/api/v1/me", timeout=30)
    assert (
        missing.status_code == 401 and "Authorization: Bearer" in missing.json()["error"]["message"]
    )
    assert token not in app.log()  # never logged


def test_users_manage_only_their_own_tokens_in_the_app(app: AppProcess) -> None:
    alice = {"Cookie": login_cookie(app.base_url, "alice", "alice-password")}
    bob = {"Cookie": login_cookie(app.base_url, "bob", "bob-password")}
    url = app.base_url + "/api/tokens"

    made = httpx.post(url, json={"name": "open webui", "expires_days": 30}, headers=alice)
    assert made.status_code == 201, made.text
    assert made.headers["cache-control"] == "no-store"
    token, token_id = made.json()["token"], made.json()["id"]
    assert _me(app, token).json()["token"]["name"] == "open webui"

    listed = httpx.get(url, headers=alice).json()["data"]
    assert token_id in [t["id"] for t in listed]
    assert token not in str(listed) and "hash" not in str(listed)
    assert token_id not in str(httpx.get(url, headers=bob).json())

    # Bob cannot revoke it: answered as if it did not exist, and it keeps working.
    other = httpx.delete(f"{url}/{token_id}", headers={**bob, "X-Atelier": "1"})
    missing = httpx.delete(f"{url}/{uuid.uuid4()}", headers={**bob, "X-Atelier": "1"})
    assert other.status_code == missing.status_code == 404
    assert other.json() == missing.json()
    assert _me(app, token).status_code == 200

    # No proof of intent (a form a foreign page could post), no login, an API token
    # instead of a login: refused, and nothing is made or revoked.
    assert httpx.post(url, data={"name": "csrf"}, headers=alice).status_code == 403
    assert httpx.delete(f"{url}/{token_id}", headers=alice).status_code == 403
    assert httpx.post(url, json={"name": "x"}).status_code == 401
    as_token = {"Authorization": f"Bearer {token}"}
    assert httpx.post(url, json={"name": "successor"}, headers=as_token).status_code == 401
    assert httpx.get(url, headers=as_token).status_code == 401
    assert httpx.post(url, json={"name": ""}, headers=alice).status_code == 400
    assert (
        httpx.post(url, json={"name": "x", "expires_days": "9"}, headers=alice).status_code == 400
    )
    assert "successor" not in str(httpx.get(url, headers=alice).json())

    revoked = httpx.delete(f"{url}/{token_id}", headers={**alice, "X-Atelier": "1"})
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    assert _me(app, token).status_code == 401


async def test_parallel_requests_through_the_app_stay_within_the_rate(app: AppProcess) -> None:
    first, second = _new_token(app, "bob", "burst"), _new_token(app, "bob", "calm")
    async with httpx.AsyncClient(base_url=app.base_url, timeout=30) as client:
        responses = await asyncio.gather(
            *[
                client.get("/api/v1/me", headers={"Authorization": f"Bearer {first}"})
                for _ in range(RATE * 4)
            ]
        )
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [200] * RATE + [429] * (RATE * 3)
        for response in responses:
            if response.status_code == 429:
                assert _code(response) == "rate_limit_exceeded"
                assert response.json()["error"]["type"] == "requests"
                assert 1 <= int(response.headers["retry-after"]) <= 60
        other = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {second}"})
        assert other.status_code == 200  # limits are per token


def _database_bytes(app: AppProcess) -> bytes:
    """The SQLite database as stored: the main file and its write-ahead log."""
    found = b""
    for path in (app.data_dir / "atelier.db", app.data_dir / "atelier.db-wal"):
        if Path(path).exists():
            found += Path(path).read_bytes()
    return found


async def test_the_tokens_command_shows_a_token_once_and_never_saves_it(app: AppProcess) -> None:
    chat = ChatSession(app.base_url, login_cookie(app.base_url, "alice", "alice-password"))
    await chat.connect()
    bob_chat = ChatSession(app.base_url, login_cookie(app.base_url, "bob", "bob-password"))
    await bob_chat.connect()
    try:
        shown = "\n".join(outputs(await chat.send("/tokens new chat laptop 7")))
        token = next(word for word in shown.split() if word.startswith("atl_"))
        assert _me(app, token).json()["token"]["name"] == "chat laptop"
        short_id = shown.split("`/tokens revoke ")[1][:8]

        # The saved notice is in the database; the token is in no table, file or log.
        wait_until_sync(
            lambda: app_rows(app, "SELECT id FROM steps WHERE output LIKE '%Made API token%'"),
            20,
            "the notice about the new token to be saved",
        )
        assert token.encode() not in _database_bytes(app)
        assert token not in app.log()

        listing = "\n".join(outputs(await chat.send("/tokens")))
        assert short_id in listing and token[:12] in listing and token not in listing

        # Bob names Alice's token: it does not exist for him, and it keeps working.
        refused = "\n".join(outputs(await bob_chat.send(f"/tokens revoke {short_id}")))
        assert "No such API token" in refused
        assert _me(app, token).status_code == 200

        revoked = "\n".join(outputs(await chat.send(f"/tokens revoke {short_id}")))
        assert "Revoked API token" in revoked
        assert _code(_me(app, token)) == "invalid_api_key"
    finally:
        await chat.close()
        await bob_chat.close()
