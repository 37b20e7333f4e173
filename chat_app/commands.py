"""Slash commands, which also make up command mode (no chat model configured).

Each image command maps onto the same tool the agent calls, so both paths share
validation, recording and rendering. Options are `--name value`; unknown options and
bad values are refused with a message listing what the command takes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from chat_app import cost_report, rendering, settings_panel
from chat_app.runtime import Runtime
from chat_app.tool_runner import run_tool_call
from core.errors import InvalidInput
from tools import train_lora
from tools.context import ToolContext
from tools.registry import build_tools


@dataclass(frozen=True)
class Command:
    id: str
    icon: str
    description: str
    tool: str | None = None
    text_arg: str | None = None  # the tool argument the free text becomes
    ints: frozenset[str] = field(default_factory=frozenset)
    floats: frozenset[str] = field(default_factory=frozenset)
    texts: frozenset[str] = field(default_factory=frozenset)
    lists: frozenset[str] = field(default_factory=frozenset)  # comma-separated values
    button: bool = False

    def options(self) -> str:
        names = sorted(self.ints | self.floats | self.texts | self.lists)
        return ", ".join(f"--{n}" for n in names) or "none"


_IMAGE_OPTS = dict(
    ints=frozenset({"n", "seed", "steps"}),
    floats=frozenset({"guidance"}),
    texts=frozenset(
        {"size", "quality", "negative_prompt", "lora", "backend", "background", "output_format"}
    ),
)

_VIDEO_OPTS = dict(
    ints=frozenset({"fps", "seed", "steps"}),
    floats=frozenset({"seconds"}),
    texts=frozenset({"image", "backend", "size"}),
)

COMMANDS: list[Command] = [
    Command(
        "image",
        "image",
        "Make an image: /image a fox in the snow --size 1536x1024 --n 2",
        tool="generate_image",
        text_arg="prompt",
        button=True,
        **_IMAGE_OPTS,
    ),
    Command(
        "edit",
        "pencil",
        "Edit the latest image: /edit make the sky bluer [--image ID] [--mask ID]",
        tool="edit_image",
        text_arg="instruction",
        ints=frozenset({"seed"}),
        floats=frozenset({"strength"}),
        texts=frozenset({"image", "mask", "backend"}),
    ),
    Command(
        "variations",
        "copy",
        "More like an image: /variations [ID] --n 3",
        tool="variations",
        text_arg="image_id",
        ints=frozenset({"n"}),
    ),
    Command(
        "fork",
        "git-branch",
        "Redo an earlier image with changes: /fork ID --size 1536x1024 [--prompt ...]",
        tool="fork_image",
        text_arg="image_id",
        ints=frozenset({"n", "seed", "steps"}),
        floats=frozenset({"guidance"}),
        texts=frozenset({"size", "quality", "negative_prompt", "backend", "prompt"}),
    ),
    Command(
        "refine",
        "sparkles",
        "Improve a prompt, then draw it: /refine a red apple --style crayon",
        tool="refine_prompt",
        text_arg="prompt",
        ints=frozenset({"n"}),
        texts=frozenset({"style", "size"}),
    ),
    Command(
        "curate",
        "trophy",
        "Best of N: /curate an apple --n 6 --keep 2 --style crayon [--criteria centring,clip]",
        tool="curate_images",
        text_arg="prompt",
        ints=frozenset({"n", "keep"}),
        texts=frozenset({"style", "size"}),
        lists=frozenset({"criteria", "images"}),
    ),
    Command(
        "keep",
        "check",
        "Overrule a curation: /keep ID",
        tool="keep_image",
        text_arg="image_id",
    ),
    Command(
        "check",
        "scan-search",
        "Check an image's quality: /check [ID] [--style crayon]",
        tool="check_quality",
        text_arg="image_id",
        texts=frozenset({"style"}),
        lists=frozenset({"criteria"}),
    ),
    Command(
        "video",
        "clapperboard",
        "Make a clip: /video a fox running in snow [--image ID|latest] --seconds 5 --fps 24",
        tool="generate_video",
        text_arg="prompt",
        **_VIDEO_OPTS,
    ),
    Command(
        "animate",
        "film",
        "Animate the latest image: /animate the fox turns its head [--image ID] --seconds 4",
        tool="generate_video",
        text_arg="prompt",
        **_VIDEO_OPTS,
    ),
    Command(
        "estimate",
        "calculator",
        "Price a request first: /estimate 20 --quality high [--size ..] [--backend ..]",
        tool="estimate_cost",
        text_arg="n",
        floats=frozenset({"seconds"}),
        texts=frozenset({"quality", "size", "backend"}),
    ),
    Command(
        "train",
        "graduation-cap",
        "Train a LoRA from kept images: /train NAME --trigger TOK [--steps N] [--images id,id]"
        " · /train status · /train stop [NAME] · /train resume NAME",
        tool="train_lora",
        text_arg="name",
        ints=frozenset({"steps", "rank", "resolution"}),
        floats=frozenset({"lr"}),
        texts=frozenset({"trigger", "base", "backend", "licence", "destination"}),
        lists=frozenset({"images"}),
    ),
    Command("loras", "layers", "List your LoRAs with their trigger words and status"),
    Command("cost", "receipt", "Spending by day, model and backend, with a chart and CSV"),
    Command("styles", "palette", "List the style presets for /refine and /curate"),
    Command("backend", "server", "Switch backend/model: /backend replicate:owner/name"),
    Command("help", "circle-help", "What Atelier can do and how to use it"),
]
BY_ID = {command.id: command for command in COMMANDS}
# Options whose value may contain spaces run to the next option; others take one word.
_MULTI_WORD = {"prompt", "negative_prompt"}
_RENAMED = {"image": "image_id", "mask": "mask_id", "images": "image_ids"}
LATEST_IMAGE = "latest"  # `--image latest` (and /animate's default): the newest image

HELP = """**Commands**
- `/image <prompt>` makes an image. Options: `--size 1024x1024`, `--n 1-4`,
  `--quality low|medium|high`, `--seed N`, `--steps N`, `--guidance 7.5`,
  `--negative_prompt ...`, `--lora name:0.8`, `--background transparent`,
  `--output_format webp`, `--backend replicate:owner/name`.
- `/edit <instruction>` edits the latest image (or `--image ID`; `--mask ID` limits it).
- `/variations [ID] --n 3` makes more like an image; `/fork ID --size 1536x1024` redoes an
  earlier image with changes, keeping its history.
- `/refine <prompt> --style crayon` improves a prompt and draws it; `/styles` lists styles.
- `/curate <prompt> --n 6 --keep 2 --style crayon` makes candidates, scores them (text
  agreement, white background, centring, single object, sharpness, coverage) and keeps
  the best; `/keep ID` overrules it; `/check [ID]` scores one image.
- `/video <prompt>` makes a clip from words; `/animate <motion>` animates the latest image
  (or `--image ID`). Options: `--seconds 5`, `--fps 24`, `--seed N`, `--size WxH`,
  `--steps N` (local), `--backend local|replicate[:owner/name]`.
- `/estimate 20 --quality high` prices a request before you make it; `/cost` shows what
  this conversation and you have spent (chart and CSV). Budgets and the "ask before
  spending more than" threshold are in the settings panel.
- `/train NAME --trigger TOK [--steps 1000] [--images id,id] [--backend replicate
  --destination you/model]` trains a LoRA from the images you kept (or named) in the
  background, after showing its time/memory/cost estimate; `/train status`,
  `/train stop [NAME]`, `/train resume NAME`; `/loras` lists yours. Prompts containing a
  LoRA's trigger word use it on the local backend.
- `/backend openai|replicate[:owner/name]|local[:model]` switches this conversation's
  backend (also in the settings panel, next to the message box).
- Attach an image to edit it or start from it.

With a chat model configured you can just ask: *paint a lighthouse at dusk*, *make it
bluer*, *four variations of that*, *go back to the first one and make it wider*.
Every image, prompt and setting is saved with the conversation in the sidebar."""


def _tokens(text: str) -> list[tuple[str, str | None]]:
    """[(option name or "", value)] — "" marks words of the free text."""
    words = text.split()
    out: list[tuple[str, str | None]] = []
    i = 0
    while i < len(words):
        word = words[i]
        if not (word.startswith("--") and len(word) > 2):
            out.append(("", word))
            i += 1
            continue
        name, eq, inline = word[2:].partition("=")
        name = name.lower()
        if eq:
            value: str | None = inline
            i += 1
        elif name in _MULTI_WORD:
            j = i + 1
            while j < len(words) and not words[j].startswith("--"):
                j += 1
            value = " ".join(words[i + 1 : j]) or None
            i = j
        else:
            has_value = i + 1 < len(words) and not words[i + 1].startswith("--")
            value = words[i + 1] if has_value else None
            i += 2 if has_value else 1
        out.append((name, value))
    return out


def parse_args(command: Command, text: str) -> dict[str, Any]:
    """Split text into the free-text argument and `--flag value` options."""
    args: dict[str, Any] = {}
    rest: list[str] = []
    for name, value in _tokens(text):
        if not name:
            rest.append(value or "")
            continue
        if name not in command.ints | command.floats | command.texts | command.lists:
            raise InvalidInput(
                f"Unknown option --{name} for /{command.id}. Options: {command.options()}."
            )
        if value is None:
            raise InvalidInput(f"Option --{name} needs a value, e.g. --{name} 2.")
        if name in command.ints:
            if not re.fullmatch(r"\d{1,19}", value):
                raise InvalidInput(f"Option --{name} takes a whole number, not {value!r}.")
            args[name] = int(value)
        elif name in command.floats:
            try:
                args[name] = float(value)
            except ValueError:
                raise InvalidInput(f"Option --{name} takes a number, not {value!r}.") from None
        elif name in command.lists:
            args[_RENAMED.get(name, name)] = [v.strip() for v in value.split(",") if v.strip()]
        else:
            args[_RENAMED.get(name, name)] = value
    free = " ".join(rest).strip()
    if command.text_arg and free:
        args[command.text_arg] = free
    elif free:
        raise InvalidInput(f"/{command.id} takes no text, only options: {command.options()}.")
    return args


def split_slash(text: str) -> tuple[str, str]:
    """'/image a fox' -> ('image', 'a fox')."""
    name, _, rest = text[1:].partition(" ")
    return name.strip().lower(), rest.strip()


def chainlit_commands() -> list[dict[str, Any]]:
    return [
        {
            "id": c.id,
            "icon": c.icon,
            "description": c.description,
            "button": c.button,
            "persistent": False,
        }
        for c in COMMANDS
    ]


async def run(runtime: Runtime, ctx: ToolContext, name: str, text: str) -> None:
    command = BY_ID.get(name)
    if command is None:
        known = ", ".join(f"/{c.id}" for c in COMMANDS)
        raise InvalidInput(f"Unknown command /{name[:40]}. Commands: {known}.")
    if command.id == "help":
        await rendering.notice(HELP)
        return
    if command.id == "styles":
        await rendering.notice(
            "**Styles** (use with `/refine` or `/curate`: `--style NAME`)\n"
            + runtime.styles.describe()
        )
        return
    if command.id == "backend":
        await rendering.notice(await settings_panel.use_backend(runtime, text, ctx.user_id))
        return
    if command.id in ("train", "loras"):
        await _train(ctx, command, text)
        return
    if command.id == "cost":
        await cost_report.show(
            runtime.ledger,
            user_id=ctx.user_id,
            thread_id=ctx.thread_id,
            operator_limits=runtime.settings.operator_limits,
            days=cost_report.parse_days(text),
        )
        return
    args = parse_args(command, text)
    if command.id == "image" and "prompt" not in args:
        raise InvalidInput("Say what the image should show, e.g. /image a fox in the snow.")
    if command.id == "edit" and "instruction" not in args:
        raise InvalidInput("Say what to change, e.g. /edit make the sky bluer.")
    if command.id == "fork" and "image_id" not in args:
        raise InvalidInput("Name the image to fork from, e.g. /fork 1a2b3c4d --size 1536x1024.")
    if command.id == "refine" and "prompt" not in args:
        raise InvalidInput("Give a prompt to refine, e.g. /refine a red apple --style crayon.")
    if command.id == "animate":
        args.setdefault("image_id", LATEST_IMAGE)
    if "image_id" in args and args["image_id"] != LATEST_IMAGE:
        args["image_id"] = await _full_image_id(ctx, args["image_id"])
    if "mask_id" in args:
        args["mask_id"] = await _full_image_id(ctx, args["mask_id"])
    if "image_ids" in args:
        args["image_ids"] = [await _full_image_id(ctx, i) for i in args["image_ids"]]
    if command.id == "keep" and "image_id" not in args:
        raise InvalidInput("Name the candidate to keep, e.g. /keep 1a2b3c4d.")
    tools = {tool.name: tool for tool in build_tools(ctx)}
    await run_tool_call(tools, ctx, {"name": command.tool, "args": args, "id": "command"})


_TRAIN_RENAMED = {
    "trigger": "trigger_word",
    "lr": "learning_rate",
    "base": "base_model",
    "image_ids": "images",
}


async def _train(ctx: ToolContext, command: Command, text: str) -> None:
    """`/train NAME ...`, `/train status|stop [NAME]|resume NAME [--steps N]`, `/loras`."""
    word, _, rest = text.partition(" ")
    if command.id == "loras" or word.lower() == "status":
        await rendering.notice("**Your LoRAs**\n\n" + await train_lora.training_status(ctx))
        return
    tools = {tool.name: tool for tool in build_tools(ctx)}
    if word.lower() in ("stop", "resume"):
        name, _, options = rest.strip().partition(" ")
        args: dict[str, Any] = {"name": name} if name else {}
        if options.strip():
            steps = parse_args(BY_ID["train"], options).get("steps")
            if steps is None or set(parse_args(BY_ID["train"], options)) != {"steps"}:
                raise InvalidInput("/train resume NAME takes only --steps N.")
            args["steps"] = steps
        if word.lower() == "resume" and not name:
            raise InvalidInput("Name the training to resume: /train resume NAME.")
        tool = "stop_training" if word.lower() == "stop" else "resume_training"
        await run_tool_call(tools, ctx, {"name": tool, "args": args, "id": "command"})
        return
    args = parse_args(command, text)
    if "name" not in args:
        raise InvalidInput("Name the LoRA: /train NAME --trigger TOK (see /help).")
    if " " in args["name"]:
        raise InvalidInput(f"A LoRA name is one word; got {args['name']!r}.")
    args = {_TRAIN_RENAMED.get(key, key): value for key, value in args.items()}
    if "images" in args:
        args["images"] = [await _full_image_id(ctx, i) for i in args["images"]]
    await run_tool_call(tools, ctx, {"name": "train_lora", "args": args, "id": "command"})


async def _full_image_id(ctx: ToolContext, given: str) -> str:
    """Captions show 8-character ids; accept those for this conversation's images."""
    given = given.strip().strip("`")
    if len(given) >= 32:
        return given
    matches = [
        record.id
        for record in await ctx.images.for_thread(ctx.thread_id, ctx.user_id, limit=500)
        if record.id.startswith(given.lower())
    ]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise InvalidInput(f"No image in this conversation has an id starting with {given!r}.")
    raise InvalidInput(f"Several images start with {given!r}; give more of the id.")
