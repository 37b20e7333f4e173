"""SQLAlchemy 2 models: the project's own schema, changed only through migrations.

Chainlit's entities (users, threads, steps, elements, feedback) keep the column meanings
of its data-layer contract, but with the indexes the sidebar and resume paths need.
`media_refs` says which thread (and so which user) may read a stored file; `images`
records the lineage of every generated image.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, declared_attr, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    identifier: Mapped[str] = mapped_column(String(128), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default="user")
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Thread(Base):
    __tablename__ = "threads"
    __table_args__ = (
        Index("ix_threads_user_created", "user_id", "created_at", "id"),
        Index("ix_threads_user_updated", "user_id", "updated_at", "id"),  # the sidebar
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="CASCADE")
    )
    name: Mapped[str | None] = mapped_column(String(255))
    tags: Mapped[list[Any] | None] = mapped_column(JSON)
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Step(Base):
    __tablename__ = "steps"
    __table_args__ = (Index("ix_steps_thread_order", "thread_id", "created_at", "position"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    thread_id: Mapped[str] = mapped_column(String(36), ForeignKey("threads.id", ondelete="CASCADE"))
    parent_id: Mapped[str | None] = mapped_column(String(36))
    name: Mapped[str] = mapped_column(String(255), default="")
    type: Mapped[str] = mapped_column(String(32))
    input: Mapped[str | None] = mapped_column(Text)
    output: Mapped[str | None] = mapped_column(Text)
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    tags: Mapped[list[Any] | None] = mapped_column(JSON)
    generation: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    modes: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    command: Mapped[str | None] = mapped_column(String(64))
    is_error: Mapped[bool] = mapped_column(Boolean, default=False)
    streaming: Mapped[bool] = mapped_column(Boolean, default=False)
    wait_for_answer: Mapped[bool | None] = mapped_column(Boolean)
    show_input: Mapped[str | None] = mapped_column(String(16))
    language: Mapped[str | None] = mapped_column(String(32))
    default_open: Mapped[bool | None] = mapped_column(Boolean)
    auto_collapse: Mapped[bool | None] = mapped_column(Boolean)
    created_at: Mapped[str | None] = mapped_column(String(40))
    start_at: Mapped[str | None] = mapped_column(String(40))
    end_at: Mapped[str | None] = mapped_column(String(40))
    # Order of first write, a tie-breaker when created_at stamps collide.
    position: Mapped[int] = mapped_column(BigInteger)
    # Order of the latest write applied: an older write arriving late is ignored.
    write_version: Mapped[int] = mapped_column(BigInteger)


class Element(Base):
    __tablename__ = "elements"
    __table_args__ = (Index("ix_elements_thread", "thread_id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    thread_id: Mapped[str] = mapped_column(String(36), ForeignKey("threads.id", ondelete="CASCADE"))
    for_id: Mapped[str | None] = mapped_column(String(36))
    type: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(255), default="")
    display: Mapped[str | None] = mapped_column(String(16))
    size: Mapped[str | None] = mapped_column(String(16))
    language: Mapped[str | None] = mapped_column(String(32))
    page: Mapped[int | None] = mapped_column(Integer)
    mime: Mapped[str | None] = mapped_column(String(128))
    props: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    auto_play: Mapped[bool | None] = mapped_column(Boolean)
    player_config: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    media_key: Mapped[str | None] = mapped_column(String(64))
    external_url: Mapped[str | None] = mapped_column(Text)
    chainlit_key: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Feedback(Base):
    __tablename__ = "feedbacks"
    __table_args__ = (Index("ix_feedbacks_step", "step_id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    step_id: Mapped[str] = mapped_column(String(36))
    thread_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("threads.id", ondelete="CASCADE"), index=True
    )
    value: Mapped[int] = mapped_column(Integer)
    comment: Mapped[str | None] = mapped_column(Text)


class MediaRef(Base):
    """A thread's claim on a stored file: the media route serves a key only to its owners."""

    __tablename__ = "media_refs"

    media_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    thread_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("threads.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str | None] = mapped_column(String(36), index=True)
    mime: Mapped[str] = mapped_column(String(128))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


# Exact money: twelve digits, six after the point (a millionth of a dollar is finer than
# any provider's price). SQLite stores it as REAL; SQLAlchemy rounds reads back to six
# places, which is exact for any sum this project can reach.
MONEY = Numeric(12, 6)


class MediaLineage:
    """The lineage columns every generated file's row has, declared once for all its tables.

    Images and clips are recorded, owned and read the same way (memory/thread_media.py), so
    their shared columns must not drift apart. Only what really differs stays in each
    table: who may be empty (`user_id`), the default mime, whether `prompt_sent` may be
    empty, and each kind's own links and measures. The foreign key and the thread index
    are `declared_attr`s, so each table gets its own, named after it as before.
    """

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)

    @declared_attr
    def thread_id(cls) -> Mapped[str]:
        return mapped_column(String(36), ForeignKey("threads.id", ondelete="CASCADE"))

    message_id: Mapped[str | None] = mapped_column(String(36))
    media_key: Mapped[str] = mapped_column(String(64))
    prompt_typed: Mapped[str] = mapped_column(Text, default="")
    backend: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(128))
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    seed: Mapped[int | None] = mapped_column(BigInteger)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    cost_usd: Mapped[Decimal | None] = mapped_column(MONEY)  # this file's share of its request
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    @declared_attr.directive
    def __table_args__(cls) -> tuple[Any, ...]:
        table = cls.__tablename__
        return (
            Index(f"ix_{table}_thread_created", "thread_id", "created_at"),
            # The gallery: one user's files newest first, paged by (created_at, id).
            Index(f"ix_{table}_user_created", "user_id", "created_at", "id"),
        )


class Image(MediaLineage, Base):
    """Lineage of one generated (or uploaded) image."""

    __tablename__ = "images"

    user_id: Mapped[str | None] = mapped_column(String(36), index=True)
    parent_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("images.id", ondelete="SET NULL")
    )
    mime: Mapped[str] = mapped_column(String(64), default="image/png")
    prompt_sent: Mapped[str] = mapped_column(Text, default="")
    # When its owner kept (starred) it: the Keep button or /keep. NULL: not kept.
    kept_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Copied out of `parameters` when recorded, so the gallery filters on a column:
    # the style it was made in, and the LoRAs it used as "|name1|name2|" in lower case
    # (so `LIKE '%|name|%'` matches one whole name).
    style: Mapped[str | None] = mapped_column(String(64))
    lora_names: Mapped[str | None] = mapped_column(String(512))
    # The batch it was made in (batches.id; no FK: the image outlives its batch's row).
    batch_id: Mapped[str | None] = mapped_column(String(36), index=True)


class ImageEmbedding(Base):
    """One image's CLIP embedding, for likeness search in the gallery.

    `id` is a sequence number, not just a key: an in-memory index reads "rows after N" to
    catch up. `vector` is `dim` float32 values, little-endian, of unit length.
    """

    __tablename__ = "image_embeddings"
    __table_args__ = (
        Index("ix_image_embeddings_user_model_id", "user_id", "model", "id"),
        {"sqlite_autoincrement": True},  # ids never reused: caches read "rows after N"
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    image_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("images.id", ondelete="CASCADE"), unique=True
    )
    user_id: Mapped[str] = mapped_column(String(36), index=True)
    model: Mapped[str] = mapped_column(String(255))
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Curation(Base):
    """One "generate N, score, keep the best" run (or a ranking of existing images)."""

    __tablename__ = "curations"
    __table_args__ = (Index("ix_curations_thread_created", "thread_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    thread_id: Mapped[str] = mapped_column(String(36), ForeignKey("threads.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(String(36), index=True)
    message_id: Mapped[str | None] = mapped_column(String(36))
    prompt: Mapped[str] = mapped_column(Text, default="")
    style: Mapped[str | None] = mapped_column(String(64))
    weights: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    keep: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CurationCandidate(Base):
    """An image's place in a curation: its rank, verdict, and who decided it."""

    __tablename__ = "curation_candidates"

    curation_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("curations.id", ondelete="CASCADE"), primary_key=True
    )
    image_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("images.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    rank: Mapped[int] = mapped_column(Integer)
    combined: Mapped[float] = mapped_column(Float)
    verdict: Mapped[str] = mapped_column(String(16))  # kept | rejected
    reason: Mapped[str] = mapped_column(Text, default="")
    decided_by: Mapped[str] = mapped_column(String(16), default="scores")  # scores | user
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ImageScore(Base):
    """One measured criterion of one image (CLIP agreement or a rule check)."""

    __tablename__ = "image_scores"
    __table_args__ = (Index("ix_image_scores_image_created", "image_id", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    image_id: Mapped[str] = mapped_column(String(36), ForeignKey("images.id", ondelete="CASCADE"))
    curation_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("curations.id", ondelete="CASCADE")
    )
    criterion: Mapped[str] = mapped_column(String(32))
    value: Mapped[float] = mapped_column(Float)
    score: Mapped[float] = mapped_column(Float)
    passed: Mapped[bool | None] = mapped_column(Boolean)
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class LedgerEntry(Base):
    """One paid action: reserved at its estimate before it runs, then settled or released.

    Budgets count settled `actual_usd` plus open reservations' `estimate_usd`; a released
    entry spends nothing but stays as the record of what was tried. No foreign keys on
    purpose: deleting a conversation must not erase (and so refund) what it cost.
    """

    __tablename__ = "ledger_entries"
    __table_args__ = (
        Index("ix_ledger_entries_thread_created", "thread_id", "created_at"),
        Index("ix_ledger_entries_user_created", "user_id", "created_at"),
        Index("ix_ledger_entries_status_instance", "status", "instance_id"),
        Index("ix_ledger_entries_interrupted_told", "interrupted_at", "told_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(String(36))
    thread_id: Mapped[str] = mapped_column(String(36))
    image_id: Mapped[str | None] = mapped_column(String(36))
    message_id: Mapped[str | None] = mapped_column(String(36))
    backend: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(128))
    what: Mapped[str] = mapped_column(String(32))  # image | edit | video | training | ...
    estimate_usd: Mapped[Decimal] = mapped_column(MONEY)
    actual_usd: Mapped[Decimal | None] = mapped_column(MONEY)
    source: Mapped[str | None] = mapped_column(String(16))  # reported | table | estimate
    # reserved | settled | released
    status: Mapped[str] = mapped_column(String(16), default="reserved")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    settled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The app process (app_instances.id) whose action holds it: only that process settles
    # it, and once the process is dead any other releases it (memory/instances.py).
    instance_id: Mapped[str | None] = mapped_column(String(36))
    # Released because its process died mid-action; the user is told once (told_at).
    interrupted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    told_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The batch (batches.id) whose item this paid for: /cost's "Batches" lines.
    batch_id: Mapped[str | None] = mapped_column(String(36), index=True)


class AppInstance(Base):
    """One running app process: its heartbeat says it is alive, so its work is its own.

    Several processes may share one database; each refreshes `heartbeat_at` while it runs
    and deletes its row when it stops. `machine` names the kernel boot and process
    namespace `pid` belongs to, so a process there can check the pid itself.
    """

    __tablename__ = "app_instances"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    host: Mapped[str] = mapped_column(String(255), default="")
    pid: Mapped[int] = mapped_column(Integer)
    machine: Mapped[str | None] = mapped_column(String(128))


class Budget(Base):
    """A spending limit on one conversation or on one user's UTC day.

    The user and the operator each keep their own row for a scope; the smaller limit
    holds. A row may carry only a confirmation threshold (`limit_usd` empty).
    """

    __tablename__ = "budgets"
    __table_args__ = (UniqueConstraint("scope", "scope_id", "set_by"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(16))  # thread | user_day
    scope_id: Mapped[str] = mapped_column(String(36))  # the thread id or the user id
    limit_usd: Mapped[Decimal | None] = mapped_column(MONEY)
    confirm_above_usd: Mapped[Decimal | None] = mapped_column(MONEY)
    set_by: Mapped[str] = mapped_column(String(16))  # user | operator
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Video(MediaLineage, Base):
    """Lineage of one generated clip: its source image, how it was made, what it cost.

    The MP4 and its PNG poster frame live in the media store (`media_key`, `poster_key`),
    claimed for the thread in `media_refs` like images, so only the owner can fetch them.
    """

    __tablename__ = "videos"

    user_id: Mapped[str] = mapped_column(String(36), index=True)
    source_image_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("images.id", ondelete="SET NULL"), index=True
    )
    poster_key: Mapped[str] = mapped_column(String(64))
    mime: Mapped[str] = mapped_column(String(64), default="video/mp4")
    prompt_sent: Mapped[str | None] = mapped_column(Text)
    frames: Mapped[int] = mapped_column(Integer)
    fps: Mapped[float] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float)


class LoraModel(Base):
    """A trained (or training) LoRA: the job's state and, once it succeeds, the registry entry.

    One row for both, because a training is a LoRA in the making: the row is created when
    the user confirms, moves queued → running → succeeded | failed | cancelled |
    interrupted, and keeps its step and losses so a reloaded page and `/train status`
    read progress from here. Names are unique per user, compared without case by the
    store. `files` are paths relative to the LoRA folder.
    """

    __tablename__ = "loras"
    __table_args__ = (
        UniqueConstraint("user_id", "name"),
        Index("ix_loras_thread_created", "thread_id", "created_at"),
        Index("ix_loras_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(String(36))  # as images and videos: no FK
    thread_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("threads.id", ondelete="SET NULL")
    )  # where it was trained; the LoRA outlives the thread
    message_id: Mapped[str | None] = mapped_column(String(36))  # the progress message
    name: Mapped[str] = mapped_column(String(64))
    backend: Mapped[str] = mapped_column(String(16))  # local | replicate
    base_model: Mapped[str] = mapped_column(String(255))
    trigger_word: Mapped[str] = mapped_column(String(64))
    replicate_version: Mapped[str | None] = mapped_column(String(255))
    files: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    dataset: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer, default=0)
    losses: Mapped[list[Any]] = mapped_column(JSON, default=list)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The app process (app_instances.id) running the training: while it lives, another
    # process's start-up leaves the row running (memory/instances.py). None: made before
    # 0011 or by a process without instances; any start-up marks it interrupted.
    instance_id: Mapped[str | None] = mapped_column(String(36))


class AuthSession(Base):
    """One login: the server-side half of a login cookie, so it can be ended early.

    The cookie (Chainlit's JWT) carries this row's id; a cookie is honoured only while
    its row exists, is not revoked, and its user still exists. Bound to the user's id,
    not name: a user removed and added again under the same name starts with none.
    """

    __tablename__ = "auth_sessions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Batch(Base):
    """A list of items generated as one job: confirmed once, run concurrently, resumable.

    `instance_id` names the app process running it (app_instances.id); NULL while no
    process runs it, so another process's start-up adopts a running batch whose process
    died (memory/batches.py). `spec` holds how every item is made (tools/batch_runner.py's
    BatchSpec); `told_at` is when its final summary was shown in its conversation.
    """

    __tablename__ = "batches"
    __table_args__ = (
        Index("ix_batches_user_created", "user_id", "created_at"),
        Index("ix_batches_status_instance", "status", "instance_id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(String(36), ForeignKey("users.id", ondelete="CASCADE"))
    thread_id: Mapped[str] = mapped_column(String(36), ForeignKey("threads.id", ondelete="CASCADE"))
    schedule_id: Mapped[str | None] = mapped_column(String(36), index=True)  # no FK
    message_id: Mapped[str | None] = mapped_column(String(36))  # the progress message's step
    title: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="running")  # running|paused|...
    stop_reason: Mapped[str | None] = mapped_column(Text)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    estimate_usd: Mapped[Decimal] = mapped_column(MONEY)
    item_count: Mapped[int] = mapped_column(Integer)
    instance_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    told_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class BatchItem(Base):
    """One object of a batch: what is sent for it, every attempt, and how it ended."""

    __tablename__ = "batch_items"
    __table_args__ = (
        UniqueConstraint("batch_id", "position"),
        Index("ix_batch_items_batch_status", "batch_id", "status"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    batch_id: Mapped[str] = mapped_column(String(36), ForeignKey("batches.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)  # 0-based, in the user's order
    label: Mapped[str] = mapped_column(String(300))  # the object as the user wrote it
    prompt_sent: Mapped[str] = mapped_column(Text, default="")
    template: Mapped[str | None] = mapped_column(String(64))
    style: Mapped[str | None] = mapped_column(String(64))
    size: Mapped[str | None] = mapped_column(String(16))
    count: Mapped[int] = mapped_column(Integer, default=1)  # images per item
    seed: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|running|...
    attempts: Mapped[list[Any]] = mapped_column(JSON, default=list)
    image_ids: Mapped[list[Any]] = mapped_column(JSON, default=list)  # the final attempt's
    qc_score: Mapped[float | None] = mapped_column(Float)
    qc_passed: Mapped[bool | None] = mapped_column(Boolean)
    cost_usd: Mapped[Decimal] = mapped_column(MONEY, default=Decimal(0))  # all attempts
    reservation_id: Mapped[str | None] = mapped_column(String(36))  # the attempt in flight
    error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Schedule(Base):
    """A recurring batch: when it runs, what it makes, and the next due time.

    Each due time is claimed by one compare-and-set on `next_run_at`, so two app
    processes sharing the database fire it once (memory/schedules.py). Its runs are
    batches in its own conversation (`thread_id`).
    """

    __tablename__ = "schedules"
    __table_args__ = (Index("ix_schedules_status_next_run", "status", "next_run_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    thread_id: Mapped[str] = mapped_column(String(36), ForeignKey("threads.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(120))
    kind: Mapped[str] = mapped_column(String(16))  # cron | interval | daily | weekly
    expression: Mapped[str] = mapped_column(String(120))  # as tools/schedule_times.py says
    timezone: Mapped[str] = mapped_column(String(64))
    prompt: Mapped[str] = mapped_column(Text)  # may contain {theme}
    themes: Mapped[list[Any]] = mapped_column(JSON, default=list)
    theme_index: Mapped[int] = mapped_column(Integer, default=0)
    count: Mapped[int] = mapped_column(Integer)
    style: Mapped[str | None] = mapped_column(String(64))
    backend: Mapped[str | None] = mapped_column(String(200))  # a backend spec
    size: Mapped[str | None] = mapped_column(String(16))
    budget_usd: Mapped[Decimal | None] = mapped_column(MONEY)
    status: Mapped[str] = mapped_column(String(16), default="active")  # active | paused
    missed_policy: Mapped[str | None] = mapped_column(String(16))  # run_once|skip; NULL: setting
    next_run_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_run_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_batch_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiToken(Base):
    """A user's key for the HTTP API (`Authorization: Bearer atl_…`), stored as a hash.

    Only the SHA-256 of the token is kept (the token is 256 random bits, so a fast hash
    is enough and lets a request find its row by one index lookup), plus the first
    characters for the user to recognise it in a list. A request is honoured only while
    the row exists, is not revoked, has not expired and its user still exists
    (memory/api_tokens.py); removing the user deletes the rows with it.
    """

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(64))
    prefix: Mapped[str] = mapped_column(String(16))  # shown in lists: "atl_AbCd1234"
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ApiJob(Base):
    """A job asked for over the jobs API (/api/v1/jobs): an image, batch, video or training.

    Persisted so its state outlives the request and its SSE clients; `instance_id` names
    the process running it, so one whose process died is marked failed, with a message
    saying so, at the next start-up or heartbeat (memory/api_jobs.py).
    """

    __tablename__ = "api_jobs"
    __table_args__ = (
        Index("ix_api_jobs_user_created", "user_id", "created_at"),
        Index("ix_api_jobs_status_instance", "status", "instance_id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(String(36), ForeignKey("users.id", ondelete="CASCADE"))
    token_id: Mapped[str | None] = mapped_column(String(36))  # the token that asked; no FK
    kind: Mapped[str] = mapped_column(String(16))  # image | batch | video | training
    status: Mapped[str] = mapped_column(String(16), default="queued")
    request: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    thread_id: Mapped[str | None] = mapped_column(String(36))  # where its results landed
    progress_done: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int] = mapped_column(Integer, default=0)
    progress_note: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    webhook_status: Mapped[str | None] = mapped_column(String(16))  # pending|delivered|failed
    instance_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ApiWebhookKey(Base):
    """Per user, the nonce their webhook signing secret is derived from (never the secret).

    The secret is HMAC(app secret, user id + nonce): shown once when made, recomputed to
    sign, and replaced by a new nonce when the user asks for a new one.
    """

    __tablename__ = "api_webhook_keys"

    user_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    nonce: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
