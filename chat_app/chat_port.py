"""The chat as a tool's port: questions as Confirm/Cancel buttons, results shown at once.

A tool asks the person through `tools.context.Port`; this is the chat's answer to it.
Progress belongs to one tool call (its bars close with the call's step), so each call
gets its own port.
"""

from __future__ import annotations

from chat_app import rendering, spending_prompts
from chat_app.progress_display import ProgressDisplays
from pipelines.progress import Progress
from tools.context import ToolArtifact


class ChatPort:
    def __init__(self, displays: ProgressDisplays | None = None) -> None:
        self.displays = displays

    async def confirm(self, question: str) -> bool:
        return await spending_prompts.confirm(question)

    async def announce(self, text: str) -> None:
        await spending_prompts.announce(text)

    async def show(self, artifact: ToolArtifact) -> bool:
        await rendering.images_now(artifact)
        return True

    def progress(self, label: str) -> Progress | None:
        return self.displays.new(label) if self.displays is not None else None
