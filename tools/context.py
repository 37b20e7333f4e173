"""What a tool call may touch, passed explicitly rather than found in globals.

Three parts that live for different lengths of time: the process's `Services` (built
once), the message's `Turn`, and the `Port` to whoever asked (the chat, a script, an
HTTP handler). A tool runs anywhere a ToolContext can be built.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Protocol

from core.errors import InvalidInput
from memory.curations import CurationStore
from memory.gallery import Gallery
from memory.images import ImageRecord, ImageStore
from memory.ledger import Ledger, OperatorLimits
from memory.videos import VideoRecord, VideoStore
from pipelines.catalogue.pricing import PriceTable
from pipelines.images.registry import BackendRegistry
from pipelines.progress import Progress
from pipelines.video.video_registry import VideoBackendRegistry
from tools.styles import StyleLibrary

if TYPE_CHECKING:
    from memory.schedules import ScheduleStore
    from pipelines.scoring.clip_jobs import RemoteClip
    from pipelines.scoring.likeness import Likeness
    from tools.batch_runner import BatchRunner
    from tools.batch_setup import BatchSetup
    from tools.training_jobs import TrainingJobs
    from tools.turn_guard import TurnGuard

# (instructions, prompt) -> rewritten prompt; None when no chat model is configured.
PromptRewriter = Callable[[str, str], Awaitable[str]]


@dataclass
class GenerationDefaults:
    """A conversation's settings panel: what a request uses unless the call says otherwise.

    `backend` is a spec ("replicate" or "replicate:owner/name"); `model` overrides the
    spec's model. Unset fields fall back to the model's own defaults.
    """

    backend: str | None = None
    model: str | None = None
    size: str | None = None
    quality: str | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> GenerationDefaults:
        """Lenient on read: a stored panel from an older version never breaks a resume."""
        data = data or {}
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Services:
    """What the process builds once and every tool call shares: stores, backends, prices.

    Optional ones are features the operator left off: a tool that needs one refuses
    with a message that says so (no curation store, no video store, no trainings).
    """

    backends: BackendRegistry
    images: ImageStore
    styles: StyleLibrary = field(default_factory=StyleLibrary.builtin)
    rewrite: PromptRewriter | None = None  # None: no chat model to refine prompts
    curations: CurationStore | None = None
    clip_model: str | None = None  # None: text–image agreement is not scored
    clip_remote: RemoteClip | None = None  # set: CLIP scores come from workers (a broker)
    prices: PriceTable | None = None  # None: costs are not recorded
    ledger: Ledger | None = None  # None: no budgets are kept (see tools/spending.py)
    operator_limits: OperatorLimits | None = None
    videos: VideoStore | None = None  # None: video tools refuse (no store to keep clips)
    video_backends: VideoBackendRegistry | None = None
    trainings: TrainingJobs | None = None  # None: LoRA training tools refuse
    gallery: Gallery | None = None  # None: find_images refuses (no gallery to search)
    likeness: Likeness | None = None  # None or unavailable: find_images searches words only
    schedules: ScheduleStore | None = None  # None: the schedule tools refuse
    batches: BatchRunner | None = None  # None: the batch tools refuse
    batch_setup: BatchSetup | None = None  # None: built-in templates, no progress display

    def curation_store(self) -> CurationStore:
        if self.curations is None:
            raise RuntimeError("Services.curations is not set: build it with a CurationStore.")
        return self.curations


@dataclass(frozen=True)
class Turn:
    """Who asks, in which conversation, with what attached: one message's facts."""

    user_id: str
    thread_id: str
    message_id: str | None = None  # the step the results hang under
    defaults: GenerationDefaults = field(default_factory=GenerationDefaults)
    # What the user attached to this message: a training started now trains on them.
    attached_images: tuple[str, ...] = ()
    attached_zips: tuple[tuple[str, bytes], ...] = ()  # (file name, bytes)
    attached_files: tuple[tuple[str, bytes], ...] = ()  # .txt/.csv lists: (file name, bytes)
    # The message's tool-call count and running spend; None: each paid action alone.
    guard: TurnGuard | None = None
    batch_id: str | None = None  # set for a batch item's work: its charges and images say so


class Port(Protocol):
    """How a tool talks to the person while it runs; the chat is one port, a script another."""

    async def confirm(self, question: str) -> bool:
        """True to go ahead with a paid action; False (or no answer) cancels it."""
        ...

    async def announce(self, text: str) -> None:
        """Show the estimate before a paid action runs."""
        ...

    async def show(self, artifact: ToolArtifact) -> bool:
        """Show an artifact at once, mid-call; False: the caller keeps it for the end."""
        ...

    def progress(self, label: str) -> Progress | None:
        """A progress whose reports the person sees; None: nobody watches."""
        ...


class QuietPort:
    """Nobody is watching (a script, a background job): no questions are answered, so a
    paid action that needs a yes is refused, and everything is shown at the end."""

    async def confirm(self, question: str) -> bool:
        return False

    async def announce(self, text: str) -> None:
        return None

    async def show(self, artifact: ToolArtifact) -> bool:
        return False

    def progress(self, label: str) -> Progress | None:
        return None


@dataclass(frozen=True)
class ToolContext:
    """One tool call's world: the process's services, the turn, and the port to the person.

    Frozen: a call that needs another port or step gets a copy (`replace`), so one
    call never changes what a concurrent one sees.
    """

    services: Services
    turn: Turn
    port: Port = field(default_factory=QuietPort)

    async def image(self, image_id: str | None) -> ImageRecord:
        """The named image, or the conversation's most recent one."""
        if image_id:
            return await self.services.images.get(image_id, self.turn.user_id)
        recent = await self.services.images.for_thread(
            self.turn.thread_id, self.turn.user_id, limit=1
        )
        if not recent:
            raise InvalidInput("This conversation has no image yet: make one first, or upload one.")
        return recent[-1]


@dataclass
class ToolArtifact:
    """What the chat shows besides the tool's text: images (with stored bytes) and notes.

    `before` holds the source image(s) of an edit, shown beside the result.
    """

    images: list[tuple[ImageRecord, bytes]] = field(default_factory=list)
    before: list[tuple[ImageRecord, bytes]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    text: str | None = None
    caption: str | None = None  # replaces the default caption under the images
    grid: bool = False  # show images small, side by side (curation candidates)
    videos: list[tuple[VideoRecord, bytes]] = field(default_factory=list)  # clip, MP4 bytes
