"""The app's side of the job board: fair, model-aware hand-out of local GPU jobs.

Celery queues are first come, first served and know nothing about users or about which
worker holds which model. So the app never sends a job to a shared Celery queue: jobs
wait on this board, in one FIFO list per owner, with a ring of owners. A dispatch pass
walks the ring round-robin and hands each owner's head job to a free live worker, then
sends the Celery task `atelier.run_job(job_id, attempt)` to that worker's own queue
(through the `send` callback, so this module does not import Celery).

Routing (the documented rule): among free live workers whose kinds include the job's
kind, prefer one that already holds the job's model; otherwise the free capable worker
with the most free memory. A job is not held back waiting for a busy worker that has
its model. An owner whose head job no free worker can take is skipped in this pass and
keeps its place in the ring.

Every app process runs a dispatcher loop; a Redis lock (SET NX PX) lets one pass run at
a time, and each step that moves a job is a compare-and-set script
(`board_scripts`), so two processes can never hand one job out twice.

A worker whose heartbeat lapsed is dead: its job goes back to the front of its owner's
list for one more attempt, then fails with a sentence the user can act on.

The app process that awaits a job is the one that stores its result and settles its
cost, so a job whose waiter died (a replica killed) would run to the end for nobody.
An awaited job is therefore enqueued with a waiter lease (`lease:<id>`, `lease_s`, 10 s)
that its waiter renews every `lease_s / 4`; each pass stops, as Stop does, every queued
or running job whose lease lapsed (one script for all of them, compare-and-set against a
renewal). Jobs enqueued without `awaited` have no lease and are never stopped for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from uuid import uuid4

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from core.logging_setup import get_logger
from pipelines.remote.board_keys import ACTIVE_STATES, DEFAULT_PREFIX, FINAL_STATES, BoardKeys
from pipelines.remote.board_scripts import register
from pipelines.remote.worker_info import WorkerInfo

log = get_logger(__name__)

Send = Callable[[str, str, int], Awaitable[None]]  # (worker_name, job_id, attempt)

COUNTERS = (
    "dispatched", "succeeded", "failed", "cancelled", "retried",
    "wait_seconds_sum", "wait_count", "run_seconds_sum", "run_count",
)  # fmt: skip
DEAD_TWICE = "The worker running this job stopped twice; it was not finished. Try again."
WAITER_GONE = "the app process waiting for it stopped"
LEASE_S = 10.0  # a waiter renews 4 times a lease: a stall of seconds does not lose the job
_LOCK_MS = 10_000  # a pass takes milliseconds; the lock only outlives a crashed holder
_LOCK_WAIT_S = 3.0
_RECHECK_S = 1.0  # events(): pub/sub can drop messages, so the hash is re-read this often


@dataclass(frozen=True)
class JobStatus:
    id: str
    state: str
    attempt: int
    worker: str | None
    ahead: int | None
    message: str | None
    owner: str
    kind: str
    model: str


@dataclass(frozen=True)
class BoardSnapshot:
    queued_by_kind: dict[str, int]
    queued_by_owner: dict[str, int]
    running: int  # dispatched or running
    workers: list[WorkerInfo]  # live ones, busy_job filled in
    counters: dict[str, float]


def pick_worker(free: Sequence[WorkerInfo], kind: str, model: str) -> WorkerInfo | None:
    """The routing rule: a capable worker holding the model, else the most free memory."""
    capable = [w for w in free if kind in w.kinds]
    holding = [w for w in capable if model and model in w.loaded_models]
    pool = holding or capable
    if not pool:
        return None
    return max(pool, key=lambda w: (w.memory_free_mb or -1, w.name))


def queue_positions(ring: Sequence[str], queues: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """For every queued job, how many queued jobs round-robin over `ring` starts first.

    The i-th job of the owner at ring place r waits for its own i earlier jobs, and for
    i jobs of every other owner (i + 1 of those before it in the ring), as far as they
    have that many.
    """
    lengths = [len(queues.get(owner, ())) for owner in ring]
    ahead: dict[str, int] = {}
    for r, owner in enumerate(ring):
        for i, job_id in enumerate(queues.get(owner, ())):
            others = sum(
                min(length, i + (1 if o < r else 0)) for o, length in enumerate(lengths) if o != r
            )
            ahead[job_id] = i + others
    return ahead


@dataclass
class _ActiveJob:
    id: str
    state: str | None
    worker: str
    attempt: str
    incarnation: str


@dataclass
class _View:
    """One read of the board, taken at the start of a pass."""

    ring: list[str]
    queues: dict[str, list[str]]
    live: dict[str, WorkerInfo]  # busy_job filled in
    active: list[_ActiveJob]
    gone_workers: list[str] = field(default_factory=list)


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else value


def _worker(name: str, info_raw: bytes | None, busy_raw: bytes | None) -> WorkerInfo | None:
    """A live worker's heartbeat, or None (lapsed, or written by an incompatible version)."""
    if info_raw is None:
        return None
    try:
        info = WorkerInfo.from_json(info_raw)
    except (ValueError, TypeError) as exc:
        log.warning("worker_info_unreadable", worker=name, error=type(exc).__name__)
        return None
    return info.with_busy(_text(busy_raw))


class JobBoard:
    """Enqueue, dispatch, follow and cancel jobs (one per app process)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        send: Send,
        *,
        prefix: str = DEFAULT_PREFIX,
        max_attempts: int = 2,
        lease_s: float = LEASE_S,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts!r}")
        if lease_s <= 0:
            raise ValueError(f"lease_s must be positive, got {lease_s!r}")
        self.lease_s = lease_s
        self.redis = redis
        self.send = send
        self.prefix = prefix
        self.keys = BoardKeys(prefix)
        self.max_attempts = max_attempts
        self.scripts = register(redis)
        self._wake = asyncio.Event()

    # ------------------------------------------------------------------ jobs

    async def enqueue(
        self, *, owner: str, kind: str, model: str, payload: bytes, awaited: bool = False
    ) -> str:
        """Queue a job at the end of its owner's list; returns its id.

        `awaited`: the caller waits for the result and keeps the job's lease (`renew`);
        once it stops renewing for `lease_s`, a dispatch pass stops the job.
        """
        if not owner or not kind:
            raise ValueError("A job needs an owner and a kind.")
        job_id = uuid4().hex
        lease_ms = self._lease_ms if awaited else 0
        await self.scripts.enqueue(
            args=[self.prefix, job_id, owner, kind, model, payload, lease_ms]
        )
        self._wake.set()
        log.info("job_enqueued", job_id=job_id, kind=kind, model=model)
        return job_id

    @property
    def _lease_ms(self) -> int:
        return max(1, int(self.lease_s * 1000))

    async def renew(self, job_id: str) -> bool:
        """Extend the waiter's lease; False once the job was stopped or ended."""
        return bool(await self.scripts.renew(args=[self.prefix, job_id, self._lease_ms]))

    async def cancel(self, job_id: str) -> str:
        """'cancelled' (was queued), 'cancelling' (a worker holds it), a final state, or
        'unknown' (not on the board)."""
        outcome = _text(await self.scripts.cancel(args=[self.prefix, job_id])) or "unknown"
        if outcome == "cancelled":
            self._wake.set()  # the positions behind it moved
        log.info("job_cancel", job_id=job_id, outcome=outcome)
        return outcome

    async def status(self, job_id: str) -> JobStatus | None:
        fields = ["state", "attempt", "worker", "ahead", "message", "owner", "kind", "model"]
        values = [_text(v) for v in await self.redis.hmget(self.keys.job(job_id), fields)]
        state, attempt, worker, ahead, message, owner, kind, model = values
        if state is None:
            return None
        return JobStatus(
            id=job_id,
            state=state,
            attempt=int(attempt or 1),
            worker=worker or None,
            ahead=int(ahead) if ahead not in (None, "") and state == "queued" else None,
            message=message or None,
            owner=owner or "",
            kind=kind or "",
            model=model or "",
        )

    async def result(self, job_id: str) -> tuple[str, bytes | None, bytes | None, str | None]:
        """(state, result, error, message); state 'unknown' when the job is not on the board."""
        state, result, error, message = await self.redis.hmget(
            self.keys.job(job_id), ["state", "result", "error", "message"]
        )
        return (_text(state) or "unknown", result or None, error or None, _text(message) or None)

    async def forget(self, job_id: str) -> None:
        """Drop a finished job's hash once its result was taken (a live job is kept)."""
        await self.scripts.forget(args=[self.prefix, job_id])

    async def events(self, job_id: str) -> AsyncIterator[dict]:
        """The job's events, ending with a final {"type": "state"} event.

        Subscribes before reading the hash, so an event published in between is not
        lost; re-reads the hash every second because pub/sub may drop messages. A job
        not on the board ends the stream with state 'unknown'.
        """
        loop = asyncio.get_running_loop()
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(self.keys.events(job_id))
        try:
            checked = -_RECHECK_S
            while True:
                if loop.time() - checked >= _RECHECK_S:
                    checked = loop.time()
                    state = _text(await self.redis.hget(self.keys.job(job_id), "state"))
                    if state is None or state in FINAL_STATES:
                        yield {"type": "state", "state": state or "unknown"}
                        return
                wait = max(0.01, _RECHECK_S - (loop.time() - checked))
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=wait)
                if message is None or message.get("type") != "message":
                    continue
                event = json.loads(message["data"])
                yield event
                if event.get("type") == "state" and event.get("state") in FINAL_STATES:
                    return
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.unsubscribe()
            await pubsub.aclose()

    # ------------------------------------------------------------- dispatch

    async def dispatch(self) -> int:
        """One pass (waits for another process's pass to end); returns jobs handed out."""
        handed = await self._dispatch_once(wait=True)
        return handed or 0

    async def run_dispatcher(self, stop: asyncio.Event, *, tick_s: float = 0.5) -> None:
        """Dispatch on every kick (a worker free, a job settled), local enqueue, and tick."""
        pubsub = self.redis.pubsub()
        listener = asyncio.create_task(self._listen(pubsub, stop))
        try:
            while not stop.is_set():
                self._wake.clear()
                delay = tick_s
                try:
                    if await self._dispatch_once(wait=False) is None:
                        delay = min(tick_s, 0.05)  # another pass ran; look again soon
                except (RedisError, OSError) as exc:
                    log.warning("dispatch_failed", error=f"{type(exc).__name__}: {exc}")
                await self._doze(stop, delay)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
            if pubsub.subscribed:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.unsubscribe()
            await pubsub.aclose()

    async def _listen(self, pubsub: aioredis.client.PubSub, stop: asyncio.Event) -> None:
        """Wake the loop on every kick; Redis being away for a while only delays that."""
        while not stop.is_set():
            try:
                if not pubsub.subscribed:
                    await pubsub.subscribe(self.keys.kick)
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            except (RedisError, OSError) as exc:
                log.warning("kick_listen_failed", error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(1.0)
                continue
            if message is not None:
                self._wake.set()

    async def _doze(self, stop: asyncio.Event, delay: float) -> None:
        if self._wake.is_set() or stop.is_set():
            return
        waiters = [asyncio.create_task(self._wake.wait()), asyncio.create_task(stop.wait())]
        try:
            await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waiters:
                task.cancel()

    async def _dispatch_once(self, *, wait: bool) -> int | None:
        """A pass under the lock; None when another process holds it (and wait is False)."""
        token = secrets.token_hex(8)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _LOCK_WAIT_S
        while not await self.redis.set(self.keys.lock, token, nx=True, px=_LOCK_MS):
            if not wait or loop.time() > deadline:
                return None
            await asyncio.sleep(0.02)
        try:
            return await self._pass()
        finally:
            with contextlib.suppress(RedisError, OSError):
                await self.scripts.release_lock(keys=[self.keys.lock], args=[token])

    async def _pass(self) -> int:
        view = await self._read()
        stopped = await self._stop_abandoned(view)
        if await self._recover(view) or stopped:
            view = await self._read()
        handed = 0
        free = [w for w in view.live.values() if w.busy_job is None]
        if free and any(view.queues.values()):
            handed, as_planned = await self._hand_out(view.ring, view.queues, free)
            if not as_planned:  # the board moved under this pass: read what it is now
                view = await self._read()
        ring, queues = view.ring, view.queues
        empty = [owner for owner in ring if not queues.get(owner)]
        if empty:
            async with self.redis.pipeline(transaction=False) as pipe:
                for owner in empty:
                    await self.scripts.tidy(args=[self.prefix, owner], client=pipe)
                await pipe.execute()
            ring = [owner for owner in ring if queues.get(owner)]
        positions = queue_positions(ring, queues)
        if positions:
            args: list[str | int] = [self.prefix]
            for job_id, ahead in positions.items():
                args += [job_id, ahead]
            await self.scripts.positions(args=args)
        return handed

    async def _hand_out(
        self, ring: list[str], queues: dict[str, list[str]], free: list[WorkerInfo]
    ) -> tuple[int, bool]:
        """Plan round-robin hand-outs, claim them in one round trip, send the tasks.

        Updates `ring` and `queues` as the claims move them; returns (jobs handed out,
        whether everything went as planned).
        """
        depth = len(free)  # no owner can get more jobs than that in one pass
        heads = [job_id for owner in ring for job_id in queues.get(owner, [])[:depth]]
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in heads:
                pipe.hmget(self.keys.job(job_id), ["kind", "model"])
            rows = await pipe.execute()
        meta = {
            job_id: (_text(kind) or "", _text(model) or "")
            for job_id, (kind, model) in zip(heads, rows, strict=True)
        }
        plan = self._plan(ring, queues, list(free), meta)
        if not plan:
            return 0, True
        async with self.redis.pipeline(transaction=False) as pipe:
            for owner, job_id, worker in plan:
                args = [self.prefix, job_id, owner, worker.name, worker.incarnation]
                await self.scripts.claim(args=args, client=pipe)
            attempts = await pipe.execute()
        # A claim fails when the job was cancelled, or its worker went, since the read.
        claimed = [
            (worker.name, job_id, int(attempt))
            for (_owner, job_id, worker), attempt in zip(plan, attempts, strict=True)
            if attempt
        ]
        sent = await asyncio.gather(*(self._send(*claim) for claim in claimed))
        return sum(sent), len(claimed) == len(plan) and all(sent)

    @staticmethod
    def _plan(
        ring: list[str],
        queues: dict[str, list[str]],
        free: list[WorkerInfo],
        meta: Mapping[str, tuple[str, str]],
    ) -> list[tuple[str, str, WorkerInfo]]:
        """Walk the ring until no free worker can take any owner's head job.

        An owner whose head job no free worker can take is skipped for the rest of the
        pass and keeps its place in the ring; a served owner goes to the ring's end.
        """
        plan: list[tuple[str, str, WorkerInfo]] = []
        skipped: set[str] = set()
        moved = True
        while free and moved:
            moved = False
            for owner in list(ring):
                queue = queues.get(owner)
                if not free or owner in skipped or not queue:
                    continue
                kind, model = meta.get(queue[0], ("", ""))
                worker = pick_worker(free, kind, model)
                if worker is None:
                    skipped.add(owner)
                    continue
                plan.append((owner, queue.pop(0), worker))
                free.remove(worker)
                ring.remove(owner)
                if queue:
                    ring.append(owner)
                moved = True
        return plan

    async def _send(self, worker: str, job_id: str, attempt: int) -> bool:
        try:
            await self.send(worker, job_id, attempt)
        except Exception as exc:  # any broker failure: undo the claim
            log.warning(
                "job_send_failed",
                job_id=job_id,
                worker=worker,
                error=f"{type(exc).__name__}: {exc}",
            )
            await self.scripts.unclaim(args=[self.prefix, job_id, worker, attempt])
            return False
        log.info("job_dispatched", job_id=job_id, worker=worker, attempt=attempt)
        return True

    async def _read(self) -> _View:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.smembers(self.keys.workers)
            pipe.lrange(self.keys.ring, 0, -1)
            pipe.smembers(self.keys.active)
            names_raw, ring_raw, active_raw = await pipe.execute()
        names = sorted(_text(n) or "" for n in names_raw)
        ring = [_text(o) or "" for o in ring_raw]
        active_ids = sorted(_text(i) or "" for i in active_raw)
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.get(self.keys.worker(name))
                pipe.get(self.keys.busy(name))
            for job_id in active_ids:
                pipe.hmget(self.keys.job(job_id), ["state", "worker", "attempt", "incarnation"])
            for owner in ring:
                pipe.lrange(self.keys.queue(owner), 0, -1)
            rows = await pipe.execute()
        live: dict[str, WorkerInfo] = {}
        gone: list[str] = []
        for i, name in enumerate(names):
            info = _worker(name, rows[2 * i], rows[2 * i + 1])
            if info is None:
                gone.append(name)
            else:
                live[name] = info
        rows = rows[2 * len(names) :]
        active = [
            _ActiveJob(job_id, _text(s), _text(w) or "", _text(a) or "", _text(inc) or "")
            for job_id, (s, w, a, inc) in zip(active_ids, rows[: len(active_ids)], strict=True)
        ]
        rows = rows[len(active_ids) :]
        queues = {
            owner: [_text(j) or "" for j in ids] for owner, ids in zip(ring, rows, strict=True)
        }
        return _View(ring=ring, queues=queues, live=live, active=active, gone_workers=gone)

    async def _stop_abandoned(self, view: _View) -> bool:
        """Stop the jobs whose waiter's lease lapsed (one round trip); True if any."""
        ids = [job_id for queue in view.queues.values() for job_id in queue]
        ids += [job.id for job in view.active if job.state in ACTIVE_STATES]
        if not ids:
            return False
        stopped = await self.scripts.abandoned(args=[self.prefix, WAITER_GONE, *ids])
        for job_id in stopped:
            log.warning("job_waiter_gone", job_id=_text(job_id))
        return bool(stopped)

    async def _recover(self, view: _View) -> bool:
        """Retry or fail the jobs of dead (or restarted) workers; True if any moved."""
        moved = False
        if view.gone_workers:
            await self.redis.srem(self.keys.workers, *view.gone_workers)
        stray = [job.id for job in view.active if job.state not in ACTIVE_STATES]
        if stray:  # settled or expired without leaving the set (should not happen)
            await self.redis.srem(self.keys.active, *stray)
        for job in view.active:
            if job.state not in ACTIVE_STATES:
                continue
            info = view.live.get(job.worker)
            if info is not None and (not job.incarnation or info.incarnation == job.incarnation):
                continue
            force = "1" if info is not None else "0"  # alive, but a new process by that name
            outcome = _text(await self.scripts.recover(args=[
                self.prefix, job.id, job.worker, job.attempt, self.max_attempts, force, DEAD_TWICE,
            ]))  # fmt: skip
            if outcome:
                moved = True
                log.warning(
                    "job_worker_lost",
                    job_id=job.id,
                    worker=job.worker,
                    attempt=job.attempt,
                    outcome=outcome,
                )
        return moved

    # ------------------------------------------------------------- reading

    async def live_workers(self) -> list[WorkerInfo]:
        """Workers whose heartbeat is current, with the job each was handed."""
        names = sorted(_text(n) or "" for n in await self.redis.smembers(self.keys.workers))
        if not names:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.get(self.keys.worker(name))
                pipe.get(self.keys.busy(name))
            rows = await pipe.execute()
        workers = [_worker(name, rows[2 * i], rows[2 * i + 1]) for i, name in enumerate(names)]
        return [info for info in workers if info is not None]

    async def snapshot(self) -> BoardSnapshot:
        """Queue depths, running jobs, live workers and counters (for /metrics and doctor)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.lrange(self.keys.ring, 0, -1)
            pipe.scard(self.keys.active)
            pipe.hgetall(self.keys.stats)
            ring_raw, running, stats_raw = await pipe.execute()
        ring = [_text(o) or "" for o in ring_raw]
        async with self.redis.pipeline(transaction=False) as pipe:
            for owner in ring:
                pipe.lrange(self.keys.queue(owner), 0, -1)
            queues = dict(zip(ring, await pipe.execute(), strict=True))
        queued_ids = [_text(j) or "" for ids in queues.values() for j in ids]
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in queued_ids:
                pipe.hget(self.keys.job(job_id), "kind")
            kinds = await pipe.execute()
        by_kind: dict[str, int] = {}
        for kind in kinds:
            if kind is not None:
                by_kind[_text(kind) or ""] = by_kind.get(_text(kind) or "", 0) + 1
        counters = {name: 0.0 for name in COUNTERS}
        for key, value in stats_raw.items():
            counters[_text(key) or ""] = float(value)
        return BoardSnapshot(
            queued_by_kind=by_kind,
            queued_by_owner={owner: len(ids) for owner, ids in queues.items() if ids},
            running=int(running),
            workers=await self.live_workers(),
            counters=counters,
        )
