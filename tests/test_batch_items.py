"""Batch items from a typed list or an attached .txt/.csv, as a person would send them.

Every refusal must say which row and which column to fix: the list is checked before the
estimate, so a bad row is a message, not a failure halfway through a paid batch.
"""

from __future__ import annotations

import pytest

from core.errors import InvalidInput
from tools.batch_items import MAX_ITEMS, ItemSpec, parse_file, parse_list


def labels(items: list[ItemSpec]) -> list[str]:
    return [item.label for item in items]


# ------------------------------------------------------------------------ typed lists


def test_one_item_per_line_with_bullets_and_numbers_dropped() -> None:
    text = "- apple\n* red bicycle\n\n1. teddy bear\n2) lighthouse\n• cat\n   \n10. owl"
    assert labels(parse_list(text)) == [
        "apple",
        "red bicycle",
        "teddy bear",
        "lighthouse",
        "cat",
        "owl",
    ]


def test_a_single_line_splits_on_commas_and_semicolons() -> None:
    assert labels(parse_list("apple, banana;cherry ,  dog")) == ["apple", "banana", "cherry", "dog"]


def test_commas_inside_lines_of_a_multi_line_list_stay() -> None:
    text = "a red apple, shiny\na green pear"
    assert labels(parse_list(text)) == ["a red apple, shiny", "a green pear"]


def test_duplicates_are_kept_and_defaults_are_plain() -> None:
    items = parse_list("apple\napple")
    assert items == [ItemSpec("apple"), ItemSpec("apple")]
    assert items[0].count == 1 and items[0].seed is None and items[0].style is None


def test_numbers_that_are_part_of_the_object_stay() -> None:
    assert labels(parse_list("1.5 litre bottle\n3D printer\n7up can")) == [
        "1.5 litre bottle",
        "3D printer",
        "7up can",
    ]


def test_whitespace_and_control_characters_are_collapsed() -> None:
    assert labels(parse_list("big\t\tred   \x07balloon\nok")) == ["big red balloon", "ok"]


def test_an_empty_list_is_refused() -> None:
    with pytest.raises(InvalidInput, match="no items"):
        parse_list(" \n - \n\n")


def test_a_label_over_300_characters_is_refused_naming_it() -> None:
    with pytest.raises(InvalidInput, match=r"Item 2 is 301 characters long.*300"):
        parse_list("apple\n" + "x" * 301)
    assert len(parse_list("y" * 300)[0].label) == 300


def test_more_than_max_items_is_refused() -> None:
    assert len(parse_list("\n".join(f"thing {i}" for i in range(MAX_ITEMS)))) == 1000
    with pytest.raises(InvalidInput, match="1001 items; a batch takes at most 1000"):
        parse_list("\n".join(f"thing {i}" for i in range(MAX_ITEMS + 1)))
    with pytest.raises(InvalidInput, match="at most 3"):
        parse_list("a\nb\nc\nd", max_items=3)


def test_formula_like_text_is_kept_as_text() -> None:
    assert labels(parse_list('=HYPERLINK("http://x")\n+cmd\n@sum')) == [
        '=HYPERLINK("http://x")',
        "+cmd",
        "@sum",
    ]


# ------------------------------------------------------------------------------ files


def test_a_txt_file_reads_like_a_typed_list_with_or_without_bom() -> None:
    data = "\ufeffapple\r\nbanana\r\n".encode()
    assert labels(parse_file("objects.txt", data)) == ["apple", "banana"]
    assert labels(parse_file("OBJECTS.TXT", b"cat, dog")) == ["cat", "dog"]


def test_a_csv_with_every_column() -> None:
    data = (
        "\ufeffObject,Style,Size,Count,Seed,Template\r\n"
        "apple,crayon,1024x1024,2,42,food\r\n"
        '"teddy bear, brown",,512 X 768,,,\r\n'
        ",,,,,\r\n"
        "rocket,watercolour,,10,4294967295,\r\n"
    ).encode()
    assert parse_file("list.csv", data) == [
        ItemSpec("apple", style="crayon", size="1024x1024", count=2, seed=42, template="food"),
        ItemSpec("teddy bear, brown", size="512x768"),
        ItemSpec("rocket", style="watercolour", count=10, seed=4294967295),
    ]


@pytest.mark.parametrize("column", ["object", "item", "label", "prompt", "Item", " LABEL "])
def test_the_object_column_may_have_any_of_its_names(column: str) -> None:
    data = f"{column},count\nowl,3\n".encode()
    assert parse_file("x.csv", data) == [ItemSpec("owl", count=3)]


def test_a_one_column_csv_needs_no_header() -> None:
    assert labels(parse_file("x.csv", b"apple\nbanana\n")) == ["apple", "banana"]
    assert labels(parse_file("x.csv", b"object\napple\n")) == ["apple"]


def test_semicolon_and_tab_separated_files_from_spreadsheets() -> None:
    assert parse_file("x.csv", b"object;count\napple;2\n") == [ItemSpec("apple", count=2)]
    assert parse_file("x.csv", b"object\tseed\napple\t7\n") == [ItemSpec("apple", seed=7)]


def test_a_multi_column_csv_without_a_header_is_refused() -> None:
    with pytest.raises(InvalidInput, match=r"row 1 must name the columns.*'apple', '2'"):
        parse_file("x.csv", b"apple,2\nbanana,3\n")


def test_unknown_or_repeated_columns_are_refused() -> None:
    with pytest.raises(InvalidInput, match="column 'notes' is not one I read"):
        parse_file("x.csv", b"object,notes\napple,red\n")
    with pytest.raises(InvalidInput, match="2 object columns"):
        parse_file("x.csv", b"object,label\napple,red\n")
    with pytest.raises(InvalidInput, match="'seed' appears twice"):
        parse_file("x.csv", b"object,seed,seed\napple,1,2\n")


@pytest.mark.parametrize(
    ("cell", "column", "says"),
    [
        ("count", "0", "row 3, column count: '0' is not a whole number from 1 to 10"),
        ("count", "11", "column count: '11' is not a whole number from 1 to 10"),
        ("count", "2.5", "column count: '2.5'"),
        ("count", "two", "column count: 'two'"),
        ("seed", "-1", "row 3, column seed: '-1' is not a whole number from 0 to 4294967295"),
        ("seed", "4294967296", "(2**32-1)"),
        ("size", "big", "row 3, column size: 'big' is not a size; write WIDTHxHEIGHT"),
        ("size", "1024", "column size: '1024'"),
        ("size", "0x512", "column size: '0x512'"),
    ],
)
def test_a_bad_cell_names_row_and_column(cell: str, column: str, says: str) -> None:
    data = f"object,{cell}\napple,\npear,{column}\n".encode()
    with pytest.raises(InvalidInput) as error:
        parse_file("list.csv", data)
    assert says in str(error.value) and "list.csv" in str(error.value)


def test_a_row_without_its_object_or_with_extra_cells_is_refused() -> None:
    with pytest.raises(InvalidInput, match="row 3, column item: the object is empty"):
        parse_file("x.csv", b"item,style\napple,crayon\n,crayon\n")
    with pytest.raises(InvalidInput, match="row 2: 3 cells, but the header names 2"):
        parse_file("x.csv", b"object,count\napple,1,oops\n")


def test_a_csv_over_the_limit_is_refused() -> None:
    rows = "\n".join(f"thing {i},1" for i in range(MAX_ITEMS + 5))
    with pytest.raises(InvalidInput, match="1005 items; a batch takes at most 1000"):
        parse_file("x.csv", f"object,count\n{rows}\n".encode())


def test_csv_cells_that_look_like_formulas_are_text() -> None:
    data = b"object,style\n\"=cmd|' /C calc'!A0\",crayon\n"
    assert labels(parse_file("x.csv", data)) == ["=cmd|' /C calc'!A0"]


def test_other_files_and_other_encodings_are_refused() -> None:
    with pytest.raises(InvalidInput, match=r"'list.xlsx' is not a list I can read.*\.csv"):
        parse_file("list.xlsx", b"PK\x03\x04")
    with pytest.raises(InvalidInput, match="not UTF-8"):
        parse_file("list.txt", "pomme, crème brûlée".encode("latin-1"))
    with pytest.raises(InvalidInput, match="no items"):
        parse_file("empty.csv", b"\n,,\n")
