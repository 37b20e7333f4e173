"""What starting a batch needs besides the runner, built once by the app.

Kept apart from tools/start_batch.py (the tool's declaration pulls in the chat model's
schema code) so the app can build it at start-up without importing the chat: the
object templates with the operator's file, the item limit, and how the chat shows a
batch (chat_app/batch_display.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from tools.batch_items import MAX_ITEMS
from tools.object_templates import TemplateLibrary

if TYPE_CHECKING:
    from memory.batches import BatchRecord
    from tools.batch_runner import BatchWatcher

SHORT_ID = 8  # how much of a batch's id the chat shows (and accepts)


class BatchDisplay(Protocol):
    """The chat's progress message of one batch."""

    @property
    def message_id(self) -> str: ...

    async def open(self, batch: BatchRecord) -> None: ...

    def watcher(self) -> BatchWatcher: ...


# (thread, the batch whose message it updates, or None for a new one) -> its display;
# None: nobody watches (not in a chat session).
DisplayFactory = Callable[[str, "BatchRecord | None"], "BatchDisplay | None"]


@dataclass(frozen=True)
class BatchSetup:
    templates: TemplateLibrary = field(default_factory=TemplateLibrary.builtin)
    max_items: int = MAX_ITEMS
    display: DisplayFactory | None = None


def links(batch_id: str) -> str:
    """The summary's links: the zip (chat_app/batch_routes.py) and the gallery's filter."""
    return (
        f"[Download the zip](/batches/{batch_id}/download) · "
        f"[See them in the gallery](/gallery?batch={batch_id})"
    )
