"""Which LoRAs a user may apply: their own, and the ones the operator shares.

Trained LoRAs and the operator's LoRA files share one folder (`ATELIER_LORA_DIR`), and
the local backend loads any `<name>.safetensors` in it. Who may apply a name is decided
here, before anything is priced or run:

- a LoRA the user trained (the registry, any case) is theirs to apply;
- a name another user trained is refused exactly like a name that does not exist;
- a `.safetensors` file no user trained (no registry row, no training folder beside it)
  was placed by the operator and is shared with everyone.

A name is trained only when it is free on disk, so a user's LoRA never hides a shared
file, nor another user's. The answer to an unknown name lists the requester's own LoRAs
and the shared ones; never another user's name, never a folder path.

Replicate-trained LoRAs are models on Replicate (`replicate:owner/name[:version]`); a
model another user's training pushed to is refused the same way, and a training may not
push to a model another user's training claims.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from core.errors import AtelierError, InvalidInput
from memory.loras import LoraStore
from pipelines.images.base import LoraSpec
from tools.context import ToolContext


async def authorise(
    ctx: ToolContext, backend_id: str, model: str, loras: tuple[LoraSpec, ...]
) -> tuple[LoraSpec, ...]:
    """The request's LoRAs, each under its own name as stored, once the user may use them.

    Also refuses a Replicate model that another user's LoRA training claims.
    """
    store = ctx.services.trainings.loras if ctx.services.trainings is not None else None
    if backend_id == "replicate" and store is not None:
        await check_replicate_model(store, ctx.turn.user_id, model)
    if not loras:
        return loras
    lora_dir = _lora_dir(ctx)
    own = {}
    if store is not None:
        for record in await store.for_user(ctx.turn.user_id):
            if record.backend == "local":
                own[record.name.lower()] = record.name
    taken = await store.names_in_use() if store is not None else set()
    allowed = []
    for spec in loras:
        name = own.get(spec.name.lower())
        if name is None and await asyncio.to_thread(_shared, lora_dir, spec.name, taken):
            name = spec.name
        if name is None:
            raise InvalidInput(await _unknown(ctx, store, lora_dir, spec.name, taken))
        allowed.append(replace(spec, name=name))
    return tuple(allowed)


async def check_replicate_model(store: LoraStore, user_id: str, model: str) -> None:
    """Refuse `owner/name[:version]` when another user's LoRA training owns that model."""
    ref = (model or "").strip().partition(":")[0].lower()
    owners = (await store.replicate_models()).get(ref)
    if owners and user_id not in owners:
        raise InvalidInput(
            f"replicate:{model.strip()[:120]} is not available to you. `/loras` lists your "
            "own LoRAs; any other Replicate model can be named as replicate:owner/name."
        )


async def check_destination(store: LoraStore, user_id: str, destination: str) -> None:
    """A Replicate training may not push new versions to another user's LoRA model."""
    owners = (await store.replicate_models()).get(destination.strip().lower())
    if owners and user_id not in owners:
        raise InvalidInput(
            f"{destination.strip()[:120]!r} cannot be the destination: it holds another "
            "user's LoRA. Create a model of your own on Replicate and name it instead."
        )


def _lora_dir(ctx: ToolContext) -> Path | None:
    if ctx.services.trainings is not None:
        return ctx.services.trainings.lora_dir
    try:
        backend = ctx.services.backends.get("local")
    except AtelierError:  # no local backend: no LoRA files to apply either
        return None
    return getattr(backend, "lora_dir", None)


def _shared(lora_dir: Path | None, name: str, taken: set[str]) -> bool:
    """An operator's file: present, not a name anyone trained, no training folder beside it."""
    if lora_dir is None or name.lower() in taken or not _plain(name):
        return False
    if not (lora_dir / f"{name}.safetensors").is_file():
        return False
    return not any(e.is_dir() and e.name.lower() == name.lower() for e in lora_dir.iterdir())


def shared_names(lora_dir: Path | None, taken: set[str]) -> list[str]:
    """The operator's LoRA files everyone may apply, by name."""
    if lora_dir is None or not lora_dir.is_dir():
        return []
    folders = {e.name.lower() for e in lora_dir.iterdir() if e.is_dir()}
    return sorted(
        path.stem
        for path in lora_dir.glob("*.safetensors")
        if path.is_file() and path.stem.lower() not in taken | folders and _plain(path.stem)
    )


def _plain(name: str) -> bool:
    return bool(name) and not any(c in name for c in "/\\") and ".." not in name


async def _unknown(
    ctx: ToolContext, store: LoraStore | None, lora_dir: Path | None, name: str, taken: set[str]
) -> str:
    mine = []
    if store is not None:
        mine = [
            r.name
            for r in await store.for_user(ctx.turn.user_id, status="succeeded")
            if r.backend == "local"
        ]
    shared = await asyncio.to_thread(shared_names, lora_dir, taken)
    yours = ", ".join(sorted(mine)) or "none yet (`/train NAME` trains one)"
    text = f"There is no LoRA named {name[:64]!r} that you can use. Yours: {yours}."
    if shared:
        text += f" Shared on this server: {', '.join(shared)}."
    return text
