"""One batch item's attempts: generate, check, retry with the right seed, recover.

A batch of a hundred crayon drawings is only useful if each one is one centred object
on white: the style's own ranking weights say which rule checks matter to it (a check
weighted above 0), and an attempt passes when none of them fails on any of its images.
CLIP is left out: it ranks candidates against each other and has no pass mark.

Retries: a provider error is tried again with the same seed (the request was fine), a
failed check with a new seed (the picture was not); an error no retry cures (a refused
prompt) fails the item at once. Every attempt is appended to the item's row with its
seed, outcome, reason, images, scores and settled cost.

Crash safety: each attempt names its ledger reservation on the item before anything is
sent, and its images carry the item and attempt in their lineage. An item taken over
after a crash either has that attempt's images stored (the provider was paid: the
interrupted reservation is settled at their cost and the images are checked, not made
again) or not (the reservation stays released and the item runs again).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from core.errors import (
    AtelierError,
    BackendNotConfigured,
    ContentRefused,
    InvalidInput,
    ModelUnavailable,
    NotFound,
    QuotaExhausted,
)
from core.logging_setup import get_logger
from memory.ledger import BudgetExceeded
from memory.models import utcnow
from pipelines.scoring.image_scoring import CHECKS
from tools import image_jobs, spending
from tools.styles import Style

if TYPE_CHECKING:
    from memory.batches import BatchItemRecord, BatchRecord, BatchStore
    from tools.batch_runner import BatchSpec
    from tools.context import ToolContext

log = get_logger(__name__)

SEED_RANGE = 2**31
# Errors that a retry of the same request cannot cure: the item fails at once.
FINAL_ERRORS = (InvalidInput, ContentRefused)
# Errors every item would meet: the batch stops rather than fail them one by one.
FATAL_ERRORS = (QuotaExhausted, BackendNotConfigured, ModelUnavailable)


@dataclass(frozen=True)
class Verdict:
    """What the checks said about one attempt's images.

    `passed` is None when no check applies; `scores` holds each check's score (the
    lowest over the attempt's images, 0..1, 0.5 at the threshold); `reason` names the
    failed checks in the user's words.
    """

    passed: bool | None
    score: float | None = None
    scores: dict[str, float] = field(default_factory=dict)
    reason: str | None = None


def checks_for(style: Style | None) -> list[str]:
    """The rule checks a style weighs (weight above 0), in CHECKS order; none without one."""
    if style is None or not style.weights:
        return []
    return [name for name in CHECKS if style.weights.get(name, 0) > 0]


def validate(checks: Sequence[str]) -> list[str]:
    """The names, refused when one is not a rule check (CLIP has no pass mark)."""
    unknown = [name for name in checks if name not in CHECKS]
    if unknown:
        raise InvalidInput(
            f"Unknown quality check {unknown[0]!r} for a batch. Checks: {', '.join(CHECKS)}."
        )
    return list(dict.fromkeys(checks))


def judge(images: Sequence[bytes], checks: Sequence[str]) -> Verdict:
    """Run `checks` on every image of one attempt. Blocking: call it in a worker thread."""
    if not checks or not images:
        return Verdict(passed=None)
    from pipelines.scoring.quality_rules import run_checks

    scores: dict[str, float] = {}
    reasons: list[str] = []
    for data in images:
        for result in run_checks(data, list(checks)):
            scores[result.name] = min(scores.get(result.name, 1.0), result.score)
            if not result.passed and result.reason not in reasons:
                reasons.append(result.reason)
    return Verdict(
        passed=not reasons,
        score=sum(scores.values()) / len(scores),
        scores={name: round(value, 4) for name, value in scores.items()},
        reason=" ".join(reasons) or None,
    )


class _Turn:
    """One attempt's place in the batch's reserving queue, given up once."""

    def __init__(self, lock: asyncio.Lock) -> None:
        self._lock = lock
        self._held = False

    async def take(self) -> None:
        await self._lock.acquire()
        self._held = True

    def done(self) -> None:
        if self._held:
            self._held = False
            self._lock.release()


@dataclass(frozen=True)
class ItemWork:
    """What every item of one batch shares while it runs in this process."""

    store: BatchStore
    ctx: ToolContext  # the batch's turn (batch_id set) with a port that confirms
    batch: BatchRecord
    spec: BatchSpec
    qc_retries: int
    error_retries: int
    # Told of each attempt as it ends, so a progress view can count items retrying.
    on_attempt: Callable[[BatchItemRecord], None] | None = None
    # Items run side by side but reserve their cost one after another, in the order
    # they started (the lock is FIFO): when the budget runs out it is the later
    # positions that stay pending, never a gap among the first ones.
    reserving: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def run(self, item: BatchItemRecord) -> str:
        """Attempts until one passes or the retries run out; the item's final status."""
        attempts: list[dict[str, Any]] = list(item.attempts)
        if item.reservation_id is not None:  # an attempt was cut short by a crash
            recovered = await self._recover(item, len(attempts) + 1)
            if recovered is not None:
                attempts.append(recovered[0])
                status = await self._record(item, attempts, recovered[1])
                if status is not None:
                    return status
        ending = _ending(attempts, self.qc_retries, self.error_retries)
        if ending is not None:  # adopted with its attempts already used up
            await self.store.update_item(item.id, **self._final(item, attempts, *ending))
            return ending[0]
        while True:
            seed = _next_seed(item, attempts)
            attempt, cost = await self._attempt(item, len(attempts) + 1, seed)
            attempts.append(attempt)
            if self.on_attempt is not None:
                self.on_attempt(replace(item, attempts=list(attempts)))
            status = await self._record(item, attempts, cost)
            if status is not None:
                return status

    async def _record(
        self, item: BatchItemRecord, attempts: list[dict[str, Any]], cost: Decimal
    ) -> str | None:
        """Store the last attempt; when it ends the item, close the item in the same
        write. The item's final status, or None while another attempt is due."""
        ending = _ending(attempts, self.qc_retries, self.error_retries)
        final = self._final(item, attempts, *ending) if ending is not None else {}
        await self.store.add_attempt(item.id, attempts[-1], cost, **final)
        return ending[0] if ending is not None else None

    async def _attempt(
        self, item: BatchItemRecord, n: int, seed: int
    ) -> tuple[dict[str, Any], Decimal]:
        """One paid generation of the item and its checks: (the attempt, its cost)."""
        ctx, started = self.ctx, utcnow()
        lineage = {
            "operation": "batch item",
            "batch_id": self.batch.id,
            "item_id": item.id,
            "attempt": n,
        }
        cost = Decimal(0)
        turn = _Turn(self.reserving)
        try:
            await turn.take()
            planned = await image_jobs.authorised(ctx, self._plan(item, seed))
            priced = image_jobs.estimate(ctx, planned)
            if priced is None:
                turn.done()
                artifact = await image_jobs.run(
                    ctx, planned, prompt_typed=item.label, lineage=lineage, seed_requested=seed
                )
            else:
                async with spending.paid_action(
                    ctx,
                    backend=planned.backend.id,
                    model=planned.request.model,
                    what="batch",
                    estimate=priced,
                    label=f"item {item.position + 1} of the batch {self.batch.title!r}",
                    units=planned.request.n,
                ) as charge:
                    turn.done()
                    if charge.reservation is not None:
                        await self.store.update_item(item.id, reservation_id=charge.reservation.id)
                    artifact = await image_jobs.run(
                        ctx,
                        planned,
                        prompt_typed=item.label,
                        lineage=lineage,
                        seed_requested=seed,
                        charge=charge,
                    )
                cost = charge.actual()[0] or Decimal(0)
        except (BudgetExceeded, *FATAL_ERRORS):
            raise
        except AtelierError as exc:
            final = isinstance(exc, FINAL_ERRORS)
            return _attempt(n, seed, "error", exc.message, started, final=final), Decimal(0)
        finally:
            turn.done()
        ids = [record.id for record, _ in artifact.images]
        datas = [data for _, data in artifact.images]
        return await self._judged(item, n, seed, ids, datas, cost, started)

    async def _judged(
        self,
        item: BatchItemRecord,
        n: int,
        seed: int,
        ids: list[str],
        datas: list[bytes],
        cost: Decimal,
        started: Any,
        note: str | None = None,
    ) -> tuple[dict[str, Any], Decimal]:
        checks = self._checks(item)
        verdict = Verdict(passed=None)
        if checks:
            verdict = await asyncio.to_thread(judge, datas, checks)
        outcome = "qc_failed" if verdict.passed is False else "ok"
        attempt = _attempt(n, seed, outcome, verdict.reason or note, started)
        attempt.update(
            image_ids=ids,
            scores=verdict.scores,
            score=verdict.score,
            qc_passed=verdict.passed,
            cost_usd=str(cost),
        )
        return attempt, cost

    async def _recover(
        self, item: BatchItemRecord, n: int
    ) -> tuple[dict[str, Any], Decimal] | None:
        """The attempt a crash cut short: made (its images are stored) or not.

        Made: the provider was paid, so its reservation (released as interrupted) is
        settled at the images' cost, once, and the images are checked, not made again.
        Not made: the reservation stays released, and the item runs again.
        """
        ledger, user_id = self.ctx.services.ledger, self.batch.user_id
        assert item.reservation_id is not None
        stored = [
            record
            for record in await self.store.stored_images(self.batch.id, item.id)
            if (record.parameters.get("lineage") or {}).get("attempt") == n
        ]
        if not stored:
            if ledger is not None:
                with contextlib.suppress(InvalidInput, NotFound):  # settled: nothing held
                    await ledger.release(item.reservation_id, user_id=user_id)
            await self.store.update_item(item.id, reservation_id=None)
            return None
        cost = sum((record.cost_usd or Decimal(0) for record in stored), Decimal(0))
        if ledger is not None:
            source = (stored[0].parameters.get("cost") or {}).get("source") or "estimate"
            # Settled before the process stopped: it is counted once already.
            with contextlib.suppress(InvalidInput):
                await ledger.settle(
                    item.reservation_id,
                    user_id=user_id,
                    actual_usd=cost,
                    source=source,
                    image_id=stored[0].id,
                )
        images = self.ctx.services.images
        datas = [await asyncio.to_thread(images.read, record) for record in stored]
        asked = stored[0].parameters.get("seed_requested")
        seed = asked if asked is not None else stored[0].seed
        seed = seed if seed is not None else _next_seed(item, [])
        log.info("batch_item_recovered", batch=self.batch.id, position=item.position)
        return await self._judged(
            item,
            n,
            int(seed),
            [r.id for r in stored],
            datas,
            cost,
            stored[0].created_at,
            note="Made before a restart; not generated again.",
        )

    def _plan(self, item: BatchItemRecord, seed: int) -> image_jobs.Plan:
        spec, ctx = self.spec, self.ctx
        style = self._style(item)
        first = image_jobs.plan(ctx, item.prompt_sent, spec.backend_spec(), use_panel=False)
        caps = first.backend.capabilities(first.request.model)
        planned = image_jobs.plan(
            ctx,
            item.prompt_sent,
            spec.backend_spec(),
            use_panel=False,
            n=item.count,
            size=item.size or spec.size,
            quality=spec.quality,
            seed=seed,
            negative_prompt=style.negative if style and caps.negative_prompt else None,
        )
        return image_jobs.checked(planned)

    def _style(self, item: BatchItemRecord) -> Style | None:
        name = item.style or self.spec.style
        return self.ctx.services.styles.get(name) if name else None

    def _checks(self, item: BatchItemRecord) -> list[str]:
        if item.style and item.style != self.spec.style:
            return checks_for(self._style(item))
        return list(self.spec.checks)

    def _final(
        self, item: BatchItemRecord, attempts: list[dict[str, Any]], status: str, error: str | None
    ) -> dict[str, Any]:
        """The item's final fields: the passing attempt's images, or the best failed one's."""
        shown = [a for a in attempts if a.get("image_ids")]
        best = max(shown, key=lambda a: (a["outcome"] == "ok", a.get("score") or 0), default=None)
        return {
            "status": status,
            "error": error,
            "image_ids": best["image_ids"] if best else [],
            "qc_score": best.get("score") if best else None,
            "qc_passed": best.get("qc_passed") if best else None,
            "seed": attempts[-1]["seed"] if attempts else item.seed,
            "reservation_id": None,
        }


def _attempt(
    n: int, seed: int, outcome: str, reason: str | None, started: Any, *, final: bool = False
) -> dict[str, Any]:
    attempt: dict[str, Any] = {
        "n": n,
        "seed": seed,
        "outcome": outcome,
        "reason": reason,
        "image_ids": [],
        "scores": {},
        "cost_usd": "0",
        "started_at": started.isoformat(),
        "ended_at": utcnow().isoformat(),
    }
    if final:
        attempt["final"] = True
    return attempt


def _next_seed(item: BatchItemRecord, attempts: list[dict[str, Any]]) -> int:
    """A provider error retries the same seed; a failed check (or a first try without a
    seed of its own) draws a new one."""
    if attempts and attempts[-1]["outcome"] == "error":
        return int(attempts[-1]["seed"])
    if not attempts and item.seed is not None:
        return int(item.seed)
    return random.randrange(SEED_RANGE)


def _ending(
    attempts: list[dict[str, Any]], qc_retries: int, error_retries: int
) -> tuple[str, str | None] | None:
    """(status, error) once the item is over; None while another attempt is due."""
    if not attempts:
        return None
    last = attempts[-1]
    if last["outcome"] == "ok":
        return "done", None
    failed_checks = [a for a in attempts if a["outcome"] == "qc_failed"]
    errors = [a for a in attempts if a["outcome"] == "error"]
    if last["outcome"] == "error" and (last.get("final") or len(errors) > error_retries):
        tries = f" after {len(errors)} attempts" if len(errors) > 1 else ""
        return "failed", f"Provider error{tries}: {last['reason']}"
    if last["outcome"] == "qc_failed" and len(failed_checks) > qc_retries:
        reasons = " / ".join(dict.fromkeys(a["reason"] for a in failed_checks if a["reason"]))
        return "failed", f"Failed quality checks after {len(failed_checks)} attempts: {reasons}"
    return None
