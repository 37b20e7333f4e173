"""A contact sheet: every result of a batch in one grid image, each labelled.

After a batch of a hundred objects a person wants to see at a glance what came out and
which ones failed; scrolling a hundred messages does not do that. The sheet is one PNG:
tiles in position order, the label under each, failed ones framed in red and marked
"failed", items with no image shown as an empty tile. Pure Pillow, blocking: call it in
a worker thread.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

from core.errors import InvalidInput
from core.image_decoding import open_image

# One tile per result: (image bytes or None when there is no image, label, passed).
Tile = tuple[bytes | None, str, bool]

MAX_TILES = 1000
MIN_TILE, MAX_TILE = 32, 1024
PAD = 8  # pixels between tiles and around the sheet
LABEL_LINES = 2
BACKGROUND = (255, 255, 255)
TEXT = (30, 30, 30)
FAILED = (200, 30, 30)
EMPTY = (235, 235, 235)


def layout(count: int, columns: int | None = None) -> tuple[int, int]:
    """(columns, rows) for `count` tiles: a near-square grid unless `columns` is given."""
    if count < 1:
        raise InvalidInput("A contact sheet needs at least one tile.")
    if columns is None:
        columns = math.ceil(math.sqrt(count))
    if columns < 1:
        raise InvalidInput(f"A contact sheet needs at least one column; {columns} was asked.")
    columns = min(columns, count)
    return columns, math.ceil(count / columns)


def tile_for(count: int, *, widest: int = 4096, largest: int = 256) -> int:
    """A tile size that keeps a sheet of `count` tiles at most about `widest` pixels
    wide (a thousand items still make a sheet one can open), never below MIN_TILE."""
    columns, _ = layout(count)
    return max(MIN_TILE, min(largest, widest // columns - PAD))


def contact_sheet(tiles: Sequence[Tile], *, columns: int | None = None, tile: int = 256) -> bytes:
    """The PNG of a grid of `tiles` (position order, left to right, top to bottom)."""
    if len(tiles) > MAX_TILES:
        raise InvalidInput(f"A contact sheet holds at most {MAX_TILES} tiles; {len(tiles)} given.")
    if not MIN_TILE <= tile <= MAX_TILE:
        raise InvalidInput(f"Tile size must be {MIN_TILE} to {MAX_TILE} pixels; {tile} was asked.")
    cols, rows = layout(len(tiles), columns)
    font = ImageFont.load_default(size=max(10, tile // 16))
    line_height = _line_height(font)
    label_height = LABEL_LINES * line_height + PAD // 2
    cell_w, cell_h = tile + PAD, tile + label_height + PAD
    sheet = Image.new("RGB", (cols * cell_w + PAD, rows * cell_h + PAD), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for index, (data, label, ok) in enumerate(tiles):
        x = PAD + (index % cols) * cell_w
        y = PAD + (index // cols) * cell_h
        _paste(sheet, draw, data, (x, y), tile)
        if not ok:
            draw.rectangle(
                (x, y, x + tile - 1, y + tile - 1), outline=FAILED, width=max(2, tile // 64)
            )
        lines = _wrap(draw, ("FAILED: " if not ok else "") + label, font, tile)
        for number, line in enumerate(lines):
            colour = FAILED if not ok else TEXT
            draw.text((x, y + tile + 2 + number * line_height), line, fill=colour, font=font)
    out = io.BytesIO()
    sheet.save(out, "PNG", optimize=False)
    return out.getvalue()


def _paste(
    sheet: Image.Image,
    draw: ImageDraw.ImageDraw,
    data: bytes | None,
    at: tuple[int, int],
    tile: int,
) -> None:
    """The image scaled to fit the tile, centred; an empty grey tile when there is none."""
    x, y = at
    if not data:
        draw.rectangle((x, y, x + tile - 1, y + tile - 1), fill=EMPTY)
        return
    with open_image(data) as image:
        picture = image.convert("RGBA")
    picture.thumbnail((tile, tile))
    left = x + (tile - picture.width) // 2
    top = y + (tile - picture.height) // 2
    sheet.paste(picture, (left, top), picture)


def _line_height(font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> int:
    left, top, right, bottom = font.getbbox("Ag")
    return int(bottom - top) + 3


def _wrap(
    draw: ImageDraw.ImageDraw,
    text: str,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    width: int,
) -> list[str]:
    """The label in at most LABEL_LINES lines of `width` pixels, the last cut with '…'."""
    words = text.split()
    lines: list[str] = []
    current = ""
    for word in words:
        candidate = f"{current} {word}".strip()
        if draw.textlength(candidate, font=font) <= width or not current:
            current = candidate
        else:
            lines.append(current)
            current = word
    if current:
        lines.append(current)
    if len(lines) > LABEL_LINES:
        lines = lines[: LABEL_LINES - 1] + [" ".join(lines[LABEL_LINES - 1 :])]
    return [_fit(draw, line, font, width) for line in lines]


def _fit(
    draw: ImageDraw.ImageDraw,
    line: str,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    width: int,
) -> str:
    if draw.textlength(line, font=font) <= width:
        return line
    while line and draw.textlength(line + "…", font=font) > width:
        line = line[:-1]
    return line + "…"
