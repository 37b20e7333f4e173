"""The tools' function schemas as the chat model is shown them, and what it may send."""

from __future__ import annotations

import json

import pytest

from core.errors import InvalidInput
from tools.registry import BY_NAME, schemas


def test_optional_arguments_are_plain_types_and_the_required_stay_required() -> None:
    generate = BY_NAME["generate_image"].schema["function"]["parameters"]
    assert generate["required"] == ["prompt"]
    assert generate["properties"]["size"] == {
        "description": generate["properties"]["size"]["description"],
        "type": "string",
    }
    kind = BY_NAME["find_images"].schema["function"]["parameters"]["properties"]["kind"]
    assert kind["type"] == "string" and kind["enum"] == ["image", "video"]
    assert "null" not in json.dumps(schemas())  # no "X or null" left anywhere


def test_a_model_that_sends_null_or_leaves_an_argument_out_is_understood() -> None:
    tool = BY_NAME["generate_image"]
    left_out = tool.validate({"prompt": "a fox"})
    sent_null = tool.validate({"prompt": "a fox", "size": None, "seed": None})
    assert left_out == sent_null and left_out.size is None and left_out.seed is None
    with pytest.raises(InvalidInput, match="seed"):
        tool.validate({"prompt": "a fox", "seed": "soon"})
