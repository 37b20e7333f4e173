"""Slash-command parsing, in-process: what `/image a fox --n 2` becomes, and the message
each malformed command is refused with (the whole-app path is in test_chat_protocol.py).

Commands are found with `tools.registry.find_command` and parsed by the tool they run
(`Tool.parse`), so each command's options are its tool's arguments model.
"""

from __future__ import annotations

from typing import Any

import pytest

from chat_app.commands import CHAT_COMMANDS, help_text, split_slash
from core.errors import InvalidInput
from tools import registry
from tools.edit_image import EditImageArgs, edit_image


def parse(name: str, text: str) -> dict[str, Any]:
    """`/name text` as the chat parses it: the command, then its tool's options."""
    found = registry.find_command(name, text)
    assert found is not None, f"no command /{name}"
    command, tool, rest = found
    return tool.parse(command, rest)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/image a fox in the snow", ("image", "a fox in the snow")),
        ("/IMAGE  a fox ", ("image", "a fox")),
        ("/help", ("help", "")),
        ("/train status", ("train", "status")),
    ],
)
def test_split_slash_names_the_command_and_keeps_the_rest(text, expected):
    assert split_slash(text) == expected


def test_image_options_are_typed_and_the_free_text_is_the_prompt():
    args = parse("image", "a fox --n 2 in the snow --guidance 3.5 --size 1536x1024 --seed=7")
    assert args == {
        "prompt": "a fox in the snow",
        "n": 2,
        "guidance": 3.5,
        "size": "1536x1024",
        "seed": 7,
    }


def test_multi_word_options_take_words_up_to_the_next_option():
    args = parse("image", "a fox --negative_prompt blurry, dark --n 1")
    assert args == {"prompt": "a fox", "negative_prompt": "blurry, dark", "n": 1}


def test_renamed_and_list_options():
    edit = parse("edit", "make the sky bluer --image abc123 --mask def456")
    assert edit == {"instruction": "make the sky bluer", "image_id": "abc123", "mask_id": "def456"}
    edit = parse("edit", "put them together --extra abc123,def456")
    assert edit == {"instruction": "put them together", "extra_image_ids": ["abc123", "def456"]}
    curate = parse("curate", "an apple --n 6 --keep 2 --criteria centring, clip")
    assert curate["criteria"] == ["centring"]  # a space ends the value
    curate = parse("curate", "an apple --criteria centring,,clip")
    assert curate == {"prompt": "an apple", "criteria": ["centring", "clip"]}
    curate = parse("curate", "--images abc123,def456 --keep 1")
    assert curate == {"image_ids": ["abc123", "def456"], "keep": 1}


def test_yes_no_options_are_booleans():
    assert parse("refine", "an apple --generate no") == {"prompt": "an apple", "generate": False}
    assert parse("refine", "an apple --generate yes")["generate"] is True
    with pytest.raises(InvalidInput, match="Option --generate takes yes or no, not 'maybe'."):
        parse("refine", "an apple --generate maybe")


def test_option_and_sub_command_names_are_case_insensitive():
    assert parse("image", "a fox --N 3") == {"prompt": "a fox", "n": 3}
    assert parse("train", "RESUME inkfox --Steps 12") == {"name": "inkfox", "steps": 12}


def test_sub_commands_are_their_own_tools():
    stop = registry.find_command("train", "stop inkfox")
    train = registry.find_command("train", "mystyle --trigger TOK")
    assert stop is not None and train is not None
    assert (stop[0].name, stop[1].name, stop[2]) == ("train stop", "stop_training", "inkfox")
    assert (train[0].name, train[1].name) == ("train", "train_lora")
    assert parse("train", "mystyle --trigger TOK") == {"name": "mystyle", "trigger_word": "TOK"}
    assert registry.find_command("teleport", "to mars") is None


@pytest.mark.parametrize(
    ("command", "text", "message"),
    [
        ("image", "a fox --teleport yes", "Unknown option --teleport for /image. Options: "),
        ("image", "a fox --n", "Option --n needs a value, e.g. --n 2."),
        ("image", "a fox --n two", "Option --n takes a whole number, not 'two'."),
        ("image", "a fox --n -1", "Option --n takes a whole number, not '-1'."),
        ("image", "a fox --seed 1.5", "Option --seed takes a whole number, not '1.5'."),
        ("image", "a fox --guidance lots", "Option --guidance takes a number, not 'lots'."),
        ("video", "waves --fps fast", "Option --fps takes a whole number, not 'fast'."),
        ("image", "--n 2", "Say what the image should show, e.g. /image a fox in the snow."),
    ],
)
def test_bad_options_are_refused_naming_the_option(command, text, message):
    with pytest.raises(InvalidInput) as refused:
        parse(command, text)
    assert message in refused.value.message


def test_unknown_option_lists_what_the_command_takes():
    with pytest.raises(InvalidInput) as refused:
        parse("variations", "abc --size 1024x1024")
    assert refused.value.message == "Unknown option --size for /variations. Options: --n."


def test_a_sub_commands_unknown_option_names_its_own_options():
    with pytest.raises(InvalidInput) as refused:
        parse("train", "resume NAME --bogus 1")
    assert refused.value.message == "Unknown option --bogus for /train resume. Options: --steps."


def test_a_huge_number_is_refused_not_parsed():
    with pytest.raises(InvalidInput, match="whole number"):
        parse("image", "a fox --seed " + "9" * 40)


# What each kind of option is given in the test below, and what it must parse to.
SAMPLE = {
    "int": ("2", 2),
    "float": ("0.5", 0.5),
    "bool": ("no", False),
    "list": ("a,b", ["a", "b"]),
}


def test_every_command_takes_exactly_its_tools_arguments():
    """Each field of a tool's arguments model is an option of its command (the free text
    and the fields the command itself sets aside), typed as the model types it; and /help
    lists those options."""
    edit = next(command for command, tool in registry.commands() if tool is edit_image)
    options = edit_image.command_options(edit)
    free_text = {"instruction"}
    assert {o.field for o in options.values()} == set(EditImageArgs.model_fields) - free_text
    assert set(options) == {"image", "mask", "extra", "strength", "seed", "backend"}
    shown = help_text()
    for command, tool in registry.commands():
        options = tool.command_options(command)
        preset_only = {o.field for o in tool.options.values() if o.preset_only}
        assert {o.field for o in options.values()} == (
            set(tool.args.model_fields) - {command.text} - preset_only
        )
        assert not preset_only - set(command.preset)  # the command itself sets them
        text = "x" if command.text else ""
        for flag, option in options.items():
            typed, value = SAMPLE.get(option.kind, ("word", "word"))
            args = tool.parse(command, f"{text} --{flag} {typed}".strip())
            assert args[option.field] == value, (command.name, flag)
        line = tool.help_line(command)
        assert line in shown and f"`/{command.name}`" in line
        assert all(f"`--{flag}`" in line for flag in options), line
    for chat_command in CHAT_COMMANDS:
        assert f"`/{chat_command.name}`" in shown


def test_a_sub_command_cannot_be_turned_into_another_by_an_option():
    """`/batch pause ID --action stop` must not stop the batch: the action is the
    command's own, so typing it is an unknown option."""
    assert parse("batch", "pause 1a2b3c4d")["action"] == "pause"
    with pytest.raises(InvalidInput, match="Unknown option --action"):
        parse("batch", "pause 1a2b3c4d --action stop")
    with pytest.raises(InvalidInput, match="Unknown option --action"):
        parse("schedule", "pause 1a2b3c4d --action delete")
