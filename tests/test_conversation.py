"""The agent's memory, in-process: how saved steps and images become the model's messages
(chat_app/conversation.py). The records are stand-ins with the attributes it reads."""

from __future__ import annotations

from types import SimpleNamespace

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from chat_app.conversation import (
    MAX_HISTORY_STEPS,
    MAX_IMAGES_LISTED,
    build_messages,
    describe_images,
    describe_loras,
    history_from_steps,
)


def _image(number: int, **changes: object) -> SimpleNamespace:
    return SimpleNamespace(
        **{
            "id": f"img-{number}",
            "backend": "openai",
            "model": "gpt-image-1.5",
            "seed": None,
            "prompt_sent": f"a fox, take {number}",
            "parameters": {},
            "parent_id": None,
            "width": 1024,
            "height": 1024,
            **changes,
        }
    )


def test_history_keeps_turns_and_tool_results_in_order_without_the_current_message():
    steps = [
        {"id": "1", "type": "user_message", "output": "draw a fox"},
        {"id": "2", "type": "tool", "name": "generate_image", "output": "made img-1"},
        {"id": "3", "type": "assistant_message", "output": "Here is your fox."},
        {"id": "4", "type": "tool", "name": "edit_image", "output": "no image", "isError": True},
        {"id": "5", "type": "run", "output": "ignored: not a turn"},
        {"id": "6", "type": "user_message", "output": "   "},  # empty: skipped
        {"id": "7", "type": "user_message", "output": "make it bluer"},
    ]
    history = history_from_steps(steps, current_message_id="7")
    assert [(type(m), m.content) for m in history] == [
        (HumanMessage, "draw a fox"),
        (AIMessage, "[generate_image result] made img-1"),
        (AIMessage, "Here is your fox."),
        (AIMessage, "[edit_image failed] no image"),
    ]


def test_history_is_capped_to_the_latest_steps():
    steps = [{"id": str(i), "type": "user_message", "output": f"m{i}"} for i in range(100)]
    history = history_from_steps(steps, current_message_id=None)
    assert len(history) == MAX_HISTORY_STEPS
    assert history[-1].content == "m99"


def test_images_are_listed_oldest_first_with_ids_lineage_and_verdicts():
    images = [
        _image(1, seed=42),
        _image(2, parent_id="img-1"),
        _image(3, backend="upload", parameters={"filename": "cat.png"}),
    ]
    text = describe_images(images, {"img-2": ("kept", 1, "cur12345-6789", 0.876)})
    lines = text.splitlines()
    assert "the last one is the most recent" in lines[0]
    assert lines[1].startswith("1. id=img-1 size=1024x1024 backend=openai")
    assert "seed=42 prompt='a fox, take 1'" in lines[1]
    assert "derived_from=img-1 curation=cur12345 candidate_rank=1 kept score=0.88" in lines[2]
    assert lines[3] == "3. id=img-3 size=1024x1024 uploaded by the user (cat.png)"


def test_no_images_is_said_and_long_lists_keep_the_latest():
    assert describe_images([]) == "This conversation has no images yet."
    many = [_image(i) for i in range(MAX_IMAGES_LISTED + 5)]
    lines = describe_images(many).splitlines()[1:]
    assert len(lines) == MAX_IMAGES_LISTED
    assert f"id=img-{MAX_IMAGES_LISTED + 4} " in lines[-1]


def test_loras_say_how_to_use_them():
    assert describe_loras([]) == ""
    loras = [
        SimpleNamespace(name="dog", trigger_word="DOG", status="succeeded", replicate_version=None),
        SimpleNamespace(
            name="ink", trigger_word="INK", status="succeeded", replicate_version="me/ink:abc"
        ),
    ]
    text = describe_loras(loras)
    assert "- dog trigger=DOG succeeded lora=dog (local; auto-applied" in text
    assert "- ink trigger=INK succeeded backend=replicate:me/ink:abc" in text


def test_build_messages_puts_context_in_the_system_prompt_then_history_then_the_request():
    history = [HumanMessage(content="draw a fox"), AIMessage(content="Here it is.")]
    messages = build_messages(history, [_image(1)], "make it bluer", styles=["crayon", "ink"])
    system, *middle, last = messages
    assert isinstance(system, SystemMessage)
    assert "(styles: crayon, ink)" in system.content and "{styles}" not in system.content
    assert "1. id=img-1 " in system.content
    assert middle == history
    assert isinstance(last, HumanMessage) and last.content == "make it bluer"
    assert "(styles: none)" in build_messages([], [], "hi")[0].content
