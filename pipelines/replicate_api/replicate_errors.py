"""Replicate's refusals, worded for the user as the project's errors (core/errors.py).

The `replicate` client parses Replicate's RFC 7807 problem details into `ReplicateError`
(status, title, detail) but drops the response headers; `Retry-After` is read by the
client module's response hook and handed in here as a number of seconds.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import httpx
from replicate.exceptions import ReplicateError

from core.errors import (
    BackendError,
    BackendFailed,
    BackendNotConfigured,
    BackendUnavailable,
    ContentRefused,
    InvalidInput,
    QuotaExhausted,
    RateLimited,
)

if TYPE_CHECKING:
    from pipelines.replicate_api.replicate_client import Resource

TOKEN_HINT = "check REPLICATE_API_TOKEN; it may be wrong, expired or revoked"
_REFUSAL = re.compile(r"nsfw|safety|sensitive|moderat|flagged|E005|content polic", re.I)


def check_finished(resource: Resource, run: Any, label: str) -> None:
    """A run that ended `failed` or `canceled` as the error the user should see."""
    if run.status == "failed":
        error = str(run.error or "").strip()[:500] or "no reason given"
        if _REFUSAL.search(error):
            raise ContentRefused(
                f"Replicate's safety filter refused this ({label}): {error} "
                "Rephrase the prompt and try again."
            )
        raise BackendFailed(resource.failed.format(label=label, id=run.id, error=error))
    if run.status == "canceled":
        raise BackendFailed(resource.canceled.format(id=run.id))


def _detail(exc: ReplicateError) -> str:
    return str(exc.detail or exc.title or "").strip()[:500]


def api_error(exc: ReplicateError, doing: str) -> BackendError:
    """Any call's refusal that the caller has no more specific words for."""
    status = exc.status or 0
    if status in (401, 403):
        return BackendNotConfigured(f"Replicate rejected the API token ({TOKEN_HINT}).")
    if status == 402:
        return QuotaExhausted(
            "Your Replicate account is out of credit (HTTP 402). Add credit at "
            "replicate.com/account/billing; retrying will not help."
        )
    if status == 429:
        return RateLimited(f"Replicate is rate-limiting requests; could not {doing}. Try later.")
    return BackendUnavailable(
        f"Replicate answered HTTP {status} when trying to {doing}"
        f"{': ' + _detail(exc) if _detail(exc) else ''}. Try again in a moment."
    )


def unreachable(exc: httpx.HTTPError, doing: str) -> BackendUnavailable:
    return BackendUnavailable(
        f"Could not reach Replicate while {doing} ({type(exc).__name__}). Check the "
        "connection or REPLICATE_BASE_URL, then try again."
    )


def create_error(exc: ReplicateError, label: str) -> BackendError | InvalidInput:
    status = exc.status or 0
    if status in (400, 422):
        return InvalidInput(f"Replicate refused the input for {label}: {_detail(exc)}")
    if status in (401, 402, 403):
        return api_error(exc, f"start {label}")
    return BackendFailed(f"Replicate answered HTTP {status} to {label}: {_detail(exc)}")


def busy(
    resource: Resource,
    status: int,
    label: str,
    asked: float | None,
    attempts: int,
    cap: float | None = None,
) -> BackendError:
    """Rate limited or down: say how long Replicate asked to wait and what we did."""
    if cap is not None:
        reason = f"asks to wait {seconds(asked or 0)}, longer than Atelier waits ({seconds(cap)})"
    else:
        asks = f"; it last asked to wait {seconds(asked)}" if asked is not None else ""
        reason = f"still answered HTTP {status} after {attempts} attempt(s){asks}"
    if status == 429:
        return RateLimited(
            f"Replicate is rate-limiting new {resource.plural} for {label}: it {reason}. "
            "Nothing was started; try again later.",
            retry_after_s=asked,
        )
    return BackendUnavailable(
        f"Replicate is having server trouble (HTTP {status}) starting {label}: it {reason}. "
        "Nothing was started; try again in a moment."
    )


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` in seconds, or as an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).totalseconds())


def seconds(value: float) -> str:
    return f"{value:.0f} s" if value >= 10 else f"{value:.2g} s"


def duration(value: float) -> str:
    return seconds(value) if value < 120 else f"{value / 60:.0f} minutes"
