"""The buttons every image in the chat carries, and its details, as Chainlit actions.

Chainlit draws a message's actions as a row under it and does not store them, so each
image's buttons are sent with the message that shows it (chat_app/rendering.py) and sent
again when the conversation is resumed (`restore`: after a reload, a restart, or from
the sidebar). public/images.css hides the row and public/images.js lays the same buttons
out on each image, where a click presses Chainlit's own button; what a click does is in
chat_app/image_actions.py. (A Chainlit CustomElement would be simpler to draw, but its
code is evaluated with `new Function`, which the app's Content-Security-Policy rightly
forbids: chat_app/security_headers.py.)

The state an image's buttons show comes from the database each time they are sent: a
kept image carries "Kept" instead of "Keep", and its details are the stored record's.
"""

from __future__ import annotations

import re
import secrets
from typing import TYPE_CHECKING

import chainlit as cl
from chainlit.context import context

from core import money
from core.logging_setup import get_logger
from memory.images import ImageRecord, ImageStore

if TYPE_CHECKING:
    from chainlit.types import ThreadDict

log = get_logger(__name__)

VARY, EDIT, BIGGER, ANIMATE = "atelier_vary", "atelier_edit", "atelier_bigger", "atelier_animate"
KEEP, KEPT, DETAILS = "atelier_keep", "atelier_kept", "atelier_details"
# (action name, id word that images.js reads, label, Lucide icon)
_BUTTONS = {
    VARY: ("vary", "Vary", "shuffle"),
    EDIT: ("edit", "Edit", "pencil"),
    BIGGER: ("bigger", "Bigger", "maximize-2"),
    ANIMATE: ("animate", "Animate", "clapperboard"),
    KEEP: ("keep", "Keep", "star"),
    KEPT: ("kept", "Kept", "star"),
    DETAILS: ("details", "Details", "info"),
}
# The element names rendering gives an image: "<id>.png", "before-<id>.png", ...
_SHOWN_IMAGE = re.compile(
    r"^(?:before-|keyframe-)?([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
    r"\.[a-z0-9]+$"
)
MAX_RESTORED = 300  # a resume gives buttons to the newest this many images shown
_PROMPT_SHOWN = 1_000  # characters of a prompt in the details


def actions_for(record: ImageRecord) -> list[cl.Action]:
    """The buttons of one shown image. An upload has no prompt to vary or redo larger."""
    names = [EDIT, ANIMATE, KEPT if record.kept_at else KEEP, DETAILS]
    if record.backend != "upload":
        names = [VARY, EDIT, BIGGER, ANIMATE, *names[2:]]
    # The id only has to be unique on the page; images.js finds an image's buttons by
    # "atl-<word>-<image id>-".
    tail = secrets.token_hex(4)
    return [button(name, record, tail) for name in names]


class Button(cl.Action):
    """Chainlit's action, sent as the same event built by hand.

    `Action.send` serialises with dataclasses_json (about 50 µs a button here): six
    buttons per image shown, and 1,800 when a conversation of 300 images is resumed.
    """

    async def send(self, for_id: str) -> None:
        self.forId = for_id
        event = {
            "name": self.name,
            "payload": self.payload,
            "label": self.label,
            "tooltip": self.tooltip,
            "icon": self.icon,
            "forId": for_id,
            "id": self.id,
        }
        await context.emitter.emit("action", event)


def button(name: str, record: ImageRecord, tail: str) -> cl.Action:
    word, label, icon = _BUTTONS[name]
    if name == DETAILS:
        label = details(record)  # images.js shows it on the image; nothing is fetched
    return Button(
        name=name,
        payload={"image_id": record.id},
        label=label,
        icon=icon,
        id=f"atl-{word}-{record.id}-{tail}",
    )


def details(record: ImageRecord) -> str:
    """What the image's details show, one "Name: value" per line."""
    prompt = record.prompt_sent or record.prompt_typed
    lines = [f"Prompt: {_clip(prompt)}"] if prompt else []
    if record.prompt_typed and record.prompt_typed != record.prompt_sent:
        lines.append(f"Asked: {_clip(record.prompt_typed)}")
    seed = str(record.seed) if record.seed is not None else f"none ({record.backend} takes none)"
    if record.backend == "upload":
        seed = "none (uploaded)"
    lines += [
        f"Seed: {seed}",
        f"Model: {record.backend} {record.model}",
        f"Size: {record.width}×{record.height}",
        f"Cost: {_cost(record)}",
        f"Id: {record.id}",
    ]
    if record.parent_id:
        lines.append(f"From: {record.parent_id}")
    return "\n".join(lines)


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _PROMPT_SHOWN else text[: _PROMPT_SHOWN - 1] + "…"


def _cost(record: ImageRecord) -> str:
    cost = record.parameters.get("cost") or {}
    if record.cost_usd is not None:
        return money.usd(record.cost_usd, 4) + (f" ({cost['source']})" if cost else "")
    if cost.get("unpriced"):
        return "unknown (no price for this model)"
    return "nothing (uploaded)" if record.backend == "upload" else "not recorded"


async def restore(thread: ThreadDict, user_id: str, store: ImageStore) -> None:
    """Send the buttons of the thread's images again: Chainlit keeps no actions.

    Called while the conversation is resumed, before Chainlit sends it to the browser;
    the browser keeps actions apart from messages, so they are there when it draws them.
    """
    shown: list[tuple[str, str]] = []
    for element in thread.get("elements") or []:
        found = _SHOWN_IMAGE.match(element.get("name") or "")
        if element.get("type") == "image" and found and element.get("forId"):
            shown.append((found[1], element["forId"]))
    if not shown:
        return
    shown = shown[-MAX_RESTORED:]
    records = {r.id: r for r in await store.for_thread(thread["id"], user_id, MAX_RESTORED)}
    sent = 0
    for image_id, for_id in shown:
        record = records.get(image_id)
        if record is None:
            continue  # another conversation's image (an edit's source), or older ones
        for action in actions_for(record):
            await action.send(for_id=for_id)
        sent += 1
    log.info("image_actions_restored", images=sent)
