"""Object-type templates: the built-in file, choosing by the item's words, a user's file.

The wording is what keeps a batch uniform (one whole object, centred, on white), so the
built-in templates are checked for it; choice is checked on labels people actually write.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigError, InvalidInput
from tools.batch_items import parse_list
from tools.object_templates import TemplateLibrary

TYPES = [
    "animal",
    "building",
    "clothing",
    "food",
    "household",
    "instrument",
    "object",
    "plant",
    "tool",
    "toy",
    "vehicle",
]


@pytest.fixture(scope="module")
def library() -> TemplateLibrary:
    return TemplateLibrary.builtin()


def test_the_builtin_types_and_their_wording(library: TemplateLibrary) -> None:
    assert library.names() == TYPES
    for name in TYPES:
        template = library.get(name)
        wording = template.template
        assert wording.count("{object}") == 1
        for phrase in ("a single", "centred", "not cropped", "plain white background"):
            assert phrase in wording, (name, phrase)
        assert "no text" in wording
        assert name == "object" or len(template.keywords) >= 20


def test_apply_puts_the_item_into_the_wording(library: TemplateLibrary) -> None:
    prompt = library.get("animal").apply("  A red fox. ")
    assert prompt.startswith("a single red fox, the whole animal")
    assert library.get("object").apply("the moon").startswith("a single moon, ")


@pytest.mark.parametrize(
    ("label", "kind"),
    [
        ("apple", "food"),
        ("apples", "food"),
        ("Cherries", "food"),
        ("tomatoes", "food"),
        ("knives", "household"),
        ("boxes", "household"),
        ("a cup of tea", "household"),
        ("slice of cake", "food"),
        ("loaves of bread", "food"),
        ("wolves", "animal"),
        ("mice", "animal"),
        ("a cat on a mat", "animal"),
        ("teddy bear", "toy"),
        ("teddy bears", "toy"),
        ("toy car", "toy"),
        ("red fire truck", "vehicle"),
        ("police cars", "vehicle"),
        ("apple tree", "plant"),
        ("leaves", "plant"),
        ("glasses", "clothing"),
        ("T-shirts", "clothing"),
        ("magnifying glass", "tool"),
        ("hammers", "tool"),
        ("ukuleles", "instrument"),
        ("lighthouse", "building"),
        ("houses", "building"),
        ("spaceship", "object"),
        ("", "object"),
    ],
)
def test_choose_by_keyword_tolerates_plurals(
    library: TemplateLibrary, label: str, kind: str
) -> None:
    assert library.choose(label).name == kind


def test_a_typed_list_gets_a_template_per_item(library: TemplateLibrary) -> None:
    items = parse_list("- 3 apples\n- a red bus\n- a wooden spoon\n- zebra\n- a comet")
    assert [library.choose(i.label).name for i in items] == [
        "food",
        "vehicle",
        "household",
        "animal",
        "object",
    ]


def test_no_keyword_belongs_to_two_builtin_types(library: TemplateLibrary) -> None:
    seen: dict[str, str] = {}
    for name in library.names():
        for keyword in library.get(name).keywords:
            assert seen.setdefault(keyword, name) == name, keyword


@pytest.mark.parametrize(
    ("asked", "name"),
    [
        ("animal", "animal"),
        ("Animals", "animal"),
        ("household object", "household"),
        ("household_object", "household"),
        ("musical instrument", "instrument"),
        ("generic", "object"),
    ],
)
def test_get_by_name_and_common_spellings(library: TemplateLibrary, asked: str, name: str) -> None:
    assert library.get(asked).name == name


def test_get_an_unknown_name_lists_the_names(library: TemplateLibrary) -> None:
    with pytest.raises(InvalidInput) as error:
        library.get("spaceships")
    assert "'spaceships'" in str(error.value)
    assert "animal, building, clothing" in str(error.value)


# ---------------------------------------------------------------------- user's file


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "templates.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_user_file_adds_types_and_replaces_builtin_ones(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[spacecraft]
description = "Rockets and satellites"
keywords = ["spaceship", "satellite", "space station", "rocket"]
template = "one {object} floating alone on pure white, no stars, no text"

["Household Object"]
keywords = ["teapot"]
template = "a lone {object} on white"
""",
    )
    library = TemplateLibrary.load(path)
    assert library.names() == sorted([*TYPES, "spacecraft"])
    assert library.get("household").template == "a lone {object} on white"
    assert library.choose("spaceships").name == "spacecraft"
    # the user's keyword wins over the built-in vehicle "rocket"
    assert library.choose("rockets").name == "spacecraft"
    assert library.choose("a teapot").apply("a teapot") == "a lone teapot on white"
    assert library.choose("spoons").name == "object"  # built-in household was replaced
    assert TemplateLibrary.load(None).names() == TYPES


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[toy\n", "is not valid TOML"),
        ("toy = 3\n", "Template 'toy' in"),
        ('[toy]\ntemplate = "a toy"\n', "needs a template string containing {object}"),
        ('[toy]\ntemplate = "{object}"\ncolour = "red"\n', "unknown keys: ['colour']"),
        ('[toy]\ntemplate = "{object}"\nkeywords = "ball"\n', "keywords must be a list"),
        ('[toy]\ntemplate = "{object}"\nkeywords = ["ball", ""]\n', "keywords must be a list"),
        ('[toy]\ntemplate = "{object}"\ndescription = 3\n', "description must be a string"),
        (
            '[a]\ntemplate = "{object}"\nkeywords = ["ball"]\n'
            '[b]\ntemplate = "{object}"\nkeywords = ["Ball"]\n',
            "keyword 'ball' is also a keyword of 'a'",
        ),
    ],
)
def test_a_bad_user_file_stops_start_up_naming_file_and_entry(
    tmp_path: Path, text: str, says: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        TemplateLibrary.load(path)
    assert says in str(error.value) and str(path) in str(error.value)


def test_a_missing_user_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Cannot read the templates file"):
        TemplateLibrary.load(tmp_path / "nope.toml")
