"""Signed webhooks for the jobs API: a POST to the caller's URL when a job ends.

The URL is the caller's, so it is as untrusted as a provider's output link: the POST
goes through the guarded downloader's rules (pipelines/downloads/), so private,
loopback and cloud-metadata addresses are refused unless the operator lists them in
ATELIER_FETCH_ALLOW_HOSTS, and nothing about why a delivery failed is told back.

Signature (the scheme Stripe and others use, so receivers know it):
`Atelier-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`.
The receiver recomputes it over the raw body with its secret, compares in constant
time and rejects old timestamps (replays).

Each user has one signing secret, shown once when made (POST /api/v1/webhook-secret).
It is not stored: it is HMAC(app secret, user id + a random nonce), and only the nonce
is in the database, so a copy of the database signs nothing; a new secret replaces the
nonce, and the old secret stops verifying at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from typing import Any

from chat_app.settings import Settings
from core.errors import BackendFailed
from core.logging_setup import get_logger
from memory.api_jobs import ApiJobRecord, ApiJobStore
from pipelines.downloads.fetch_policy import FetchPolicy
from pipelines.downloads.guarded_fetch import GuardedFetcher

log = get_logger(__name__)

SIGNATURE_HEADER = "Atelier-Signature"
SECRET_PREFIX = "whsec_"
ATTEMPTS = 3
RETRY_BASE_S = 1.0
TIMEOUT_S = 10.0


def derive_secret(app_secret: str, user_id: str, nonce: str) -> str:
    """The user's signing secret for this nonce (recomputed, never stored)."""
    digest = hmac.new(
        app_secret.encode(), f"atelier-webhook:{user_id}:{nonce}".encode(), hashlib.sha256
    ).hexdigest()
    return SECRET_PREFIX + digest


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The header value for `body` sent at `timestamp`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, header: str, body: bytes, *, tolerance_s: int = 300) -> bool:
    """What a receiver does (used by the tests; documented for users)."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance_s:
        return False
    expected = signature(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


def policy(settings: Settings) -> FetchPolicy:
    return FetchPolicy.from_setting(settings.fetch_allow_hosts, timeout_s=TIMEOUT_S)


async def permitted(settings: Settings, url: str) -> bool:
    """May the server POST to `url` (checked when a job is created; checked again at
    delivery, since DNS answers may change)."""
    fetcher = GuardedFetcher(policy(settings))
    try:
        return await fetcher.permitted(url)
    finally:
        await fetcher.aclose()


async def deliver(
    settings: Settings, app_secret: str, store: ApiJobStore, job: ApiJobRecord, payload: Any
) -> str:
    """POST `payload` signed to the job's webhook; a few tries; returns the status kept.

    "delivered" on a 2xx; "failed" when every try failed or the address was refused,
    or when the user has no signing secret (it was never made).
    """
    assert job.webhook_url is not None
    key = await store.webhook_nonce(job.user_id)
    if key is None:
        await store.set_webhook_status(job.id, "failed")
        log.warning("webhook_without_secret", job=job.id)
        return "failed"
    secret = derive_secret(app_secret, job.user_id, key[0])
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    fetcher = GuardedFetcher(policy(settings))
    status = "failed"
    try:
        for attempt in range(ATTEMPTS):
            stamp = int(time.time())
            headers = [
                (b"Content-Type", b"application/json"),
                (SIGNATURE_HEADER.encode(), signature(secret, stamp, body).encode()),
                (b"Atelier-Job-Id", job.id.encode()),
            ]
            try:
                answer = await fetcher.post(job.webhook_url, body, headers, timeout_s=TIMEOUT_S)
            except BackendFailed:
                answer = None  # why is in the log (provider_download_refused), not here
            if answer is not None and 200 <= answer < 300:
                status = "delivered"
                break
            log.info("webhook_attempt_failed", job=job.id, attempt=attempt + 1, status=answer)
            if attempt + 1 < ATTEMPTS:
                await asyncio.sleep(RETRY_BASE_S * 4**attempt)
    finally:
        await fetcher.aclose()
    await store.set_webhook_status(job.id, status)
    log.info("webhook_finished", job=job.id, status=status)
    return status
