"""Slash-command parsing, in-process: what `/image a fox --n 2` becomes, and the message
each malformed command is refused with (the whole-app path is in test_chat_protocol.py).
"""

from __future__ import annotations

import pytest

from chat_app.commands import BY_ID, parse_args, split_slash
from core.errors import InvalidInput


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
    args = parse_args(
        BY_ID["image"], "a fox --n 2 in the snow --guidance 3.5 --size 1536x1024 --seed=7"
    )
    assert args == {
        "prompt": "a fox in the snow",
        "n": 2,
        "guidance": 3.5,
        "size": "1536x1024",
        "seed": 7,
    }


def test_multi_word_options_take_words_up_to_the_next_option():
    args = parse_args(BY_ID["image"], "a fox --negative_prompt blurry, dark --n 1")
    assert args == {"prompt": "a fox", "negative_prompt": "blurry, dark", "n": 1}


def test_renamed_and_list_options():
    edit = parse_args(BY_ID["edit"], "make the sky bluer --image abc123 --mask def456")
    assert edit == {"instruction": "make the sky bluer", "image_id": "abc123", "mask_id": "def456"}
    curate = parse_args(BY_ID["curate"], "an apple --n 6 --keep 2 --criteria centring, clip")
    assert curate["criteria"] == ["centring"]  # a space ends the value
    curate = parse_args(BY_ID["curate"], "an apple --criteria centring,,clip")
    assert curate == {"prompt": "an apple", "criteria": ["centring", "clip"]}


def test_option_names_are_case_insensitive():
    assert parse_args(BY_ID["image"], "a fox --N 3") == {"prompt": "a fox", "n": 3}


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
    ],
)
def test_bad_options_are_refused_naming_the_option(command, text, message):
    with pytest.raises(InvalidInput) as refused:
        parse_args(BY_ID[command], text)
    assert message in refused.value.message


def test_unknown_option_lists_what_the_command_takes():
    with pytest.raises(InvalidInput) as refused:
        parse_args(BY_ID["variations"], "abc --size 1024x1024")
    assert refused.value.message == "Unknown option --size for /variations. Options: --n."


def test_a_huge_number_is_refused_not_parsed():
    with pytest.raises(InvalidInput, match="whole number"):
        parse_args(BY_ID["image"], "a fox --seed " + "9" * 40)
