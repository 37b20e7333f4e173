"""`atelier worker`: run local GPU jobs for the app processes sharing this broker.

One worker process per GPU (or one on the CPU). It needs the same ATELIER_BROKER_URL
(and ATELIER_REDIS_URL / ATELIER_BROKER_PREFIX, when set) as the app, the LoRA folder
the app uses (ATELIER_LORA_DIR on a shared disk) and the operator's models folder, when
one is configured, at the same path. It refuses to start, saying why, when no broker is
configured or Redis cannot be reached.
"""

from __future__ import annotations

import argparse
from typing import Any

from core.errors import ConfigError

KINDS = ("image", "video", "training", "embedding")


def add_worker_parser(sub: Any) -> None:
    worker = sub.add_parser("worker", help="run local GPU jobs for the app (needs a broker)")
    worker.add_argument(
        "--device", default=None, help="cuda:0, cpu or auto (default ATELIER_LOCAL_DEVICE)"
    )
    worker.add_argument(
        "--queues",
        default=",".join(KINDS),
        help="the kinds of job it takes: image,video,training,embedding (default all)",
    )
    worker.add_argument("--name", help="the worker's name (default hostname-device)")
    worker.add_argument("--data-dir", help="where the LoRA folder is (ATELIER_DATA_DIR)")
    worker.set_defaults(func=run)


def _kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    unknown = [k for k in kinds if k not in KINDS]
    if not kinds or unknown:
        raise ConfigError(
            f"--queues takes a comma-separated list of {', '.join(KINDS)}; got {text!r}."
        )
    return kinds


def run(args: argparse.Namespace) -> int:
    import os

    from chat_app.settings import Settings

    if args.data_dir:
        os.environ["ATELIER_DATA_DIR"] = args.data_dir
    settings = Settings()  # type: ignore[call-arg]
    kinds = _kinds(args.queues)
    if not settings.broker_url:
        raise ConfigError(
            "ATELIER_BROKER_URL is not set: a worker takes its jobs from the broker the "
            "app uses (e.g. redis://127.0.0.1:6379/0). Set it for the app and the worker."
        )
    redis_url = settings.redis_url or settings.broker_url
    _check_reachable(redis_url)
    device = args.device or settings.local_device
    from pipelines.remote.worker_process import default_name, run_worker

    return run_worker(
        broker_url=settings.broker_url,
        redis_url=redis_url,
        name=args.name or default_name(device),
        device=device,
        kinds=kinds,
        prefix=settings.broker_prefix,
    )


def _check_reachable(redis_url: str) -> None:
    import redis

    from core.redact import redact_urls

    client = redis.Redis.from_url(redis_url, socket_connect_timeout=3, socket_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise ConfigError(
            f"Redis at {redact_urls(redis_url)} cannot be reached ({type(exc).__name__}); "
            "start it or fix ATELIER_BROKER_URL / ATELIER_REDIS_URL."
        ) from exc
    finally:
        client.close()
