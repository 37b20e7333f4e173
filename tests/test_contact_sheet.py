"""The contact sheet (pipelines/contact_sheet.py): a real grid of the results, labelled,
failed ones framed in red, a missing one an empty tile. Read back by decoding the PNG."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from core.errors import InvalidInput
from pipelines.contact_sheet import EMPTY, FAILED, PAD, contact_sheet, layout, tile_for

TILE = 64


def _png(colour: tuple[int, int, int], size: tuple[int, int] = (128, 128)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


def _origin(sheet: Image.Image, index: int, columns: int, rows: int) -> tuple[int, int]:
    cell_w = (sheet.width - PAD) // columns
    cell_h = (sheet.height - PAD) // rows
    return PAD + (index % columns) * cell_w, PAD + (index // columns) * cell_h


def test_a_sheet_is_a_grid_of_tiles_with_labels_and_failures_marked():
    colours = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (250, 250, 0), (0, 0, 0)]
    tiles = [(_png(c), f"object {i}", True) for i, c in enumerate(colours)]
    tiles[3] = (tiles[3][0], "a failed object", False)
    tiles.append((None, "never made", False))
    sheet = Image.open(io.BytesIO(contact_sheet(tiles, tile=TILE)))
    assert sheet.format == "PNG"
    columns, rows = layout(len(tiles))
    assert (columns, rows) == (3, 2)
    assert sheet.width == columns * (TILE + PAD) + PAD
    rgb = sheet.convert("RGB")
    for index, colour in enumerate(colours):
        x, y = _origin(sheet, index, columns, rows)
        assert rgb.getpixel((x + TILE // 2, y + TILE // 2)) == colour  # the tile's picture
        # The label is drawn under the tile: some dark or red pixels there.
        under = rgb.crop((x, y + TILE + 1, x + TILE, y + TILE + 14))
        assert any(sum(p) < 400 for p in under.getdata())
    x, y = _origin(sheet, 3, columns, rows)
    assert rgb.getpixel((x, y + TILE // 2)) == FAILED  # the failed tile's red frame
    x, y = _origin(sheet, 5, columns, rows)
    assert rgb.getpixel((x + TILE // 2, y + TILE // 2)) == EMPTY


def test_a_tall_image_is_fitted_and_centred_in_its_tile():
    sheet = contact_sheet([(_png((0, 0, 0), (50, 200)), "tall", True)], tile=TILE)
    rgb = Image.open(io.BytesIO(sheet)).convert("RGB")
    assert rgb.getpixel((PAD + TILE // 2, PAD + TILE // 2)) == (0, 0, 0)
    assert rgb.getpixel((PAD + 2, PAD + TILE // 2)) == (255, 255, 255)  # beside it: white


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"tile": 8}, "Tile size must be 32 to 1024"),
        ({"columns": 0}, "at least one column"),
    ],
)
def test_bad_sheets_are_refused(kwargs, words):
    with pytest.raises(InvalidInput, match=words):
        contact_sheet([(None, "x", True)], **kwargs)
    with pytest.raises(InvalidInput, match="at least one tile"):
        contact_sheet([])


def test_a_thousand_tiles_still_make_a_sheet_one_can_open():
    assert tile_for(8) == 256
    tile = tile_for(1000)  # 32 columns
    assert 32 * (tile + PAD) + PAD <= 4096 + PAD
    sheet = contact_sheet([(None, f"item {i}", i % 2 == 0) for i in range(1000)], tile=tile)
    image = Image.open(io.BytesIO(sheet))
    assert image.width <= 4096 + PAD and image.height < 6000
