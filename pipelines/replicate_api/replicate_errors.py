"""Replicate's refusals, worded for the user as the project's errors (core/errors.py).

The `replicate` client parses Replicate's RFC 7807 problem details into `ReplicateError`
(status, title, detail) but drops the response headers; `Retry-After` is read by the
client module's response hook and handed in here as a number of seconds.

An answer that is not what the API promises is not a `ReplicateError`: the client raises
whatever its parsing meets (`MALFORMED`), and `malformed` words it, with `check_run` for
what the client's models let through (an empty id, an answer about another run).
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import httpx

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
    from replicate.exceptions import ReplicateError  # only annotations: it costs start-up time

    from pipelines.replicate_api.replicate_client import Resource

TOKEN_HINT = "check REPLICATE_API_TOKEN; it may be wrong, expired or revoked"
#: What the `replicate` client raises reading an answer that is not what the API promises:
#: a body that is not JSON (JSONDecodeError, a ValueError), JSON that is not an object
#: (TypeError: it is unpacked into keyword arguments; AttributeError: an error answer's
#: body is read with `.get`), or an object its pydantic models refuse (ValidationError, a
#: ValueError: no `id`, an unknown `status`, a field of the wrong type).
MALFORMED = (ValueError, TypeError, AttributeError)
_MISBEHAVING = (
    "if it keeps happening, Replicate (or the server set as REPLICATE_BASE_URL) is misbehaving"
)
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


def malformed(problem: BaseException | str, answer: str, after: str) -> BackendFailed:
    """Replicate answered `answer` ("the request to start …") with something its API does
    not promise; `problem` is the parsing error or what was wrong; `after` says what became
    of the run and whether to try again."""
    what = problem if isinstance(problem, str) else _what_was_wrong(problem)
    return BackendFailed(
        f"Replicate answered {answer} with {what}, not what its API promises. {after} "
        f"Try again in a moment; {_MISBEHAVING}."
    )


def unfollowable(resource: Resource) -> str:
    """After a create whose answer cannot be read: the run may exist, unseen."""
    return (
        f"Atelier cannot follow or cancel a {resource.noun} it cannot read; if one started, "
        f"it is listed at https://replicate.com/{resource.plural}."
    )


def check_run(resource: Resource, run: Any, answer: str, after: str, run_id: str = "") -> None:
    """What the client's models let through: an empty id, or an answer about another run
    than the one asked about (`run_id`)."""
    found = run.id if isinstance(run.id, str) else ""
    if not found.strip():
        raise malformed(f"a {resource.noun} without an `id`", answer, after)
    if run_id and found != run_id:
        raise malformed(f"another {resource.noun} ({found[:40]})", answer, after)


def _what_was_wrong(exc: BaseException) -> str:
    if isinstance(exc, json.JSONDecodeError | UnicodeDecodeError):
        return "a body that is not valid JSON"
    if isinstance(exc, TypeError | AttributeError):
        return "JSON that is not an object"
    errors = getattr(exc, "errors", None)  # pydantic's ValidationError (v1 or v2)
    found = []
    for error in errors() if callable(errors) else []:
        field = str((error.get("loc") or ("?",))[0])
        given = (error.get("ctx") or {}).get("given", error.get("input"))
        if "missing" in str(error.get("type")):
            found.append(f"no `{field}`")
        elif field == "status" and isinstance(given, str):
            found.append(f"a status Atelier does not know ({given[:40]!r})")
        else:
            found.append(f"an invalid `{field}`")
    if found:
        return "JSON with " + ", ".join(dict.fromkeys(found))
    return f"an answer Atelier cannot read ({type(exc).__name__})"


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


def seconds(value: float) -> str:
    return f"{value:.0f} s" if value >= 10 else f"{value:.2g} s"


def duration(value: float) -> str:
    return seconds(value) if value < 120 else f"{value / 60:.0f} minutes"
