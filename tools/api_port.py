"""The Port for a request over the HTTP API: nobody to ask, maybe someone to stream to.

In the chat, a paid action above the user's "ask before spending more than" threshold
waits for Confirm / Cancel (tools/spending.py). An API client cannot press a button, and
refusing with the chat's "Cancelled" would leave it guessing why, so `confirm` refuses
with an error that names the threshold, its amount and how to get past it. Budgets need
no port: the ledger refuses them itself, with the numbers.

`progress` gives a Progress only when the client streams and asked for partial images;
the backend then streams its own (OpenAI's partial images) and each new one is handed
to `on_preview`, in order. Otherwise nobody watches, and backends do not make previews.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal

from core import money
from memory.ledger import Ledger, OperatorLimits
from pipelines.progress import Preview, Progress, ProgressUpdate
from tools.context import ToolArtifact
from tools.spending import Declined

PreviewSink = Callable[[Preview], Awaitable[None]]


class ConfirmationRequired(Declined):
    """A paid action the chat would have asked about; over the API it is refused."""


class ApiPort:
    """One API request's port: refuses confirmations, forwards partial images."""

    def __init__(
        self,
        ledger: Ledger | None,
        *,
        user_id: str,
        thread_id: str,
        operator_limits: OperatorLimits | None,
        on_preview: PreviewSink | None = None,
        max_previews: int = 0,
    ) -> None:
        self._ledger = ledger
        self._user_id, self._thread_id = user_id, thread_id
        self._limits = operator_limits
        self._on_preview = on_preview
        self._max_previews = max_previews
        self._sent: list[Preview] = []
        self.announced: list[str] = []

    async def confirm(self, question: str) -> bool:
        """Never a yes: raise ConfirmationRequired naming the threshold that was passed."""
        threshold = await self._threshold()
        limit = f" of {money.usd(threshold, 2)}" if threshold is not None else ""
        estimate = question.split("**")[1] if question.count("**") >= 2 else question
        raise ConfirmationRequired(
            f'{estimate.rstrip(".")}, above your confirmation threshold{limit} ("ask before '
            'spending more than"). In the chat this would wait for you to confirm; over the '
            "API it is refused, so nothing ran and nothing was spent. Ask for fewer or "
            "cheaper images, or raise the threshold in the chat's settings panel."
        )

    async def _threshold(self) -> Decimal | None:
        if self._ledger is None:
            return None
        return await self._ledger.confirmation_threshold(
            user_id=self._user_id, thread_id=self._thread_id, operator_limits=self._limits
        )

    async def announce(self, text: str) -> None:
        self.announced.append(text)  # the estimate, kept for the request's record

    async def show(self, artifact: ToolArtifact) -> bool:
        return False  # everything is answered at the end

    def progress(self, label: str) -> Progress | None:
        if self._on_preview is None or self._max_previews <= 0:
            return None
        return Progress(self._deliver)

    async def _deliver(self, update: ProgressUpdate) -> None:
        """Each preview once, in order; updates that only move the bar are not sent.

        Progress delivers the newest update, so a preview overtaken by a newer one
        before it was delivered is skipped, as OpenAI itself may send fewer partial
        images than asked for.
        """
        preview = update.preview
        if preview is None or any(preview is sent for sent in self._sent):
            return
        if len(self._sent) >= self._max_previews:
            return
        self._sent.append(preview)
        assert self._on_preview is not None
        await self._on_preview(preview)
