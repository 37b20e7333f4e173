"""find_images: the agent's way into the gallery, across all of the user's conversations.

"Take the fox I made last week and animate it" needs an id from another conversation.
This finds it and says it plainly (full id, date, prompt, model, conversation), so the
model can pass the id on to generate_video, edit_image, variations or fork_image, which
accept any image of the same user (their reads are scoped to the user, not the thread).

Words are matched first, in the prompt as typed or as sent (the gallery's text search,
newest first): a prompt that says "fox" is the strongest evidence there is. When the
likeness index is on (the local extra), images that look like the words follow, ranked
by similarity, so "foxes at night" also finds a fox whose prompt never said so. Every
filter applies to both, and only the user's own images are ever searched.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, Field

from memory.gallery import Gallery, GalleryFilters, GalleryItem
from memory.models import utcnow
from tools.context import ToolArtifact, ToolContext
from tools.declaration import Command, Option, Tool

if TYPE_CHECKING:  # numpy and the index load with the likeness search, not with the tools
    from pipelines.scoring.likeness import Likeness

MAX_RESULTS = 20
LIKENESS_POOL = 200  # nearest images fetched before the filters narrow them
PROMPT_SHOWN = 90  # characters of each prompt in the result


class FindImagesArgs(BaseModel):
    query: str | None = Field(
        None,
        description=(
            "A word or two that the prompt would contain, or what the image shows ('fox', "
            "'red lantern'). Leave empty to list the newest images that pass the filters."
        ),
    )
    since_days: Annotated[int | None, Option(flag="days")] = Field(
        None,
        ge=1,
        le=3650,
        description=(
            "Only images made in the last N days; leave a margin ('last week': 14, "
            "'last month': 45)."
        ),
    )
    model: str | None = Field(None, description="Only images made with this model.")
    backend: str | None = Field(None, description="Only from this backend (local, replicate...).")
    style: str | None = Field(None, description="Only images made in this style preset.")
    kept: bool | None = Field(None, description="True: only images the user kept (starred).")
    kind: Literal["image", "video"] | None = Field(
        None, description="'image' or 'video' (clips); both when empty."
    )
    lora: str | None = Field(None, description="Only images made with this LoRA (its name).")
    limit: int = Field(8, ge=1, le=MAX_RESULTS, description=f"At most this many (1-{MAX_RESULTS}).")


DESCRIPTION = (
    "Find images and clips the user made before, in ANY of their conversations, by words "
    "and filters ('the fox I made last week': query='fox', since_days=14). Returns each "
    "one's full id, date, prompt, model and conversation; pass the id on to "
    "generate_video (image_id), edit_image, variations or fork_image to carry on from it."
)


def _gallery(ctx: ToolContext) -> Gallery:
    if ctx.services.gallery is None:
        raise RuntimeError("Services.gallery is not set: build it with a Gallery.")
    return ctx.services.gallery


def _likeness(ctx: ToolContext) -> Likeness | None:
    """The likeness search if it is on (the local extra installed), else None."""
    likeness = ctx.services.likeness
    return likeness if likeness is not None and likeness.available else None


def filters_of(args: FindImagesArgs, **more: Any) -> GalleryFilters:
    """The gallery's filters for these arguments; `more` adds or overrides some."""
    since = utcnow() - timedelta(days=args.since_days) if args.since_days else None
    chosen: dict[str, Any] = {
        "model": args.model,
        "backend": args.backend,
        "style": args.style,
        "since": since,
        "kept": True if args.kept else None,
        "kind": args.kind,
        "lora": args.lora,
    }
    return GalleryFilters(**{**chosen, **more})


async def _find_images(ctx: ToolContext, args: FindImagesArgs) -> tuple[str, ToolArtifact]:
    gallery, user_id = _gallery(ctx), ctx.turn.user_id
    query = (args.query or "").strip() or None

    # 1. Prompt words (or, with no words, the newest that pass the filters).
    page = await gallery.page(user_id, filters_of(args, text=query), limit=args.limit)
    found: list[tuple[GalleryItem, float | None]] = [(item, None) for item in page.items]

    # 2. Likeness fills the rest: images only (clips have no embedding), filters re-applied.
    likeness = _likeness(ctx)
    room = args.limit - len(found)
    if query and likeness is not None and room > 0 and args.kind != "video":
        nearest = await likeness.search_text(user_id, query, k=LIKENESS_POOL)
        similarity = dict(nearest)
        seen = {item.id for item, _ in found}
        candidates = tuple(image_id for image_id, _ in nearest if image_id not in seen)
        if candidates:
            narrowed = await gallery.page(
                user_id,
                filters_of(args, kind="image", ids=candidates),
                limit=len(candidates),
            )
            ranked = sorted(narrowed.items, key=lambda item: -similarity[item.id])
            found += [(item, similarity[item.id]) for item in ranked[:room]]

    names = await _conversation_names(gallery, user_id, [item for item, _ in found])
    return _for_model(found, names, query, likeness is not None), ToolArtifact(
        text=_for_person(found, query)
    )


async def _conversation_names(
    gallery: Gallery, user_id: str, items: list[GalleryItem]
) -> dict[str, str | None]:
    """Thread id -> the conversation's name, one detail read per conversation."""
    names: dict[str, str | None] = {}
    for item in items:
        if item.thread_id not in names:
            names[item.thread_id] = (await gallery.detail(user_id, item.id)).thread_name
    return names


def _short(prompt: str) -> str:
    prompt = " ".join(prompt.split())
    return prompt if len(prompt) <= PROMPT_SHOWN else prompt[: PROMPT_SHOWN - 1] + "…"


def _for_model(
    found: list[tuple[GalleryItem, float | None]],
    names: dict[str, str | None],
    query: str | None,
    likeness_on: bool,
) -> str:
    """One line per hit, the full id first, so the model can pass it on."""
    asked = f" for {query!r}" if query else ""
    if not found:
        hint = "" if likeness_on or not query else " (likeness search is off: words only)"
        return f"Found nothing{asked} in the user's images{hint}. Try other words or filters."
    lines = [f"Found {len(found)}{asked} in the user's conversations:"]
    for item, similarity in found:
        how = "prompt matches" if similarity is None else f"looks alike {similarity:.2f}"
        if not query:
            how = "newest"
        name = names.get(item.thread_id) or "untitled"
        lines.append(
            f"- {item.kind} {item.id} | {item.created_at:%Y-%m-%d %H:%M} UTC | "
            f"{_short(item.prompt)!r} | {item.backend}:{item.model} | "
            f"conversation {name!r} | {how}"
        )
    lines.append(
        "Pass an image's id as image_id to generate_video, edit_image, variations or "
        "fork_image; a video's id is a clip, not an image."
    )
    return "\n".join(lines)


def _for_person(found: list[tuple[GalleryItem, float | None]], query: str | None) -> str:
    """What the chat shows: full ids (short ones only work within one conversation), each
    a link to its detail in the gallery."""
    asked = f" for *{query}*" if query else ""
    if not found:
        return f"Found nothing{asked} in your images."
    lines = [f"Found {len(found)}{asked}:"]
    for item, _ in found:
        lines.append(
            f"- [`{item.id}`](/gallery?image={item.id}) {item.created_at:%Y-%m-%d} "
            f"{item.kind}: {_short(item.prompt)}"
        )
    return "\n".join(lines)


find_images = Tool(
    name="find_images",
    description=DESCRIPTION,
    args=FindImagesArgs,
    run=_find_images,
    commands=(
        Command(
            "find",
            "search",
            "Find your images in every conversation: /find fox in snow --days 14 --kept yes",
            text="query",
        ),
    ),
)
