"""`atelier doctor` on a scaled-out install: broker, live workers, media store.

The command runs as a subprocess, as an operator would run it; workers are made live by
real `WorkerBoard` heartbeats on the Redis server here (a unique key prefix per test),
and the S3 store is moto's server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.app_process import atelier, free_port

REDIS_URL = os.environ.get("ATELIER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def line(output: str, name: str) -> str:
    """The doctor's line for a check, e.g. `ok  broker  redis://... reachable; ...`."""
    found = [text for text in output.splitlines() if text[4:].startswith(name + " ")]
    assert len(found) == 1, output
    return found[0]


def doctor(data_dir: Path, **env: str):
    return atelier("doctor", "--data-dir", str(data_dir), env={"HF_HUB_OFFLINE": "1", **env})


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.skip(f"no Redis server at {REDIS_URL}: {exc}")
    prefix = f"atelier-test-{uuid.uuid4().hex[:8]}:"
    try:
        yield prefix
    finally:
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)
        client.close()


def test_without_a_broker_jobs_run_here_and_local_media_is_checked(tmp_path: Path) -> None:
    result = doctor(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    broker = line(result.stdout, "broker")
    assert broker.startswith("ok  ")
    assert "not configured: local jobs run in this process" in broker
    media = line(result.stdout, "media")
    assert media.startswith("ok  ")
    assert f"local disk {(tmp_path / 'media').resolve()} writable and readable" in media
    assert not [p for p in (tmp_path / "media").rglob("*") if p.is_file()]  # probe removed


def test_an_unreachable_broker_is_one_clear_line(tmp_path: Path) -> None:
    url = f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0"
    result = doctor(tmp_path, ATELIER_BROKER_URL=url)
    assert result.returncode == 1
    broker = line(result.stdout, "broker")
    assert broker.startswith("--  ")
    assert "127.0.0.1" in broker and "unreachable" in broker
    assert "no local image, video or training job can run until it answers" in broker
    assert "hunter2-secret" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_live_workers_are_listed_with_device_memory_and_models(
    tmp_path: Path, redis_prefix: str
) -> None:
    import redis
    import redis.asyncio as aredis

    from pipelines.remote.job_board import JobBoard
    from pipelines.remote.worker_board import WorkerBoard
    from pipelines.remote.worker_info import WorkerInfo

    workers = WorkerBoard(redis.Redis.from_url(REDIS_URL), prefix=redis_prefix, ttl_s=60)
    common = {"host": "gpu-box", "pid": 4242, "started_at": time.time()}
    workers.heartbeat(
        WorkerInfo(
            name="h200-a",
            kinds=("image", "video"),
            device="cuda:0",
            device_name="NVIDIA H200",
            memory_total_mb=143_360,
            memory_free_mb=122_880,
            loaded_models=("stabilityai/sd-turbo", "my/lora-base"),
            **common,
        )
    )
    workers.heartbeat(WorkerInfo(name="cpu-b", kinds=("training",), device="cpu", **common))

    async def queue_and_dispatch() -> list[tuple[str, str, int]]:
        sent: list[tuple[str, str, int]] = []

        async def send(worker: str, job_id: str, attempt: int) -> None:
            sent.append((worker, job_id, attempt))

        client = aredis.Redis.from_url(REDIS_URL)
        board = JobBoard(client, send, prefix=redis_prefix)
        for _ in range(3):
            await board.enqueue(owner="u1", kind="image", model="stabilityai/sd-turbo", payload=b"")
        await board.dispatch()
        await client.aclose()
        return sent

    sent = asyncio.run(queue_and_dispatch())
    assert [worker for worker, _, _ in sent] == ["h200-a"]

    result = doctor(tmp_path, ATELIER_BROKER_URL=REDIS_URL, ATELIER_BROKER_PREFIX=redis_prefix)
    assert result.returncode == 0, result.stdout + result.stderr
    broker = line(result.stdout, "broker")
    assert "reachable; 2 live worker(s), 2 job(s) queued, 1 running" in broker
    gpu = line(result.stdout, "worker h200-a")
    assert gpu.startswith("ok  ")
    assert "cuda:0 (NVIDIA H200)" in gpu
    assert "120.0 of 140.0 GiB free" in gpu
    assert "image+video" in gpu
    assert "models: stabilityai/sd-turbo, my/lora-base" in gpu
    assert f"running job {sent[0][1]}" in gpu
    assert "on gpu-box (pid 4242)" in gpu
    cpu = line(result.stdout, "worker cpu-b")
    assert "cpu, memory unknown, training, models: none loaded, idle" in cpu


def test_no_live_worker_is_said_plainly(tmp_path: Path, redis_prefix: str) -> None:
    result = doctor(tmp_path, ATELIER_BROKER_URL=REDIS_URL, ATELIER_BROKER_PREFIX=redis_prefix)
    assert "reachable; 0 live worker(s), 0 job(s) queued, 0 running" in line(
        result.stdout, "broker"
    )
    workers = line(result.stdout, "workers")
    assert workers.startswith("--  ")
    assert "none live" in workers
    assert result.returncode == 0  # jobs wait for a worker; nothing is misconfigured


@pytest.fixture
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
    "ATELIER_MEDIA_S3_REGION": "us-east-1",
}


def test_an_s3_bucket_is_written_read_and_cleaned(tmp_path: Path, s3_endpoint: str) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", **_keys())
    s3.create_bucket(Bucket="atelier-media")
    env = {**S3_ENV, "ATELIER_MEDIA_S3_BUCKET": "atelier-media"}
    result = doctor(tmp_path, ATELIER_MEDIA_S3_ENDPOINT_URL=s3_endpoint, **env)
    media = line(result.stdout, "media")
    assert media.startswith("ok  ")
    assert f"S3 bucket 'atelier-media' at {s3_endpoint} writable and readable" in media
    assert s3.list_objects_v2(Bucket="atelier-media").get("KeyCount") == 0  # probe deleted
    assert "testing-secret-key" not in result.stdout + result.stderr


def test_a_missing_bucket_fails_the_doctor(tmp_path: Path, s3_endpoint: str) -> None:
    env = {**S3_ENV, "ATELIER_MEDIA_S3_BUCKET": "no-such-bucket"}
    result = doctor(tmp_path, ATELIER_MEDIA_S3_ENDPOINT_URL=s3_endpoint, **env)
    assert result.returncode == 1
    media = line(result.stdout, "media")
    assert media.startswith("--  ")
    assert "no-such-bucket" in media and "NoSuchBucket" in media
    assert "Traceback" not in result.stderr


def _keys() -> dict[str, str]:
    return {
        "aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
    }
