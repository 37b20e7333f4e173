"""The agent's memory of a conversation, rebuilt from what the database holds.

Rebuilding every turn (rather than keeping messages in the session) means a resumed
thread, a restarted server and a live session all give the model the same context,
and the images table tells it which image "the one from before" is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from memory.images import ImageRecord
from memory.loras import LoraRecord

MAX_HISTORY_STEPS = 40
MAX_IMAGES_LISTED = 20

SYSTEM_PROMPT = """You are Atelier, an assistant that makes images with tools.
- A new picture: call generate_image with a complete, specific prompt.
- A change to an existing image ("make it bluer", "add a hat"): call edit_image with the
  instruction; it edits the most recent image unless you pass another image_id.
- More of the same ("four variations of that"): call variations with the image id and n.
- Redo an earlier image with other settings ("go back to the second one and make it
  wider"): call fork_image with that image's id and only the settings that change.
- A style or "improve my prompt": call refine_prompt (styles: {styles}).
- "The best of N", or images that must meet rules (one centred object on white, sharp):
  call curate_images. "Keep the third one instead" after a curation: call keep_image
  with that candidate's id (candidates are marked below with their rank).
- "Is this image any good / check it": call check_quality.
- "Learn this style/subject as NAME" / "train a LoRA": call train_lora with name and a
  trigger word (the kept images are used unless image ids are named); stop_training and
  resume_training act on a running or stopped one.
- A clip ("animate the fox", "make it move", "a video of waves"): call generate_video,
  with image_id "latest" (or an image's id) to animate an image, or only a prompt.
Find images by number or description in the list below and always pass their full ids.
Only pass backend when the user asks for a specific backend or model.
Keep replies short. If a tool reports an error, explain it plainly and suggest a fix.
"""


def history_from_steps(
    steps: Sequence[dict[str, Any]], current_message_id: str | None
) -> list[BaseMessage]:
    """User and assistant turns (and tool results as assistant notes), oldest first."""
    messages: list[BaseMessage] = []
    for step in list(steps)[-MAX_HISTORY_STEPS:]:
        if step.get("id") == current_message_id:
            continue
        kind, text = step.get("type"), (step.get("output") or "").strip()
        if not text:
            continue
        if kind == "user_message":
            messages.append(HumanMessage(content=text))
        elif kind == "assistant_message":
            messages.append(AIMessage(content=text))
        elif kind == "tool":
            status = "failed" if step.get("isError") else "result"
            messages.append(AIMessage(content=f"[{step.get('name')} {status}] {text}"))
    return messages


def describe_images(
    images: Sequence[ImageRecord], verdicts: Mapping[str, tuple[str, int, str, float]] | None = None
) -> str:
    verdicts = verdicts or {}
    if not images:
        return "This conversation has no images yet."
    lines = ["Images in this conversation, oldest first (the last one is the most recent):"]
    for number, image in enumerate(images[-MAX_IMAGES_LISTED:], start=1):
        if image.backend == "upload":
            what = f"uploaded by the user ({image.parameters.get('filename')})"
        else:
            what = (
                f"backend={image.backend} model={image.model} seed={image.seed} "
                f"prompt={image.prompt_sent[:400]!r}"
            )
        derived = f" derived_from={image.parent_id}" if image.parent_id else ""
        if image.id in verdicts:
            verdict, rank, curation_id, combined = verdicts[image.id]
            derived += (
                f" curation={curation_id[:8]} candidate_rank={rank} {verdict} score={combined:.2f}"
            )
        lines.append(f"{number}. id={image.id} size={image.width}x{image.height} {what}{derived}")
    return "\n".join(lines)


def describe_loras(loras: Sequence[LoraRecord]) -> str:
    """The user's LoRAs, so "draw TOK on a beach" or "use my dog LoRA" can be honoured."""
    if not loras:
        return ""
    lines = ["\nThe user's LoRAs (name, trigger word, status):"]
    for lora in loras[:MAX_IMAGES_LISTED]:
        use = (
            f"backend=replicate:{lora.replicate_version}"
            if lora.replicate_version
            else f"lora={lora.name} (local; auto-applied when the prompt has its trigger word)"
        )
        lines.append(f"- {lora.name} trigger={lora.trigger_word} {lora.status} {use}")
    return "\n".join(lines)


def build_messages(
    history: list[BaseMessage],
    images: Sequence[ImageRecord],
    text: str,
    styles: Sequence[str] = (),
    verdicts: Mapping[str, tuple[str, int, str, float]] | None = None,
    loras: Sequence[LoraRecord] = (),
) -> list[BaseMessage]:
    prompt = SYSTEM_PROMPT.replace("{styles}", ", ".join(styles) or "none")
    listed = describe_images(images, verdicts) + describe_loras(loras)
    system = SystemMessage(content=prompt + "\n" + listed)
    return [system, *history, HumanMessage(content=text)]
