"""One Replicate client: a prediction's or a training's life, from create to download.

Why not `replicate.run()`: it hides the prediction, so it can neither report progress nor
cancel a run the user stopped (which would keep running, and billing), and it takes any
status but "starting" as final (it sends `Prefer: wait`). Predictions (images, video)
and trainings (LoRAs) live the same life on Replicate at different endpoints
(`/v1/predictions`, `/v1/trainings`); `Resource` names which, and `ReplicateClient` does
the rest once:

- clients per event loop (httpx connections cannot move between loops);
- create with the project's retry policy, since the `replicate` client never retries a
  POST: 429 and 5xx are tried again after the `Retry-After` Replicate sends (up to
  `max_retry_wait_s`; asked to wait longer, it gives up at once and names the wait) or
  after an exponential backoff; a connection that failed before anything was sent is
  tried again; any other transport error is not (the POST may have arrived, and a second
  try could start, and bill, a second run);
- poll with progress reports, noticing a user's stop (`progress.cancel()`) within 0.1 s;
- cancel on Replicate whenever we stop waiting: a stop, an error, a timeout, the
  awaiting task cancelled, even while the create itself is in flight;
- errors: the client's `ReplicateError` (RFC 7807 problem details, parsed) becomes one of
  the project's errors (core/errors.py), worded for the user (`replicate_errors`); so
  does an answer to a create or a poll that is not what the API promises (not JSON, no
  `id`, an unknown `status`): `BackendFailed` naming Replicate and what was wrong;
- outputs: provider-chosen links, so downloaded through the guarded downloader only
  (without the API token), or decoded in place when they are data: URIs
  (`replicate_files`, with the other payload helpers: inline files, the input record).

What a model's input is, and what its result means, stays with the backends
(replicate_images, replicate_video, replicate_training).

About 450 lines, over the ~400 the project aims for: create, poll and cancel are one
policy (what is retried, when a run must be cancelled, which stop message applies) and
read best in one place; the wording of errors and the payload helpers are already apart.

Length: create, poll, cancel and download are one lifecycle with one retry and cancel
policy; this is the module that keeps them from existing three times.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar

import httpx

from core.errors import BackendFailed, BackendUnavailable, InvalidInput
from core.logging_setup import get_logger
from pipelines import provider_limits
from pipelines.backend_settings import BackendSettings
from pipelines.downloads.fetch_policy import FetchPolicy
from pipelines.downloads.guarded_fetch import GuardedFetcher
from pipelines.progress import Progress
from pipelines.replicate_api.model_refs import ModelRef
from pipelines.replicate_api.replicate_errors import (
    MALFORMED,
    api_error,
    busy,
    check_finished,
    check_run,
    create_error,
    duration,
    malformed,
    seconds,
    unfollowable,
)
from pipelines.replicate_api.replicate_files import fetch_output

if TYPE_CHECKING:  # `replicate` is imported on first use: it costs start-up time (numpy)
    import replicate
    from replicate.exceptions import ReplicateError
    from replicate.prediction import Prediction
    from replicate.training import Training

log = get_logger(__name__)

TERMINAL = frozenset({"succeeded", "failed", "canceled"})
FIRST_POLL_S = 0.5  # fast models finish in about a second: look once before the interval
MAX_RETRY_WAIT_S = 60.0
CANCEL_TIMEOUT_S = 5.0
_PERCENT = re.compile(r"(\d{1,3})%\|")

Run = TypeVar("Run", "Prediction", "Training")


@dataclass(frozen=True)
class Resource:
    """Which of Replicate's run lifecycles: the same life at other endpoints and words."""

    noun: str  # "prediction"
    plural: str  # the `replicate.Client` namespace, and the URL path: "predictions"
    first_poll_s: float | None  # look sooner than the poll interval the first time
    stopped: str  # what a user's stop says
    failed: str  # what a run that ended "failed" says: {label} {id} {error}
    canceled: str  # what a run cancelled elsewhere says: {id}


_ELSEWHERE = "was canceled before it finished (from Replicate's dashboard or another client)"
PREDICTIONS = Resource(
    "prediction",
    "predictions",
    FIRST_POLL_S,
    stopped="Stopped at your request; nothing from Replicate was kept.",
    failed="{label} failed on Replicate (prediction {id}): {error}",
    canceled=f"The Replicate prediction {{id}} {_ELSEWHERE}; nothing was made.",
)
TRAININGS = Resource(
    "training",
    "trainings",
    None,
    stopped="Stopped at your request; the training on Replicate was cancelled (billing stops).",
    failed="The LoRA training on Replicate failed (training {id}): {error}",
    canceled=f"The Replicate training {{id}} {_ELSEWHERE}; no LoRA was made.",
)

# The client's errors drop the response headers, so a response hook files `Retry-After`
# here for the create call that is waiting for it (a ContextVar, so concurrent runs never
# read each other's). The key is there whenever an answer came, with or without the header.
_retry_after_box: ContextVar[dict[str, str] | None] = ContextVar("replicate_retry_after")


async def _remember_retry_after(response: httpx.Response) -> None:
    box = _retry_after_box.get(None)
    if box is not None:
        box["retry-after"] = response.headers.get("retry-after", "")


@dataclass(frozen=True)
class Connections:
    """Clients for one event loop: httpx connections cannot move between loops."""

    loop: asyncio.AbstractEventLoop
    api: replicate.Client
    files: GuardedFetcher  # outputs: provider-chosen URLs, so through the guard only
    transport: httpx.AsyncHTTPTransport


class ClientOptions(TypedDict, total=False):
    """`ReplicateClient`'s settings, as the backends pass them through unchanged."""

    base_url: str | None
    timeout_s: float
    poll_interval_s: float
    max_wait_s: float
    max_retries: int
    retry_backoff_s: float
    max_retry_wait_s: float
    fetch_policy: FetchPolicy | None


def configured(settings: BackendSettings) -> tuple[str, ClientOptions] | None:
    """The API token and client options the app's settings give; None without a token
    (no Replicate backend, rather than one that fails on first use)."""
    token = settings.replicate_api_token
    if token is None or not token.get_secret_value().strip():
        return None
    options = ClientOptions(
        base_url=settings.replicate_base_url,
        poll_interval_s=settings.replicate_poll_interval_s,
        timeout_s=settings.request_timeout_s,
        max_retries=settings.max_retries,
        fetch_policy=FetchPolicy.from_setting(
            settings.fetch_allow_hosts, timeout_s=settings.request_timeout_s
        ),
    )
    return token.get_secret_value().strip(), options


class ReplicateClient:
    """The lifecycle of Replicate runs for one API token, under one retry/poll policy."""

    def __init__(
        self,
        api_token: str,
        *,
        base_url: str | None = None,
        timeout_s: float = 120.0,
        poll_interval_s: float = 1.0,
        max_wait_s: float = 1800.0,
        max_retries: int = 2,
        retry_backoff_s: float = 0.5,
        max_retry_wait_s: float = MAX_RETRY_WAIT_S,
        fetch_policy: FetchPolicy | None = None,
    ) -> None:
        self._token = api_token
        self._base_url = base_url
        self._timeout_s = timeout_s
        self._poll_interval_s = poll_interval_s
        self._max_wait_s = max_wait_s
        self._max_retries = max_retries
        self._retry_backoff_s = retry_backoff_s
        self._max_retry_wait_s = max_retry_wait_s
        # No allow-list unless given: outputs on private addresses are refused.
        self._fetch_policy = fetch_policy or FetchPolicy(timeout_s=timeout_s)
        self._connections: Connections | None = None

    # -- connections -------------------------------------------------------------------

    def connect(self) -> Connections:
        """This event loop's clients, made on first use in the loop."""
        loop = asyncio.get_running_loop()
        conns = self._connections
        if conns is None or conns.loop is not loop:
            import replicate

            timeout = httpx.Timeout(self._timeout_s, connect=min(10.0, self._timeout_s))
            transport = httpx.AsyncHTTPTransport()
            # A 429 any request met pauses them all, retries included (provider_limits).
            hooks = provider_limits.http_hooks("replicate")
            api = replicate.Client(
                self._token,
                base_url=self._base_url,
                timeout=timeout,
                transport=transport,
                event_hooks={
                    "request": hooks["request"],
                    "response": [_remember_retry_after, *hooks["response"]],
                },
            )
            # Outputs are fetched without the API token: it is no business of a file host.
            files = GuardedFetcher(self._fetch_policy)
            conns = self._connections = Connections(loop, api, files, transport)
        return conns

    async def aclose(self) -> None:
        """Close this event loop's connections (tests, scripts, and each LoRA training)."""
        conns, self._connections = self._connections, None
        if conns is not None and conns.loop is asyncio.get_running_loop():
            await conns.files.aclose()
            await conns.transport.aclose()

    # -- a prediction, start to end ----------------------------------------------------

    async def predict(
        self,
        model: ModelRef,
        inputs: dict[str, Any],
        label: str,
        progress: Progress | None,
        on_status: Callable[[Prediction], None] | None = None,
    ) -> Prediction:
        """Create a prediction of `model` (its version endpoint when pinned), wait for it
        to end, and return it succeeded; a failed or cancelled one is an error.
        `on_status` also sees each state before the end (intermediate outputs)."""

        def start(api: replicate.Client) -> Awaitable[Prediction]:
            if model.version:
                return api.predictions.async_create(version=model.version, input=inputs)
            return api.models.predictions.async_create(
                model=(model.owner, model.name), input=inputs
            )

        def no_such_model(exc: ReplicateError) -> InvalidInput | None:
            if exc.status != 404:
                return None
            version = f" version {model.version}" if model.version else ""
            return InvalidInput(
                f"Replicate has no model {model.slug}{version} (or it is private to another "
                f"account). Check the name at https://replicate.com/{model.slug}."
            )

        report(progress, 0, "sending to Replicate")
        prediction = await self.create(PREDICTIONS, start, label, progress, no_such_model)
        log.info("replicate_prediction_created", prediction=prediction.id, model=model.slug)

        def seen(current: Prediction) -> None:
            _report_status(progress, current)
            if on_status is not None:
                on_status(current)

        prediction = await self.wait(PREDICTIONS, prediction, label, progress, seen)
        check_finished(PREDICTIONS, prediction, label)
        return prediction

    # -- create, with the project's retry policy ---------------------------------------

    async def create(
        self,
        resource: Resource,
        start: Callable[[replicate.Client], Awaitable[Run]],
        label: str,
        progress: Progress | None,
        refuse: Callable[[ReplicateError], Exception | None] | None = None,
    ) -> Run:
        """POST through `start`; on 429 and 5xx wait as Replicate asks, then try again.

        `refuse` words the caller's own refusals (what a 404 means depends on what was
        asked); None leaves the error to the common translation.
        """
        from replicate.exceptions import ReplicateError

        api = self.connect().api
        attempts = self._max_retries + 1
        answer = f"the request to start {label}"
        for attempt in range(1, attempts + 1):
            stop_if_cancelled(resource, progress)
            box: dict[str, str] = {}
            token = _retry_after_box.set(box)
            try:
                created = await self._create_once(resource, api, start)
                check_run(resource, created, answer, unfollowable(resource))
                return created
            except MALFORMED as exc:
                if "retry-after" not in box:
                    raise  # raised before any answer came: not Replicate's doing
                raise malformed(exc, answer, unfollowable(resource)) from exc
            except ReplicateError as exc:
                status = exc.status or 0
                if status != 429 and status < 500:
                    refusal = refuse(exc) if refuse is not None else None
                    raise (refusal or create_error(exc, label)) from exc
                asked = provider_limits.retry_after_seconds(box.get("retry-after"))
                if asked is not None and asked > self._max_retry_wait_s:
                    cap = self._max_retry_wait_s
                    raise busy(resource, status, label, asked, attempt, cap) from exc
                if attempt == attempts:
                    raise busy(resource, status, label, asked, attempt) from exc
                delay = asked if asked is not None else self._backoff(attempt)
                why = f"HTTP {status}"
            except httpx.ConnectError as exc:
                # Nothing reached Replicate, so trying again cannot start a second run.
                if attempt == attempts:
                    raise BackendUnavailable(
                        f"Could not reach Replicate ({type(exc).__name__}) after {attempt} "
                        "attempt(s). Check the connection or REPLICATE_BASE_URL."
                    ) from exc
                delay, why = self._backoff(attempt), "connection failed"
            except httpx.HTTPError as exc:
                # The POST may have arrived: retrying could start (and bill) a second one.
                raise BackendUnavailable(
                    f"Replicate did not answer the request to start {label} "
                    f"({type(exc).__name__}). Try again in a moment."
                ) from exc
            finally:
                _retry_after_box.reset(token)
            log.info(
                "replicate_create_retry",
                resource=resource.noun,
                attempt=attempt,
                delay_s=delay,
                reason=why,
            )
            report(progress, 0, f"Replicate is busy ({why}); retrying in {seconds(delay)}")
            await _sleep(resource, delay, progress)
        raise AssertionError("unreachable")  # the loop returns or raises

    async def _create_once(
        self,
        resource: Resource,
        api: replicate.Client,
        start: Callable[[replicate.Client], Awaitable[Run]],
    ) -> Run:
        task = asyncio.ensure_future(start(api))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            # Stopped while the POST was in flight: it may already have started a run,
            # which would bill for nothing. Hear the answer (briefly) so it is cancelled too.
            try:
                created = await asyncio.wait_for(task, CANCEL_TIMEOUT_S)
            except (Exception, asyncio.CancelledError):
                raise asyncio.CancelledError() from None
            await self.cancel(resource, created.id)
            raise

    def _backoff(self, attempt: int) -> float:
        return self._retry_backoff_s * 2 ** (attempt - 1)

    # -- poll ---------------------------------------------------------------------------

    async def wait(
        self,
        resource: Resource,
        run: Run,
        label: str,
        progress: Progress | None,
        on_status: Callable[[Run], None],
    ) -> Run:
        """Poll until `run` ends, telling `on_status` each state seen before the end;
        cancel it on Replicate if we stop waiting first."""
        api = self.connect().api
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._max_wait_s
        delay = min(self._poll_interval_s, resource.first_poll_s or self._poll_interval_s)
        current = run
        try:
            while current.status not in TERMINAL:
                on_status(current)
                if loop.time() > deadline:
                    raise BackendUnavailable(
                        f"{label} did not finish within {duration(self._max_wait_s)} "
                        f"({resource.noun} {current.id} was still {current.status}); it was "
                        "cancelled. Try again later."
                    )
                await _sleep(resource, delay, progress)
                delay = self._poll_interval_s
                current = await self._poll(resource, api, run.id)
        except (Exception, asyncio.CancelledError):
            await self.cancel(resource, run.id)
            raise
        return current

    async def _poll(self, resource: Resource, api: replicate.Client, run_id: str) -> Any:
        # The client itself retries GETs on 429/503/504; what is left here is final.
        from replicate.exceptions import ReplicateError

        answer = f"a look at {resource.noun} {run_id}"
        after = "Atelier stopped following it and asked Replicate to cancel it."
        try:
            current = await getattr(api, resource.plural).async_get(run_id)
            check_run(resource, current, answer, after, run_id)
            return current
        except MALFORMED as exc:
            raise malformed(exc, answer, after) from exc
        except ReplicateError as exc:
            raise api_error(exc, f"follow {resource.noun} {run_id}") from exc
        except httpx.HTTPError as exc:
            raise BackendUnavailable(
                f"Lost contact with Replicate while waiting for {resource.noun} {run_id} "
                f"({type(exc).__name__}). Try again in a moment."
            ) from exc

    async def cancel(self, resource: Resource, run_id: str) -> None:
        """Best effort, bounded: a run nobody waits for still runs and bills."""
        api = self.connect().api
        task = asyncio.ensure_future(getattr(api, resource.plural).async_cancel(run_id))
        try:
            await asyncio.wait_for(asyncio.shield(task), CANCEL_TIMEOUT_S)
            log.info(f"replicate_{resource.noun}_cancelled", run=run_id)
        except (Exception, asyncio.CancelledError) as exc:
            # We are already unwinding with the error that matters; do not replace it.
            task.add_done_callback(_quiet)
            log.warning(
                "replicate_cancel_failed",
                resource=resource.noun,
                run=run_id,
                error=type(exc).__name__,
            )

    # -- outputs ------------------------------------------------------------------------

    async def download(self, url: str, label: str, *, max_bytes: int) -> bytes:
        """One output: see `fetch_output`."""
        return await fetch_output(self.connect().files, url, label, max_bytes=max_bytes)


# --------------------------------------------------------------------------- progress


def report(progress: Progress | None, done: int, note: str, total: int = 100) -> None:
    if progress is not None:
        progress.report(done, total, note)


def _report_status(progress: Progress | None, prediction: Prediction) -> None:
    if progress is None:
        return
    if prediction.status == "starting":
        report(progress, 0, "starting (waiting for a Replicate worker)")
        return
    percent = _percent(prediction.logs or "")
    if percent is None:
        report(progress, 0, "processing")
    else:
        report(progress, percent, f"processing {percent}%")


def _percent(logs: str) -> int | None:
    """The last tqdm-style "NN%|" figure in the logs, if the model prints one."""
    found = _PERCENT.findall(logs)
    return min(100, int(found[-1])) if found else None


def stop_if_cancelled(resource: Resource, progress: Progress | None) -> None:
    if progress is not None and progress.cancelled:
        raise BackendFailed(resource.stopped)


async def _sleep(resource: Resource, seconds: float, progress: Progress | None) -> None:
    """Sleep, waking every 0.1 s to notice a stop (`progress.cancel()`) from any thread."""
    if progress is None:
        await asyncio.sleep(seconds)
        return
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while (left := end - loop.time()) > 0:
        stop_if_cancelled(resource, progress)
        await asyncio.sleep(min(left, 0.1))
    stop_if_cancelled(resource, progress)


def _quiet(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
