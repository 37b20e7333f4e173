"""What a tool call may touch, passed explicitly rather than found in globals."""

from __future__ import annotations

from dataclasses import dataclass, field

from memory.images import ImageRecord, ImageStore
from pipelines.registry import BackendRegistry


@dataclass
class ToolContext:
    thread_id: str
    user_id: str
    backends: BackendRegistry
    images: ImageStore
    backend_id: str = "openai"
    message_id: str | None = None


@dataclass
class ToolArtifact:
    """What the chat shows besides the tool's text: images (with stored bytes) and notes."""

    images: list[tuple[ImageRecord, bytes]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
