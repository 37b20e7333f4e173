"""Gallery test data made through the real stores: a generate → edit → variations → fork →
animate → train chain recorded as the tools record it (parameters["lineage"], parent ids,
the clip's source image, the LoRA's dataset manifest naming its images by id)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from memory.curations import CandidateRecord, CurationStore, StoredScore
from memory.db import session_factory, write_session
from memory.images import ImageRecord, ImageStore, NewImage
from memory.loras import LoraRecord, LoraStore, NewLora
from memory.media_store import MediaStore
from memory.models import User
from memory.users import Account
from memory.videos import NewVideo, VideoRecord, VideoStore
from tests.lora_fixtures import picture


@dataclass
class Chain:
    user: Account
    thread_id: str
    generated: ImageRecord
    edited: ImageRecord
    varied: list[ImageRecord]
    forked: ImageRecord
    clip: VideoRecord
    lora: LoraRecord


def new_image(
    index: int,
    prompt: str,
    *,
    parent: ImageRecord | None = None,
    lineage: dict[str, Any] | None = None,
    cost: str | None = "0.040000",
) -> NewImage:
    parameters: dict[str, Any] = {
        "request": {"size": "32x32", "quality": "low", "negative_prompt": "=cmd|' /C calc'!A0"},
        "usage": {"images": 1},
        "seed_requested": None,
        "seed_honoured": True,
    }
    if lineage:
        parameters["lineage"] = lineage
    if cost:
        parameters["cost"] = {"usd": cost, "source": "table", "unpriced": False, "lines": []}
    return NewImage(
        data=picture(index),
        mime="image/png",
        width=32,
        height=32,
        prompt_typed=prompt,
        prompt_sent=f"{prompt}, detailed",
        backend="openai",
        model="gpt-image-1.5",
        parameters=parameters,
        seed=1000 + index,
        parent_id=parent.id if parent else None,
        cost_usd=Decimal(cost) if cost else None,
        duration_ms=1200 + index,
    )


async def account(engine: Any, name: str) -> Account:
    """A user row as `UserStore.add` makes it, without a password (hashing one is slow)."""
    user = User(identifier=name, password_hash=None, role="user", meta={})
    async with write_session(session_factory(engine)) as session:
        session.add(user)
    return Account(id=user.id, identifier=user.identifier, role=user.role)


async def chain(engine: Any, media: MediaStore, user: Account) -> Chain:
    """The chain of the issue, in one thread of `user`."""
    images, videos, loras = ImageStore(engine, media), VideoStore(engine, media), LoraStore(engine)
    thread_id = str(uuid.uuid4())

    async def image(index: int, prompt: str, **kw: Any) -> ImageRecord:
        record, _ = await images.record(thread_id, user.id, new_image(index, prompt, **kw))
        return record

    generated = await image(1, "a fox in the snow")
    edited = await image(
        2,
        "make the sky red",
        parent=generated,
        lineage={"operation": "edit", "source": generated.id, "references": [], "mask": None},
    )
    varied = [
        await image(3 + i, "make the sky red", parent=edited, lineage=_from("variations", edited))
        for i in range(2)
    ]
    forked = await image(
        5,
        "a fox at night",
        parent=varied[0],
        lineage={**_from("fork", varied[0]), "changed": {"prompt": "a fox at night"}},
    )
    clip = await videos.record(
        thread_id,
        user.id,
        NewVideo(
            data=b"\x00\x00\x00\x18ftypmp42 not really a clip " + uuid.uuid4().bytes,
            poster=picture(6),
            width=32,
            height=32,
            frames=8,
            fps=8.0,
            seconds=1.0,
            prompt_typed="the fox turns its head",
            prompt_sent="the fox turns its head",
            backend="replicate",
            model="wan-video/wan-2.2-i2v-fast",
            parameters={"request": {"seconds": 1, "fps": 8}},
            source_image_id=forked.id,
            cost_usd=Decimal("0.100000"),
        ),
    )
    lora = await loras.create(
        user.id,
        NewLora(
            name="night-fox",
            backend="local",
            base_model="tiny-sd",
            trigger_word="TOK",
            total_steps=60,
            thread_id=thread_id,
            dataset={  # as tools/train_lora.py `_manifest` records it
                "trigger_word": "TOK",
                "resolution": 32,
                "dataset_hash": "0" * 64,
                "folder": "night-fox",
                "images": [
                    _dataset_entry(1, forked.id, "generated"),
                    _dataset_entry(2, varied[1].id, "generated"),
                    _dataset_entry(3, "<upload>:extra.png", "uploaded"),
                ],
            },
            parameters={"steps": 60, "rank": 4},
        ),
    )
    lora = await loras.update(lora.id, user.id, status="succeeded")
    return Chain(user, thread_id, generated, edited, varied, forked, clip, lora)


async def curation(
    engine: Any, thread_id: str, user: Account, won: ImageRecord, lost: ImageRecord
) -> str:
    """A curation that ranked `won` first (kept) and `lost` second (rejected)."""
    score = [StoredScore("clip", 0.3, 0.8, True, "")]
    record = await CurationStore(engine).record(
        thread_id=thread_id,
        user_id=user.id,
        message_id=None,
        prompt="a fox, the best of two",
        style="crayon",
        weights={"clip": 1.0},
        keep=1,
        candidates=[
            CandidateRecord(won.id, 1, 0.8, "kept", "sharpest", "scores", score),
            CandidateRecord(lost.id, 2, 0.4, "rejected", "blurred", "scores", score),
        ],
    )
    return record.id


def _from(operation: str, source: ImageRecord) -> dict[str, Any]:
    return {"operation": operation, "source": source.id}


def _dataset_entry(index: int, source_id: str, origin: str) -> dict[str, Any]:
    return {
        "file": f"{index:04d}.png",
        "origin": origin,
        "licence": None,
        "source_id": source_id,
        "caption": "a fox",
        "sha256": f"{index:064x}",
    }
