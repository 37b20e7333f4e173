"""What a tool call may touch, passed explicitly rather than found in globals."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from core.errors import InvalidInput
from memory.curations import CurationStore
from memory.images import ImageRecord, ImageStore
from memory.ledger import Ledger, OperatorLimits
from memory.videos import VideoRecord, VideoStore
from pipelines.catalogue.pricing import PriceTable
from pipelines.images.registry import BackendRegistry
from pipelines.progress import Progress
from pipelines.video.video_registry import VideoBackendRegistry
from tools.styles import StyleLibrary

if TYPE_CHECKING:
    from tools.training_jobs import TrainingJobs
    from tools.turn_guard import TurnGuard

# (instructions, prompt) -> rewritten prompt; None when no chat model is configured.
PromptRewriter = Callable[[str, str], Awaitable[str]]
# label -> a Progress whose reports the chat displays.
ProgressFactory = Callable[[str], Progress]
# question -> True to go ahead; False (or no answer) to cancel.
Confirmer = Callable[[str], Awaitable[bool]]
# text -> shown in the chat before a paid action runs.
Announcer = Callable[[str], Awaitable[None]]
# artifact -> shown in the chat at once, mid-call (a keyframe before it is animated).
ArtifactShower = Callable[["ToolArtifact"], Awaitable[None]]


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


@dataclass
class ToolContext:
    thread_id: str
    user_id: str
    backends: BackendRegistry
    images: ImageStore
    defaults: GenerationDefaults = field(default_factory=GenerationDefaults)
    styles: StyleLibrary = field(default_factory=StyleLibrary.builtin)
    rewrite: PromptRewriter | None = None
    progress: ProgressFactory | None = None
    message_id: str | None = None
    curations: CurationStore | None = None
    clip_model: str | None = None  # None: text–image agreement is not scored
    prices: PriceTable | None = None  # None: costs are not recorded
    ledger: Ledger | None = None  # None: no budgets are kept (see tools/spending.py)
    operator_limits: OperatorLimits | None = None
    confirm: Confirmer | None = None  # asks the user Confirm / Cancel
    announce: Announcer | None = None  # shows the estimate before a paid action
    videos: VideoStore | None = None  # None: video tools refuse (no store to keep clips)
    video_backends: VideoBackendRegistry | None = None
    show: ArtifactShower | None = None  # None: everything is shown when the call ends
    # What the user attached to this message: a training started now trains on them.
    attached_images: tuple[str, ...] = ()
    attached_zips: tuple[tuple[str, bytes], ...] = ()  # (file name, bytes)
    trainings: TrainingJobs | None = None  # None: LoRA training tools refuse
    # The message's tool-call count and running spend; None: each paid action alone.
    turn: TurnGuard | None = None

    def curation_store(self) -> CurationStore:
        if self.curations is None:
            raise RuntimeError("ToolContext.curations is not set: build it with a CurationStore.")
        return self.curations

    def new_progress(self, label: str) -> Progress | None:
        return self.progress(label) if self.progress else None

    async def image(self, image_id: str | None) -> ImageRecord:
        """The named image, or the conversation's most recent one."""
        if image_id:
            record = await self.images.get(image_id, self.user_id)
            return record
        recent = await self.images.for_thread(self.thread_id, self.user_id, limit=1)
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
