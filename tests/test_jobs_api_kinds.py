"""The jobs API's long kinds (batch, video, training) against the running app, over HTTP.

One app process (SQLite) for the module: the fake OpenAI draws the batches' images, the
fake Replicate makes the clip (MiniMax video-01, text to video), and the tiny random-
weight SD from disk is the local model LoRAs are trained on, for real on the CPU. Jobs
are followed the way a client follows them, through their server-sent events, and what
they made is checked where the user would find it: the job's result, the rows of the
token's "API ·" conversation, the ledger, the LoRA registry.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.app_process import AppProcess, add_user, app_rows, atelier
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.replicate_server import FakeReplicate
from tests.replicate_fixtures import replicate_app_env
from tests.waiting import wait_until_sync

pytestmark = pytest.mark.slow

JOBS = "/api/v1/jobs"
Event = tuple[str, dict[str, Any]]


@dataclass
class Setup:
    app: AppProcess
    openai: FakeOpenAI
    replicate: FakeReplicate
    alice: httpx.Client  # admin's token
    bob: httpx.Client  # another user's token
    made: list[str]  # ids of every job alice made here (bob must see none of them)


def _token(app: AppProcess, user: str) -> str:
    made = atelier("tokens", "--data-dir", str(app.data_dir), "add", user, "--name", "kinds")
    assert made.returncode == 0, made.stderr
    return made.stdout.splitlines()[0].strip()


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_sd_dir: Path,
    _replicate_server: FakeReplicate,
) -> Iterator[Setup]:
    root: Path = tmp_path_factory.mktemp("job-kinds")
    _replicate_server.reset()
    with FakeOpenAI() as fake:
        app = AppProcess(
            root / "data",
            {
                "OPENAI_API_KEY": "sk-test-not-a-real-key",
                "OPENAI_BASE_URL": fake.base_url,
                **replicate_app_env(_replicate_server),
                "ATELIER_LOCAL_MODEL": str(tiny_sd_dir),
                "ATELIER_LORA_DIR": str(root / "loras"),
                "ATELIER_API_RATE_PER_MINUTE": "10000",
                "ATELIER_API_CONCURRENT_JOBS": "8",
                # One torch thread: on a busy small machine a spinning thread team makes
                # the tiny model's training steps many times slower (tests/tiny_fixtures).
                "OMP_NUM_THREADS": "1",
            },
        ).start()
        try:
            add_user(app, "bob", "bob-password-for-tests")
            alice, bob = (
                httpx.Client(
                    base_url=app.base_url,
                    headers={"Authorization": f"Bearer {_token(app, user)}"},
                    timeout=30,
                )
                for user in ("admin", "bob")
            )
            yield Setup(app, fake, _replicate_server, alice, bob, [])
            alice.close()
            bob.close()
        finally:
            app.stop()
            _replicate_server.reset()
            if "Traceback" in app.log():
                print(app.log())


def _create(setup: Setup, body: dict[str, Any]) -> dict[str, Any]:
    answer = setup.alice.post(JOBS, json={"confirm_spend": True, **body})
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert job["status"] in ("queued", "running") and job["kind"] == body["kind"], job
    setup.made.append(job["id"])
    return job


def _events(
    client: httpx.Client,
    job_id: str,
    until: Callable[[dict[str, Any]], bool] | None = None,
    timeout: float = 90,
) -> list[Event]:
    """The job's SSE stream, read to its `end` event (or to the first job state that
    satisfies `until`); one request, however long the job takes."""
    events: list[Event] = []
    with client.stream("GET", f"{JOBS}/{job_id}/events", timeout=timeout) as answer:
        assert answer.status_code == 200, answer.read()
        name = ""
        for line in answer.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data = json.loads(line.removeprefix("data: "))
                events.append((name, data))
                if name == "end" or (until is not None and name != "end" and until(data)):
                    break
    return events


def _final(setup: Setup, job_id: str, timeout: float = 90) -> dict[str, Any]:
    events = _events(setup.alice, job_id, timeout=timeout)
    assert events[-1][0] == "end", events
    return setup.alice.get(f"{JOBS}/{job_id}").json()


def _statuses(events: list[Event]) -> list[str]:
    return [data["status"] for name, data in events if name == "status"]


def _reserved(setup: Setup) -> list[Any]:
    return app_rows(setup.app, "SELECT id FROM ledger_entries WHERE status = 'reserved'")


# --------------------------------------------------------------------------- batches


def test_a_batch_job_runs_every_item_into_the_history_and_settles(setup: Setup) -> None:
    setup.openai.latency_s = 0.3  # slow enough for the progress to be seen moving
    try:
        job = _create(
            setup,
            {"kind": "batch", "items": ["apple", "red bicycle", "cat"], "style": "photo"},
        )
        events = _events(setup.alice, job["id"])
    finally:
        setup.openai.latency_s = 0
    statuses = _statuses(events)
    assert "running" in statuses and statuses[-1] == "succeeded", events
    progress = [d["progress"] for n, d in events if n in ("status", "progress")]
    assert any(p["total"] == 3 and p["done"] < 3 for p in progress), progress
    assert progress[-1]["done"] == 3 == progress[-1]["total"], progress

    final = setup.alice.get(f"{JOBS}/{job['id']}").json()
    result = final["result"]
    assert result["batch"]["status"] == "done" and result["batch"]["done"] == 3, result
    assert [item["label"] for item in result["items"]] == ["apple", "red bicycle", "cat"]
    assert all(item["status"] == "done" and item["image_ids"] for item in result["items"])
    images = result["images"]
    assert {image["item"] for image in images} == {"apple", "red bicycle", "cat"}
    assert all(image["cost_usd"] and image["url"].startswith("/media/") for image in images)
    assert float(result["cost_usd"]) > 0
    served = httpx.get(setup.app.base_url + images[0]["url"])
    assert served.status_code == 200 and served.headers["content-type"].startswith("image/")
    # In the user's history: the token's conversation holds the images, with their cost.
    ids = ", ".join(f"'{image['id']}'" for image in images)
    rows = app_rows(setup.app, f"SELECT thread_id, cost_usd FROM images WHERE id IN ({ids})")
    assert len(rows) == len(images) and {row["thread_id"] for row in rows} == {
        final["conversation_id"]
    }
    assert all(row["cost_usd"] is not None for row in rows)
    [thread] = app_rows(
        setup.app, f"SELECT name FROM threads WHERE id = '{final['conversation_id']}'"
    )
    assert thread["name"].startswith("API · ")
    ledger = app_rows(
        setup.app,
        f"SELECT status FROM ledger_entries WHERE thread_id = '{final['conversation_id']}'",
    )
    assert len(ledger) >= 3 and {entry["status"] for entry in ledger} == {"settled"}


def test_two_batches_made_at_once_on_one_token_each_follow_their_own(setup: Setup) -> None:
    lists = (["plum", "pear"], ["fig", "lime", "kiwi"])
    with ThreadPoolExecutor(2) as pool:
        jobs = list(
            pool.map(lambda items: _create(setup, {"kind": "batch", "items": items}), lists)
        )
    finals = [_final(setup, job["id"]) for job in jobs]
    assert [f["status"] for f in finals] == ["succeeded", "succeeded"], finals
    for items, final in zip(lists, finals, strict=True):
        assert [item["label"] for item in final["result"]["items"]] == items, final
    assert finals[0]["result"]["batch"]["id"] != finals[1]["result"]["batch"]["id"]
    # Both in the token's one conversation: only the id handed back tells them apart.
    assert finals[0]["conversation_id"] == finals[1]["conversation_id"]


def test_a_running_batch_is_cancelled_and_stops(setup: Setup) -> None:
    setup.openai.latency_s = 30  # every item is still at the provider when the cancel comes
    try:
        job = _create(setup, {"kind": "batch", "items": ["snail", "slug", "tortoise"]})
        _events(setup.alice, job["id"], until=lambda d: d["progress"]["total"] == 3)
        wait_until_sync(lambda: _reserved(setup), 20, "the batch's items to be reserved")
        answer = setup.alice.post(f"{JOBS}/{job['id']}/cancel")
        assert answer.status_code == 200, answer.text
        final = _final(setup, job["id"], timeout=30)
    finally:
        setup.openai.latency_s = 0
    assert final["status"] == "cancelled" and final["error"]["code"] == "cancelled", final
    batch = final["result"]["batch"]
    [row] = app_rows(setup.app, f"SELECT status FROM batches WHERE id = '{batch['id']}'")
    assert row["status"] == "stopped" and batch["done"] == 0
    assert _reserved(setup) == []  # what the running items held was given back


def test_a_batch_whose_every_item_failed_is_a_failed_job(setup: Setup) -> None:
    """The provider refuses every item (its safety system): nothing was made, so the
    job fails, naming why, and still lists each item."""
    job = _create(setup, {"kind": "batch", "items": ["FAIL_MODERATION owl", "FAIL_MODERATION elk"]})
    final = _final(setup, job["id"])
    assert final["status"] == "failed", final
    assert "Every item of the batch failed" in final["error"]["message"], final
    items = final["result"]["items"]
    assert [item["status"] for item in items] == ["failed", "failed"], items
    assert _reserved(setup) == []


# --------------------------------------------------------------------------- video


def test_a_video_job_makes_a_priced_clip(setup: Setup) -> None:
    job = _create(setup, {"kind": "video", "prompt": "waves on a beach", "backend": "replicate"})
    final = _final(setup, job["id"])
    assert final["status"] == "succeeded", final
    [clip] = final["result"]["videos"]
    assert (clip["seconds"], clip["frames"], clip["fps"]) == (6.0, 150, 25.0)
    assert float(clip["cost_usd"]) == pytest.approx(0.5) == float(final["result"]["cost_usd"])
    served = httpx.get(setup.app.base_url + clip["url"], timeout=30)
    assert served.status_code == 200 and served.headers["content-type"] == "video/mp4"
    poster = httpx.get(setup.app.base_url + clip["poster_url"], timeout=30)
    assert poster.status_code == 200 and poster.headers["content-type"] == "image/png"
    [row] = app_rows(setup.app, f"SELECT thread_id, model FROM videos WHERE id = '{clip['id']}'")
    assert row["thread_id"] == final["conversation_id"] and row["model"] == "minimax/video-01"
    [entry] = app_rows(setup.app, "SELECT status FROM ledger_entries WHERE what = 'video'")
    assert entry["status"] == "settled"


# --------------------------------------------------------------------------- training


def _training_images(setup: Setup) -> list[str]:
    rows = app_rows(setup.app, "SELECT id FROM images ORDER BY created_at LIMIT 3")
    assert len(rows) >= 2, "the batch tests make the images trained on"
    return [row["id"] for row in rows]


def test_a_training_job_trains_a_lora_with_its_progress_streamed(setup: Setup) -> None:
    body = {
        "kind": "training",
        "name": "apistyle",
        "trigger_word": "APITOK",
        "images": _training_images(setup),
        "steps": 12,
        "resolution": 32,
    }
    job = _create(setup, body)
    events = _events(setup.alice, job["id"], timeout=120)
    assert _statuses(events)[-1] == "succeeded", events
    assert any(n == "progress" and d["progress"]["total"] == 12 for n, d in events), events
    progress = [d["progress"] for n, d in events if n in ("status", "progress")]
    assert progress[-1]["done"] == 12, progress
    final = setup.alice.get(f"{JOBS}/{job['id']}").json()
    lora = final["result"]["lora"]
    assert (lora["name"], lora["status"], lora["trigger_word"]) == (
        "apistyle",
        "succeeded",
        "APITOK",
    )
    [row] = app_rows(setup.app, "SELECT status, step FROM loras WHERE name = 'apistyle'")
    assert (row["status"], row["step"]) == ("succeeded", 12)
    # The result says what the ledger settled for the training.
    [entry] = app_rows(
        setup.app, "SELECT status, actual_usd FROM ledger_entries WHERE what = 'training'"
    )
    charged = entry["actual_usd"] if entry["status"] == "settled" else 0
    assert Decimal(final["result"]["cost_usd"]) == Decimal(str(charged)), (entry, final)


def test_a_running_training_job_is_cancelled(setup: Setup) -> None:
    body = {
        "kind": "training",
        "name": "apilong",
        "images": _training_images(setup),
        "steps": 100_000,
        "resolution": 32,
    }
    job = _create(setup, body)
    _events(setup.alice, job["id"], until=lambda d: d["progress"]["done"] > 0, timeout=120)
    answer = setup.alice.post(f"{JOBS}/{job['id']}/cancel")
    assert answer.status_code == 200, answer.text
    final = _final(setup, job["id"], timeout=60)
    assert final["status"] == "cancelled" and final["error"]["code"] == "cancelled", final
    assert 0 < final["result"]["lora"]["step"] < 100_000
    [row] = app_rows(setup.app, "SELECT status FROM loras WHERE name = 'apilong'")
    assert row["status"] == "cancelled"
    assert _reserved(setup) == []


# --------------------------------------------------------------------------- owners


def test_another_users_token_sees_none_of_these_jobs(setup: Setup) -> None:
    assert setup.made, "run with the tests above"
    for job_id in setup.made:
        assert setup.bob.get(f"{JOBS}/{job_id}").status_code == 404
    listed = setup.bob.get(JOBS, params={"limit": 100}).json()["data"]
    assert not {job["id"] for job in listed} & set(setup.made)
