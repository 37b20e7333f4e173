"""A tool declared once: its arguments model is the schema, the validation and the command.

Each tool module builds one `Tool` from a pydantic model of its arguments, a
description and a coroutine `run(ctx, args)`. From that one declaration come

- the schema the chat model is shown (computed once per process, not per turn),
- the validation of a model's call and of a script's call (`await tool(ctx, ...)`),
- the parsing of its slash commands (`/edit make it bluer --image 1a2b3c4d`): every
  field is an option `--field value`, typed by its annotation, unless `Option` says
  otherwise, so `/edit` and the agent's `edit_image` cannot take different arguments,
- the command's line in `/help`.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Generic, Literal, TypeVar

from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel, ValidationError

from core.errors import InvalidInput
from tools.context import ToolArtifact, ToolContext

ArgsT = TypeVar("ArgsT", bound=BaseModel)
ToolResult = tuple[str, ToolArtifact]  # (text for the model, artifact for the person)
Kind = Literal["int", "float", "bool", "list", "text"]
_TRUE, _FALSE = {"yes", "true", "on", "1"}, {"no", "false", "off", "0"}


@dataclass(frozen=True)
class Option:
    """How a field is typed after a command, where `--field_name value` is not enough.

    Put it in the field's annotation: `Annotated[str | None, Option(flag="image",
    image=True)]`. Pydantic keeps it out of the model-facing schema.
    """

    flag: str | None = None  # the option's name when it differs from the field's
    words: bool = False  # the value runs to the next option (prompts), not one word
    image: bool = False  # an image id: the 8-character ids shown in captions are accepted
    preset_only: bool = False  # set by the command itself (`/batch pause`), never typed


@dataclass(frozen=True)
class Command:
    """A slash command for a tool: which field its free text fills, and how it is shown."""

    name: str  # "edit"; "train stop" for a sub-command typed as two words
    icon: str  # a Lucide icon name for Chainlit's command menu
    summary: str  # the menu's line, with an example
    text: str | None = None  # the field the free text becomes
    needs_text: str | None = None  # the refusal when a required free text is missing
    preset: Mapping[str, Any] = field(default_factory=dict)  # defaults its options may change
    button: bool = False  # shown as a button beside the message box


@dataclass(frozen=True)
class CommandOption:
    field: str
    kind: Kind
    words: bool
    image: bool
    preset_only: bool = False


@dataclass(frozen=True)
class Tool(Generic[ArgsT]):
    name: str
    description: str
    args: type[ArgsT]
    run: Callable[[ToolContext, ArgsT], Awaitable[ToolResult]]
    commands: tuple[Command, ...] = ()

    @cached_property
    def schema(self) -> dict[str, Any]:
        """The OpenAI function-calling schema, built once (bind_tools takes it as is)."""
        schema = convert_to_openai_tool(self.args)
        schema["function"]["name"] = self.name
        schema["function"]["description"] = self.description
        _omit_optional_nulls(schema["function"]["parameters"])
        return schema

    def validate(self, raw: Mapping[str, Any]) -> ArgsT:
        try:
            return self.args.model_validate(dict(raw))
        except ValidationError as exc:
            raise InvalidInput(describe_validation(self.name, exc)) from None

    async def __call__(self, ctx: ToolContext, *positional: Any, **raw: Any) -> ToolResult:
        """Run from a script or a test: positional values fill fields in declared order."""
        names = list(self.args.model_fields)
        if len(positional) > len(names):
            raise TypeError(f"{self.name} takes at most {len(names)} positional arguments")
        return await self.run(
            ctx, self.validate({**dict(zip(names, positional, strict=False)), **raw})
        )

    @cached_property
    def options(self) -> dict[str, CommandOption]:
        """Option flag -> the field it sets, for every field of the arguments model."""
        out: dict[str, CommandOption] = {}
        for name, info in self.args.model_fields.items():
            option = next((m for m in info.metadata if isinstance(m, Option)), Option())
            out[option.flag or name] = CommandOption(
                name, _kind(info.annotation), option.words, option.image, option.preset_only
            )
        return out

    def image_fields(self) -> set[str]:
        return {o.field for o in self.options.values() if o.image}

    def command_options(self, command: Command) -> dict[str, CommandOption]:
        return {
            flag: o
            for flag, o in self.options.items()
            if o.field != command.text and not o.preset_only
        }

    def parse(self, command: Command, text: str) -> dict[str, Any]:
        """`a fox --n 2 --size 1536x1024` -> {"prompt": "a fox", "n": 2, "size": ...}."""
        options = self.command_options(command)
        listed = ", ".join(f"--{flag}" for flag in sorted(options)) or "none"
        args: dict[str, Any] = dict(command.preset)
        rest: list[str] = []
        for flag, value in _tokens(text, {f for f, o in options.items() if o.words}):
            if not flag:
                rest.append(value or "")
                continue
            option = options.get(flag)
            if option is None:
                raise InvalidInput(
                    f"Unknown option --{flag} for /{command.name}. Options: {listed}."
                )
            if value is None:
                raise InvalidInput(f"Option --{flag} needs a value, e.g. --{flag} 2.")
            args[option.field] = _typed(flag, option.kind, value)
        free = " ".join(rest).strip()
        if command.text and free:
            args[command.text] = free
        elif free:
            raise InvalidInput(f"/{command.name} takes no text, only options: {listed}.")
        elif command.text and command.text not in args and self._required(command.text):
            raise InvalidInput(
                command.needs_text or f"/{command.name} needs {command.text}: {command.summary}"
            )
        return args

    def _required(self, name: str) -> bool:
        return self.args.model_fields[name].is_required()

    def help_line(self, command: Command) -> str:
        flags = ", ".join(f"`--{flag}`" for flag in self.command_options(command))
        return f"- `/{command.name}` {command.summary}" + (f" Options: {flags}." if flags else "")


def describe_validation(name: str, exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "arguments"
        problems.append(f"{where}: {error['msg']}")
    return f"{name} got invalid arguments ({'; '.join(problems)})."


def _kind(annotation: Any) -> Kind:
    """int, float, bool, list or text, looking through `X | None` and Annotated."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is list:
        return "list"
    if annotation is bool:
        return "bool"
    if annotation is int:
        return "int"
    if annotation is float:
        return "float"
    return "text"


def _typed(flag: str, kind: Kind, value: str) -> Any:
    if kind == "int":
        if not re.fullmatch(r"\d{1,19}", value):
            raise InvalidInput(f"Option --{flag} takes a whole number, not {value!r}.")
        return int(value)
    if kind == "float":
        try:
            return float(value)
        except ValueError:
            raise InvalidInput(f"Option --{flag} takes a number, not {value!r}.") from None
    if kind == "bool":
        if value.lower() not in _TRUE | _FALSE:
            raise InvalidInput(f"Option --{flag} takes yes or no, not {value!r}.")
        return value.lower() in _TRUE
    if kind == "list":
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


def _tokens(text: str, multi_word: set[str]) -> list[tuple[str, str | None]]:
    """[(option flag or "", value)]; "" marks words of the free text."""
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
        elif name in multi_word:
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


def _omit_optional_nulls(parameters: dict[str, Any]) -> None:
    """An optional argument as a plain type the model leaves out, not "X or null".

    pydantic writes `field: X | None = None` as `anyOf: [X, null]` with `default: null`.
    Not being required already says the model may leave it out (and validation fills in
    None), so the null branch only adds tokens: a fifth of the tools' JSON, which is
    sent, paid for and encoded with every model call.
    """
    required = set(parameters.get("required", ()))
    for name, prop in parameters.get("properties", {}).items():
        branches = prop.get("anyOf")
        if name in required or prop.get("default", ...) is not None or not branches:
            continue
        kept = [branch for branch in branches if branch != {"type": "null"}]
        if len(kept) == 1 and len(branches) == 2:
            del prop["anyOf"], prop["default"]
            prop.update(kept[0])
