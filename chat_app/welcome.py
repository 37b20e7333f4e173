"""The first thing each user reads: what they can do, or, for the administrator, how the
server is set up and what is missing.

Users are not shown the operator's configuration (variable names, hosts, paths): they
get what they can do and a few starters. The administrator gets the configuration and,
for each backend that is not set up, the one step that sets it up. With no image backend
at all, the administrator is told exactly how to get images: a key, or the local extra.

The welcome is sent as a *system* message: Chainlit keeps its welcome screen (logo and
starters) until the first user or assistant message, and the agent's history
(chat_app/conversation.py) leaves system messages out, so the welcome is never part of
what the chat model reads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import chainlit as cl

from chat_app import model_status

if TYPE_CHECKING:
    from chat_app.runtime import Runtime
    from chat_app.settings import Settings

AUTHOR = "Atelier"
HEADLINE = "**Welcome to Atelier.**"
LOCAL_COMMAND = "make run-local"
# What the default local model costs to get and to run; said wherever the local extra is
# offered. sd-turbo's full-precision weights (UNet, text encoder, VAE), which a CPU uses,
# are about 5 GB on the Hugging Face hub; it draws 512x512 in one step. On a CPU that
# step and the VAE decode took 72 s on a busy 2-core VM (random weights in sd-turbo's
# shapes, fp32, torch 2.13); the desktop figure is an estimate from that.
LOCAL_TRUTH = (
    "The first image downloads the model from the Hugging Face hub once (about 5 GB, kept "
    "in `~/.cache/huggingface`). On a CPU a 512×512 image takes roughly 10 s on a recent "
    "8-core desktop and a minute or more on a small 2-core machine; a GPU is far faster."
)


def is_admin(user: cl.User | None) -> bool:
    return bool(user and (user.metadata or {}).get("role") == "admin")


def welcome_text(runtime: Runtime, admin: bool = False) -> str:
    if not runtime.services.backends.available():
        return _no_images_admin(runtime) if admin else _no_images_user()
    if admin:
        return _admin(runtime)
    return _user(runtime)


async def send(runtime: Runtime) -> None:
    text = welcome_text(runtime, is_admin(cl.user_session.get("user")))
    await cl.Message(content=text, author=AUTHOR, type="system_message").send()


# ----------------------------------------------------------------------------- users


def _user(runtime: Runtime) -> str:
    settings = runtime.settings
    if settings.llm_configured:
        lines = [
            f"{HEADLINE} Describe the picture you want in plain words, e.g. *a lighthouse at "
            "dusk, watercolour*, or click a starter. Then keep talking about it:",
            "- *make it bluer*, *four variations of that*, *the second one, but wider*",
            "- attach an image to edit it or to start from it",
        ]
    else:
        lines = [
            f"{HEADLINE} Type what you want to see and it becomes the image prompt, or "
            "click a starter. Then:",
            "- `/variations`, `/edit make the sky bluer`, `/refine a fox --style crayon`",
            "- attach an image to edit it",
        ]
    if runtime.services.video_backends.available():
        how = "*animate it*" if settings.llm_configured else "`/animate`"
        lines.append(f"- turn the latest image into a short clip: {how}")
    lines.append(
        "- `/styles` lists the style presets, `/cost` what you have spent, `/help` every "
        "command" + _model_lifecycle(runtime, admin=False)
    )
    lines.append("\nEvery conversation, image and prompt is kept in the sidebar.")
    return "\n".join(lines)


def _no_images_user() -> str:
    return (
        f"{HEADLINE} Image making is not set up on this server yet, so nothing can be drawn "
        "for now. The administrator's welcome says how to turn it on."
    )


# --------------------------------------------------------------------- administrator


def _admin(runtime: Runtime) -> str:
    lines = [
        f"{HEADLINE} You are the administrator, so you see how this server is set up; "
        "other users see what they can do and a few starters instead.",
        "",
        *_configuration(runtime),
    ]
    missing = _missing(runtime)
    if missing:
        lines += ["", "**Not set up** (set these in the environment or `.env`, then restart):"]
        lines += [f"- {item}" for item in missing]
    how = (
        "Ask in plain words, e.g. *draw a fox in the snow, watercolour*"
        if runtime.settings.llm_configured
        else "Type what you want to see, or use `/image <prompt>`"
    )
    lines += ["", f"{how}, or click a starter. `atelier doctor` checks what is reachable."]
    return "\n".join(lines)


def _configuration(runtime: Runtime) -> list[str]:
    settings = runtime.settings
    if settings.llm_configured:
        base, _ = settings.llm_endpoint
        llm = f"`{settings.llm_model}` at {_host(base, 'api.openai.com')}"
    else:
        llm = "not configured, so Atelier runs in **command mode**"
    images = ", ".join(
        f"{b.label} (`{b.default_model}`)" for b in runtime.services.backends.available()
    )
    videos = runtime.services.video_backends.available()
    database = "SQLite" if runtime.engine.dialect.name == "sqlite" else "PostgreSQL"
    lines = [f"- Chat model: {llm}", f"- Image backends: {images}"]
    if any(b.id == "local" for b in runtime.services.backends.available()):
        lines.append(f"- Local diffusers draws on this machine. {LOCAL_TRUTH}")
    return lines + [
        "- Video backends: "
        + (", ".join(f"{b.label} (`{b.default_model}`)" for b in videos) or "none"),
        f"- Storage: {database}, files in `{settings.data_dir.resolve()}`"
        + _model_lifecycle(runtime, admin=True),
    ]


def _missing(runtime: Runtime) -> list[str]:
    """One line per backend that is not set up, with the step that sets it up."""
    settings = runtime.settings
    images = {b.id for b in runtime.services.backends.available()}
    missing = []
    if not settings.llm_configured:
        missing.append(
            "a chat model: `OPENAI_API_KEY`, or `ATELIER_LLM_BASE_URL` for Ollama or vLLM "
            "(`ATELIER_LLM_MODEL` names the model)"
        )
    if "openai" not in images:
        missing.append("OpenAI images: `OPENAI_API_KEY`")
    if "replicate" not in images:
        missing.append("Replicate images and video: `REPLICATE_API_TOKEN`")
    if "local" not in images:
        missing.append(f"local diffusers on this machine: {_local_step(settings)}")
    return missing


def _local_step(settings: Settings) -> str:
    if not settings.local_enabled:
        return "`ATELIER_LOCAL_ENABLED=true` (it is turned off)"
    return (
        f"stop the server and run `{LOCAL_COMMAND}` (installs the `local` extra with "
        f"PyTorch's CPU build; default model `{settings.local_model}`)"
    )


def _no_images_admin(runtime: Runtime) -> str:
    settings = runtime.settings
    if settings.local_enabled:
        local = (
            f"stop the server and run `{LOCAL_COMMAND}`. It installs the `local` extra "
            "(PyTorch's CPU build and diffusers) and starts Atelier with the default small "
            f"model `{settings.local_model}`. {LOCAL_TRUTH}"
        )
    else:
        local = (
            "set `ATELIER_LOCAL_ENABLED=true` (it is turned off), install the `local` extra "
            f"with `{LOCAL_COMMAND}` if it is missing, and restart. {LOCAL_TRUTH}"
        )
    return "\n".join(
        [
            f"{HEADLINE} No image backend is set up yet, so nothing can be drawn. "
            "Two ways to get images:",
            "",
            "1. **A hosted API** (fast, paid per image): set `OPENAI_API_KEY` (OpenAI's "
            "image models, and a chat model too) or `REPLICATE_API_TOKEN` (Replicate's "
            "models) in the environment or in a `.env` file where you start Atelier, then "
            "restart.",
            f"2. **On this machine, free:** {local}",
            "",
            *_configuration_without_images(runtime),
        ]
    )


def _configuration_without_images(runtime: Runtime) -> list[str]:
    settings = runtime.settings
    database = "SQLite" if runtime.engine.dialect.name == "sqlite" else "PostgreSQL"
    chat = f"`{settings.llm_model}`" if settings.llm_configured else "not configured"
    return [
        f"- Chat model: {chat}",
        f"- Storage: {database}, files in `{settings.data_dir.resolve()}`",
        "",
        "`atelier doctor` checks what is configured and reachable.",
    ]


# ------------------------------------------------------------------------------ shared


def _host(url: str | None, default: str) -> str:
    if not url:
        return default
    parts = urlsplit(url)
    return parts.hostname + (f":{parts.port}" if parts.port else "") if parts.hostname else url


def _model_lifecycle(runtime: Runtime, admin: bool) -> str:
    """Administrators see every configured model's status; everyone sees one that is
    retiring or retired, since their requests depend on it."""
    catalogue = runtime.services.backends.catalogue
    if catalogue is None:
        return ""
    rows = model_status.statuses(catalogue, runtime.settings)
    shown = [(m, s) for m, s in rows if admin or s.state in ("retiring", "retired")]
    if not shown:
        return ""
    head = "\n- Models (catalogue, as of " + str(rows[0][1].today) + "):"
    return head + "".join(f"\n  - {model_status.line(m, s)}" for m, s in shown)
