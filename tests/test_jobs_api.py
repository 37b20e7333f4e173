"""The jobs API (/api/v1/jobs) against the running app, over real HTTP.

One app process (SQLite) per module, with the fake OpenAI as its image backend, two
users each with a token made by `atelier tokens add`, and a webhook receiver on
127.0.0.1 that the operator allows (ATELIER_FETCH_ALLOW_HOSTS names its port only).
What is checked is what a client sees (status codes, the job's JSON, the SSE stream,
the webhook's body and signature) and what the database holds afterwards (the job's
row, the image in the token's "API ·" conversation, the ledger settled or released).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.app_process import AppProcess, add_user, app_rows, atelier, free_port
from tests.fakes.openai_server import FakeOpenAI
from tests.waiting import wait_until_sync

JOBS = "/api/v1/jobs"


class _Receiver(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]]

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


@dataclass
class Setup:
    app: AppProcess
    fake: FakeOpenAI
    alice: httpx.Client  # admin's token
    bob: httpx.Client  # another user's token
    hooks: list[tuple[dict[str, str], bytes]]
    hook_url: str


def _token(app: AppProcess, user: str) -> str:
    made = atelier("tokens", "--data-dir", str(app.data_dir), "add", user, "--name", "jobs-test")
    assert made.returncode == 0, made.stderr
    return made.stdout.splitlines()[0].strip()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    received: list[tuple[dict[str, str], bytes]] = []
    handler = type("Receiver", (_Receiver,), {"received": received})
    hook_port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", hook_port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    root: Path = tmp_path_factory.mktemp("jobs")
    with FakeOpenAI() as fake:
        app = AppProcess(
            root / "data",
            {
                "OPENAI_API_KEY": "sk-test-not-a-real-key",
                "OPENAI_BASE_URL": fake.base_url,
                "ATELIER_FETCH_ALLOW_HOSTS": f"127.0.0.1:{hook_port}",
            },
        ).start()
        try:
            add_user(app, "bob", "bob-password-for-tests")
            clients = [
                httpx.Client(
                    base_url=app.base_url,
                    headers={"Authorization": f"Bearer {_token(app, user)}"},
                    timeout=30,
                )
                for user in ("admin", "bob")
            ]
            yield Setup(
                app, fake, clients[0], clients[1], received, f"http://127.0.0.1:{hook_port}/hook"
            )
            for client in clients:
                client.close()
        finally:
            app.stop()
            server.shutdown()
            if "Traceback" in app.log():
                print(app.log())


def _final(client: httpx.Client, job_id: str, timeout: float = 30) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def done() -> bool:
        seen.update(client.get(f"{JOBS}/{job_id}").json())
        return seen["status"] in ("succeeded", "failed", "cancelled")

    wait_until_sync(done, timeout, f"job {job_id} to end")
    return seen


def _events(client: httpx.Client, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    """Read the job's SSE stream to its `end` event."""
    events: list[tuple[str, dict[str, Any]]] = []
    with client.stream("GET", f"{JOBS}/{job_id}/events", timeout=60) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        name = ""
        for line in answer.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[len("data: ") :])))
                if name == "end":
                    break
    return events


def test_an_image_job_runs_streams_its_progress_and_lands_in_history(setup: Setup) -> None:
    created = setup.alice.post(JOBS, json={"kind": "image", "prompt": "a red fox", "n": 2})
    assert created.status_code == 202, created.text
    job = created.json()
    assert job["status"] in ("queued", "running") and job["kind"] == "image"

    events = _events(setup.alice, job["id"])
    names = [name for name, _ in events]
    assert names[-1] == "end" and events[-1][1]["status"] == "succeeded", events
    statuses = [data["status"] for name, data in events if name == "status"]
    assert statuses[-1] == "succeeded" and "running" in statuses, statuses
    assert any(data["progress"]["total"] > 0 for name, data in events if name != "end"), events

    final = setup.alice.get(f"{JOBS}/{job['id']}").json()
    images = final["result"]["images"]
    assert len(images) == 2 and all(image["cost_usd"] for image in images)
    # The signed link serves the file without a login.
    served = httpx.get(setup.app.base_url + images[0]["url"])
    assert served.status_code == 200 and served.headers["content-type"].startswith("image/")
    # In the history (the token's conversation), priced and settled.
    [row] = app_rows(
        setup.app, f"SELECT thread_id, cost_usd FROM images WHERE id = '{images[0]['id']}'"
    )
    [thread] = app_rows(setup.app, f"SELECT name FROM threads WHERE id = '{row['thread_id']}'")
    assert thread["name"].startswith("API · ") and row["cost_usd"] is not None
    assert final["conversation_id"] == row["thread_id"]
    ledger = app_rows(setup.app, "SELECT status FROM ledger_entries")
    assert ledger and {entry["status"] for entry in ledger} == {"settled"}

    listed = setup.alice.get(JOBS, params={"limit": 5}).json()
    assert listed["object"] == "list" and job["id"] in [j["id"] for j in listed["data"]]


def test_a_slow_job_is_cancelled_and_its_reservation_released(setup: Setup) -> None:
    setup.fake.latency_s = 30  # the provider is still working when the cancel comes
    try:
        job = setup.alice.post(JOBS, json={"kind": "image", "prompt": "a slow snail"}).json()
        wait_until_sync(
            lambda: app_rows(setup.app, "SELECT id FROM ledger_entries WHERE status='reserved'"),
            20,
            "the job's reservation",
        )
        answer = setup.alice.post(f"{JOBS}/{job['id']}/cancel")
        assert answer.status_code == 200, answer.text
        final = _final(setup.alice, job["id"])
    finally:
        setup.fake.latency_s = 0
    assert final["status"] == "cancelled" and final["error"]["code"] == "cancelled", final
    reserved = app_rows(setup.app, "SELECT id FROM ledger_entries WHERE status = 'reserved'")
    assert reserved == []


def test_the_webhook_is_posted_signed_with_the_users_secret(setup: Setup) -> None:
    without = setup.alice.post(
        JOBS, json={"kind": "image", "prompt": "a cat", "webhook_url": setup.hook_url}
    )
    assert without.status_code == 400 or setup.alice.get("/api/v1/webhook-secret").json()["exists"]
    made = setup.alice.post("/api/v1/webhook-secret")
    assert made.status_code == 201
    secret = made.json()["secret"]
    state = setup.alice.get("/api/v1/webhook-secret").json()
    assert state["exists"] and "secret" not in state  # shown once, never again

    job = setup.alice.post(
        JOBS, json={"kind": "image", "prompt": "a cat", "webhook_url": setup.hook_url}
    ).json()
    wait_until_sync(lambda: setup.hooks, 30, "the webhook")
    headers, body = setup.hooks[-1]
    event = json.loads(body)
    assert event["type"] == "job.succeeded" and event["data"]["id"] == job["id"]
    stamp, _, mac = headers["atelier-signature"].partition(",v1=")
    t = int(stamp.removeprefix("t="))
    assert abs(time.time() - t) < 60
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(mac, expected)
    wait_until_sync(
        lambda: setup.alice.get(f"{JOBS}/{job['id']}").json()["webhook"]["status"] == "delivered",
        10,
        "the delivery to be recorded",
    )


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{other}/hook",  # loopback, a port the operator did not allow
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "http://10.0.0.1/hook",  # private
        "http://[::1]:{port}/hook",  # loopback over IPv6
        "file:///etc/passwd",
    ],
)
def test_a_webhook_to_a_private_address_is_refused(setup: Setup, url: str) -> None:
    setup.alice.post("/api/v1/webhook-secret")
    port = setup.hook_url.split(":")[2].split("/")[0]
    target = url.format(other=free_port(), port=port)
    before = len(setup.alice.get(JOBS, params={"limit": 100}).json()["data"])
    answer = setup.alice.post(JOBS, json={"kind": "image", "prompt": "x", "webhook_url": target})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == "webhook_url" and error["code"] == "webhook_url_refused"
    assert len(setup.alice.get(JOBS, params={"limit": 100}).json()["data"]) == before


def test_another_users_token_cannot_see_or_cancel_a_job(setup: Setup) -> None:
    job = setup.alice.post(JOBS, json={"kind": "image", "prompt": "a private owl"}).json()
    for answer in (
        setup.bob.get(f"{JOBS}/{job['id']}"),
        setup.bob.post(f"{JOBS}/{job['id']}/cancel"),
        setup.bob.get(f"{JOBS}/{job['id']}/events"),
    ):
        assert answer.status_code == 404, answer.text
        assert answer.json()["error"]["code"] == "not_found"
    missing = setup.bob.get(f"{JOBS}/00000000-0000-4000-8000-000000000000").json()
    assert answer.json() == missing  # worded like a job that does not exist
    assert job["id"] not in [j["id"] for j in setup.bob.get(JOBS).json()["data"]]
    assert _final(setup.alice, job["id"])["status"] == "succeeded"  # untouched
    assert httpx.get(setup.app.base_url + JOBS).status_code == 401  # no token at all


def test_a_bad_request_names_its_field(setup: Setup) -> None:
    answer = setup.alice.post(JOBS, json={"kind": "image", "prompt": "x", "n": 500})
    assert answer.status_code == 400
    assert "n" in (answer.json()["error"]["param"] or "")
    unknown = setup.alice.post(JOBS, json={"kind": "sculpture", "prompt": "x"})
    assert unknown.status_code == 400


def test_the_openapi_schema_is_served_valid_and_the_docs_need_no_cdn(setup: Setup) -> None:
    from openapi_spec_validator import validate

    schema = httpx.get(setup.app.base_url + "/api/openapi.json").json()
    validate(schema)
    assert "/api/v1/jobs" in schema["paths"] and "/api/v1/jobs/{job_id}/events" in schema["paths"]
    assert all(path.startswith(("/v1/", "/api/v1/")) for path in schema["paths"])
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"

    page = httpx.get(setup.app.base_url + "/api/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "cdn" not in csp
    assert "http" not in page.text.replace('href="/api/openapi.json"', "")  # nothing external
    for asset in ("/api/docs/docs.js", "/api/docs/docs.css"):
        assert httpx.get(setup.app.base_url + asset).status_code == 200


def test_a_job_interrupted_by_a_restart_is_marked_failed(setup: Setup) -> None:
    """Last in the module: it restarts the app."""
    setup.fake.latency_s = 30
    try:
        job = setup.alice.post(JOBS, json={"kind": "image", "prompt": "an unlucky moth"}).json()
        wait_until_sync(
            lambda: setup.alice.get(f"{JOBS}/{job['id']}").json()["status"] == "running",
            20,
            "the job to run",
        )
        assert setup.app.proc is not None
        setup.app.proc.kill()  # no clean-up of any kind
        setup.app.proc.wait()
        setup.app.proc = None
        setup.fake.latency_s = 0
        setup.app.start()
    finally:
        setup.fake.latency_s = 0
    final = setup.alice.get(f"{JOBS}/{job['id']}").json()
    assert final["status"] == "failed" and final["error"]["code"] == "interrupted", final
    assert "restarted" in final["error"]["message"]
