"""Attack: guess passwords, and stall everyone while doing it (issue 12, finding 3).

The app runs as a subprocess with small limits (10 failures per account, 15 per
address). Requests come from different loopback source addresses (127.0.0.x), so each
test is its own "client address" for the per-address limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from chat_app.login_limits import LoginLimiter, storage_for
from chat_app.settings import load_settings
from core.errors import ConfigError
from tests.app_process import ADMIN_PASSWORD, AppProcess
from tests.browser_support import CHROMIUM, CHROMIUM_MISSING, chromium, localhost_only
from tests.chat_client import ChatSession, login_cookie

ROOT = Path(__file__).resolve().parent.parent
PER_ACCOUNT = 10
PER_ADDRESS = 15
WRONG = "not-the-password-123"
REDIS_URL = os.environ.get("ATELIER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppProcess]:
    process = AppProcess(
        tmp_path_factory.mktemp("logins") / "data",
        {
            "ATELIER_LOGIN_MAX_FAILURES": str(PER_ACCOUNT),
            "ATELIER_LOGIN_MAX_FAILURES_PER_ADDRESS": str(PER_ADDRESS),
            "ATELIER_LOGIN_WINDOW_SECONDS": "900",
        },
    ).start()
    for name in ("carol", "dave", "erin", "gina"):
        clean = {k: v for k, v in os.environ.items() if not k.startswith("ATELIER_")}
        subprocess.run(
            [sys.executable, "-m", "chat_app.cli", "users", "--data-dir", str(process.data_dir)]
            + ["add", name, "--password-stdin"],
            input=f"{name}-password\n",
            text=True,
            check=True,
            capture_output=True,
            env=clean,
            cwd=ROOT,
        )
    yield process
    process.stop()
    if "Traceback" in process.log():
        print(process.log())


def client_from(address: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=60)


def log_events(app: AppProcess, name: str) -> list[dict]:
    events = []
    for line in app.log().splitlines():
        if line.startswith("{"):
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == name:
                events.append(event)
    return events


def test_guessing_locks_the_account_even_for_the_right_password(app: AppProcess) -> None:
    attempt = {"username": "dave", "password": WRONG}
    with client_from("127.0.0.2") as client:
        answers = [client.post(f"{app.base_url}/login", data=attempt) for _ in range(200)]
        right = client.post(
            f"{app.base_url}/login", data={"username": "dave", "password": "dave-password"}
        )
    assert [a.status_code for a in answers[:PER_ACCOUNT]] == [401] * PER_ACCOUNT
    assert {a.status_code for a in answers[PER_ACCOUNT:]} == {429}
    locked = answers[-1]
    assert 1 <= int(locked.headers["Retry-After"]) <= 900
    assert "Too many failed logins for this account" in locked.json()["detail"]
    assert "Try again in 15 minutes" in locked.json()["detail"]
    # Locked means locked: the right password waits for the window too.
    assert right.status_code == 429
    assert "access_token" not in right.cookies

    # Other accounts, even from the same address, are unaffected.
    with client_from("127.0.0.2") as client:
        other = client.post(
            f"{app.base_url}/login", data={"username": "carol", "password": "carol-password"}
        )
    assert other.status_code == 200

    locks = [e for e in log_events(app, "login_locked") if e.get("user") == "dave"]
    assert len(locks) == 1
    assert locks[0]["scope"] == "account" and locks[0]["address"] == "127.0.0.2"
    assert WRONG not in app.log() and "dave-password" not in app.log()


def test_guessing_across_accounts_locks_the_address(app: AppProcess) -> None:
    with client_from("127.0.0.4") as client:
        for index in range(PER_ADDRESS):
            miss = client.post(
                f"{app.base_url}/login", data={"username": f"ghost-{index}", "password": WRONG}
            )
            assert miss.status_code == 401
        refused = client.post(
            f"{app.base_url}/login", data={"username": "erin", "password": "erin-password"}
        )
    assert refused.status_code == 429
    assert "your network address" in refused.json()["detail"]
    assert int(refused.headers["Retry-After"]) >= 1
    assert any(e.get("scope") == "address" for e in log_events(app, "login_locked"))
    # Another address is not locked out with it.
    assert login_cookie(app.base_url, "erin", "erin-password")


async def test_a_burst_of_guesses_does_not_stop_other_users(app: AppProcess) -> None:
    """While 24 wrong logins for admin arrive at once, carol logs in and gets /help."""

    async def guess(client: httpx.AsyncClient) -> int:
        answer = await client.post(
            f"{app.base_url}/login", data={"username": "admin", "password": WRONG}
        )
        return answer.status_code

    async def carol_works() -> list[str]:
        cookie = await asyncio.to_thread(login_cookie, app.base_url, "carol", "carol-password")
        chat = ChatSession(app.base_url, cookie)
        await chat.connect()
        replies = await chat.send("/help")
        await chat.close()
        return [m.get("output") or "" for m in replies]

    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.3")
    async with httpx.AsyncClient(transport=transport, timeout=120) as client:
        results = await asyncio.gather(carol_works(), *(guess(client) for _ in range(24)))
    help_text, statuses = results[0], results[1:]
    assert "/image" in " ".join(help_text)
    assert set(statuses) <= {401, 429}
    assert statuses.count(401) <= PER_ACCOUNT  # never more checked than the limit
    assert 429 in statuses
    # admin's own right password is now refused from anywhere until the window passes,
    # but carol and the rest of the app are not.
    locked = httpx.post(
        f"{app.base_url}/login", data={"username": "admin", "password": ADMIN_PASSWORD}
    )
    assert locked.status_code == 429


@pytest.mark.slow
def test_the_login_page_says_when_to_retry(app: AppProcess, tmp_path: Path) -> None:
    """In a real browser, a locked account's login shows the 429's reason, not a blank."""
    if not CHROMIUM.exists():
        pytest.skip(CHROMIUM_MISSING)
    from playwright.sync_api import expect

    with client_from("127.0.0.5") as client:
        for _ in range(PER_ACCOUNT):
            client.post(f"{app.base_url}/login", data={"username": "gina", "password": WRONG})

    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.route("**/*", localhost_only)
        page.goto(f"{app.base_url}/login", wait_until="domcontentloaded")
        expect(page.locator("#email")).to_be_visible(timeout=30_000)
        page.fill("#email", "gina")
        page.fill("#password", "gina-password")
        page.press("#password", "Enter")
        notice = page.get_by_text("Too many failed logins for this account", exact=False)
        expect(notice.first).to_be_visible(timeout=30_000)
        expect(notice.first).to_contain_text("Try again in 15 minutes")
        page.screenshot(path=str(tmp_path / "login-locked.png"))
        target = os.environ.get("ATELIER_SCREENSHOT_DIR")
        if target:
            Path(target).mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(Path(target) / "login-locked.png"))
        assert page.url.endswith("/login")  # not logged in


# ------------------------------------------------- the limiter itself, memory and Redis


@pytest.fixture(params=["memory", "redis"])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[LoginLimiter]:
    """3 failures per account, 5 per address, in a 60 s window, on each storage."""
    if request.param == "memory":
        storage = storage_for(None)
    else:
        try:
            storage = storage_for(REDIS_URL)
        except ConfigError as exc:
            pytest.skip(str(exc))
        try:
            reachable = await asyncio.wait_for(storage.check(), 5)
        except (OSError, TimeoutError) as exc:
            reachable = False
            reason = f"{type(exc).__name__}: {exc}"
        else:
            reason = "check() said no"
        if not reachable:
            pytest.skip(f"Redis not reachable at {REDIS_URL} ({reason})")
    yield LoginLimiter(storage, per_account=3, per_address=5, window_s=60, pending_wait_s=0.3)


def fresh(prefix: str) -> str:
    """Keys no other run used (a shared Redis keeps counts between runs)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def test_failures_lock_the_account_then_the_address(limiter: LoginLimiter) -> None:
    address = fresh("10.0.0")
    victim, other = fresh("victim"), fresh("other")
    for _ in range(3):
        assert await limiter.refusal(victim, address) is None
        await limiter.failed(victim, address)
    locked = await limiter.refusal(victim, address)
    assert locked is not None and locked.scope == "account"
    assert 1 <= locked.retry_after_s <= 60
    assert "Try again in" in locked.message and "seconds" in locked.message
    # The address has 3 of its 5: another account still may try, twice.
    for _ in range(2):
        assert await limiter.refusal(other, address) is None
        await limiter.failed(other, address)
    by_address = await limiter.refusal(fresh("third"), address)
    assert by_address is not None and by_address.scope == "address"
    assert await limiter.refusal(fresh("third"), fresh("10.0.1")) is None


async def test_attempts_being_checked_count_and_success_clears(limiter: LoginLimiter) -> None:
    account, address = fresh("burst"), fresh("10.0.2")
    with contextlib.ExitStack() as pending:
        for _ in range(3):
            assert await limiter.refusal(account, address) is None
            pending.enter_context(limiter.checking(account, address))
        busy = await limiter.refusal(account, address)
        assert busy is not None and busy.retry_after_s == 1
    assert await limiter.refusal(account, address) is None  # all came back

    # A login that finds the limit filled only by logins being checked waits for them
    # (a team behind one address logging in at once), and goes ahead once they finish.
    with contextlib.ExitStack() as pending:
        for _ in range(3):
            pending.enter_context(limiter.checking(account, address))
        waiting = asyncio.create_task(limiter.refusal(account, address))
        await asyncio.sleep(0.1)
        assert not waiting.done()
    assert await waiting is None

    for _ in range(2):
        await limiter.failed(account, address)
    await limiter.succeeded(account)  # the right password: the account starts afresh
    for _ in range(2):
        await limiter.failed(account, fresh("10.0.3"))
    assert await limiter.refusal(account, fresh("10.0.4")) is None


def test_a_bad_redis_url_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATELIER_REDIS_URL", "http://127.0.0.1:6379")
    with pytest.raises(ConfigError, match="ATELIER_REDIS_URL"):
        load_settings()
