"""The per-conversation settings panel (Chainlit's chat settings) and `/backend`.

The panel's values become a `GenerationDefaults` stored in the user session, which
Chainlit persists into the thread's metadata, so a resumed conversation keeps its
backend and settings. A bad value is refused with a message naming the field, and the
previous settings stay in force: nothing the user already set is lost.
"""

from __future__ import annotations

from typing import Any

import chainlit as cl
from chainlit.input_widget import Select, TextInput

from chat_app import budget_settings
from chat_app.budget_settings import BudgetValues
from chat_app.runtime import Runtime
from core.errors import AtelierError, InvalidInput
from tools.context import GenerationDefaults

SESSION_KEY = "generation_defaults"
DEFAULT = "default"
SIZES = (DEFAULT, "512x512", "768x768", "1024x1024", "1536x1024", "1024x1536")
QUALITIES = (DEFAULT, "auto", "low", "medium", "high")


def current() -> GenerationDefaults:
    return GenerationDefaults.from_dict(cl.user_session.get(SESSION_KEY))


def widgets(
    runtime: Runtime, defaults: GenerationDefaults, budgets: BudgetValues | None = None
) -> list[Any]:
    registry = runtime.services.backends
    backends = [b.id for b in registry.available()] or [registry.default_id()]
    chosen = (defaults.backend or registry.default_id()).partition(":")[0]
    # Only models that still work today are offered (the model catalogue decides).
    suggestions = "; ".join(
        f"{b.id}: {', '.join(runtime.services.backends.live_models(b)[:6])}"
        for b in runtime.services.backends.available()
    )
    return [
        Select(
            id="backend",
            label="Image backend",
            values=backends,
            initial_value=chosen if chosen in backends else backends[0],
        ),
        TextInput(
            id="model",
            label="Model",
            initial=defaults.model or "",
            placeholder="the backend's default",
            description=f"Leave empty for the default. Known: {suggestions}"[:600],
        ),
        Select(
            id="size",
            label="Size",
            values=list(SIZES),
            initial_value=defaults.size if defaults.size in SIZES else DEFAULT,
        ),
        Select(
            id="quality",
            label="Quality",
            values=list(QUALITIES),
            initial_value=defaults.quality if defaults.quality in QUALITIES else DEFAULT,
        ),
        TextInput(
            id="steps",
            label="Steps (diffusion models)",
            initial="" if defaults.steps is None else str(defaults.steps),
            placeholder="model default",
        ),
        TextInput(
            id="guidance",
            label="Guidance scale (diffusion models)",
            initial="" if defaults.guidance is None else str(defaults.guidance),
            placeholder="model default",
        ),
        TextInput(
            id="seed",
            label="Seed",
            initial="" if defaults.seed is None else str(defaults.seed),
            placeholder="random each time",
        ),
        *budget_settings.widgets(budgets or BudgetValues(), runtime.settings.operator_limits),
    ]


def _blank(value: Any) -> bool:
    return value is None or str(value).strip() in ("", DEFAULT)


def _number(value: Any, name: str, kind: type, low: float, high: float) -> Any:
    if _blank(value):
        return None
    try:
        number = kind(str(value).strip())
    except ValueError:
        raise InvalidInput(f"{name} must be a {'whole ' if kind is int else ''}number.") from None
    if not low <= number <= high:
        raise InvalidInput(f"{name} must be from {low:g} to {high:g}; {number} was given.")
    return number


def parse(runtime: Runtime, values: dict[str, Any]) -> GenerationDefaults:
    """Validate panel values into defaults; raises InvalidInput naming the field."""
    backend_id = str(values.get("backend") or "").strip() or None
    model = str(values.get("model") or "").strip() or None
    if backend_id:
        backend = runtime.services.backends.get(backend_id)
        spec = f"{backend_id}:{model}" if model else backend_id
        resolved, resolved_model = runtime.services.backends.resolve(spec)
        runtime.services.backends.check_model(resolved.id, resolved_model, "image model")
        resolved.capabilities(resolved_model)
    defaults = GenerationDefaults(
        backend=backend_id,
        model=model,
        size=None if _blank(values.get("size")) else str(values["size"]),
        quality=None if _blank(values.get("quality")) else str(values["quality"]),
        steps=_number(values.get("steps"), "Steps", int, 1, 150),
        guidance=_number(values.get("guidance"), "Guidance", float, 0, 30),
        seed=_number(values.get("seed"), "Seed", int, 0, 2**63 - 1),
    )
    if backend_id and defaults.size:
        caps = backend.capabilities(model or backend.default_model)
        if not caps.allows_size(defaults.size):
            raise InvalidInput(
                f"Size {defaults.size} does not fit {backend.label} "
                f"{model or backend.default_model}. Valid sizes: {', '.join(caps.sizes)}."
            )
    return defaults


async def show(runtime: Runtime, user_id: str) -> None:
    thread_id = cl.context.session.thread_id
    budgets = await budget_settings.load(runtime.services.ledger, user_id, thread_id)
    await cl.ChatSettings(widgets(runtime, current(), budgets)).send()


async def save(runtime: Runtime, defaults: GenerationDefaults, user_id: str) -> None:
    cl.user_session.set(SESSION_KEY, defaults.to_dict())
    # Written now as well as at disconnect, so a crash does not lose the settings.
    await runtime.data_layer.update_thread(
        cl.context.session.thread_id, user_id=user_id, metadata={SESSION_KEY: defaults.to_dict()}
    )


async def update(runtime: Runtime, values: dict[str, Any], user_id: str) -> str:
    """Apply panel values; returns the confirmation shown in the chat.

    Everything is checked before anything is saved, so one bad field changes nothing.
    """
    defaults = parse(runtime, values)
    budgets = budget_settings.parse(values) if _has_budgets(values) else None
    await save(runtime, defaults, user_id)
    text = "Settings for this conversation: " + describe(runtime, defaults)
    if budgets is not None:
        thread_id = cl.context.session.thread_id
        await budget_settings.save(runtime.services.ledger, user_id, thread_id, budgets)
        text += " " + budget_settings.describe(budgets)
    return text


def _has_budgets(values: dict[str, Any]) -> bool:
    """`/backend` updates only the image fields; the panel always sends the budgets too."""
    return any(key in values for key in budget_settings.FIELDS)


def describe(runtime: Runtime, defaults: GenerationDefaults) -> str:
    backend_id = defaults.backend or runtime.services.backends.default_id()
    try:
        backend, model = runtime.services.backends.resolve(backend_id)
        model = defaults.model or model
        where = f"{backend.label} `{model}`"
    except AtelierError:
        where = f"`{backend_id}` (not configured)"
    parts = [where]
    for name in ("size", "quality", "steps", "guidance", "seed"):
        value = getattr(defaults, name)
        if value is not None:
            parts.append(f"{name} {value}")
    return ", ".join(parts) + ". Each applies from the next request."


async def use_backend(runtime: Runtime, spec: str, user_id: str) -> str:
    """`/backend replicate:owner/name` — switch this conversation's backend and model."""
    spec = spec.strip()
    if not spec:
        return "Current: " + describe(runtime, current())
    backend_id, _, model = spec.partition(":")
    old = current()
    values = {**old.to_dict(), "backend": backend_id.strip().lower(), "model": model.strip()}
    if backend_id.strip().lower() != (old.backend or "").partition(":")[0]:
        values.update(size=None, quality=None)  # sizes of one backend rarely fit another
    message = await update(runtime, values, user_id)
    await show(runtime, user_id)
    return message
