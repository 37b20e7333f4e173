"""Shared by tests that run tools in-process: the tool world (one ToolContext built one
way), the chat's side of a tool call, the price file for the seeded test backend, and
the ledger read back.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from sqlalchemy import select

from memory.images import ImageStore
from memory.loras import LoraStore
from memory.models import LedgerEntry
from pipelines.images.registry import BackendRegistry
from pipelines.training.lora_training import LocalLoraTrainer
from pipelines.training.registry import TrainingBackendRegistry
from tools.context import (
    GenerationDefaults,
    Port,
    QuietPort,
    Services,
    ToolArtifact,
    ToolContext,
    Turn,
)
from tools.training_jobs import TrainingJobs
from tools.turn_guard import TurnGuard

# The seeded test backend (tests/test_tools.py) priced like a per-image hosted model.
SEEDED_PRICE_FILE = """
[[price]]
backend = "seeded"
model = "toy-v1"
unit = "image"
amount_usd = 0.10
source = "test"
date = "2026-11-22"
"""


def tool_context(
    *,
    user_id: str,
    thread_id: str,
    backends: BackendRegistry,
    images: ImageStore,
    port: Port | None = None,
    defaults: GenerationDefaults | None = None,
    guard: TurnGuard | None = None,
    attached_images: tuple[str, ...] = (),
    attached_zips: tuple[tuple[str, bytes], ...] = (),
    **services: Any,
) -> ToolContext:
    """One tool call's world: `services` are the other Services fields (prices, ledger...);
    no port is a QuietPort (nobody answers, everything is shown at the end)."""
    return ToolContext(
        services=Services(backends=backends, images=images, **services),
        turn=Turn(
            user_id=user_id,
            thread_id=thread_id,
            defaults=defaults or GenerationDefaults(),
            attached_images=attached_images,
            attached_zips=attached_zips,
            guard=guard,
        ),
        port=port or QuietPort(),
    )


def training_jobs(
    loras: LoraStore,
    lora_dir: Path,
    *,
    local: Any = None,
    replicate: Any = None,
    **options: Any,
) -> TrainingJobs:
    """The trainings a tool world runs: locally on `local` (the local image backend, whose
    device queue training shares, as the app builds it) and/or on a Replicate trainer."""
    trainers: dict[str, Any] = {}
    if local is not None:
        trainers["local"] = LocalLoraTrainer.beside(local)
    if replicate is not None:
        trainers["replicate"] = replicate
    return TrainingJobs(loras, lora_dir, backends=TrainingBackendRegistry(trainers), **options)


def with_services(ctx: ToolContext, **changes: Any) -> ToolContext:
    """The same call on a server configured differently (prices, limits, backends...)."""
    return replace(ctx, services=replace(ctx.services, **changes))


def with_turn(ctx: ToolContext, **changes: Any) -> ToolContext:
    """The same conversation in another message (guard, attachments, step...)."""
    return replace(ctx, turn=replace(ctx.turn, **changes))


class ChatRecorder(QuietPort):
    """The chat's side: what was announced, what was asked, and the answer to give.

    With `shows=True` it also stands for a live chat that shows artifacts mid-call
    (recorded in `shown`); otherwise they come with the call's result, as for a script.
    """

    def __init__(self, answer: bool = True, *, shows: bool = False) -> None:
        self.announced: list[str] = []
        self.asked: list[str] = []
        self.shown: list[ToolArtifact] = []
        self.answer = answer
        self.shows = shows

    async def announce(self, text: str) -> None:
        self.announced.append(text)

    async def confirm(self, question: str) -> bool:
        self.asked.append(question)
        return self.answer

    async def show(self, artifact: ToolArtifact) -> bool:
        if not self.shows:
            return False
        self.shown.append(artifact)
        return True


async def ledger_entries(db: Any) -> list[Any]:
    """Every ledger row, oldest first, read back from the database."""
    async with db.connect() as conn:
        return (await conn.execute(select(LedgerEntry).order_by(LedgerEntry.created_at))).all()
