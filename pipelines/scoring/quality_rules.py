"""Rule-based quality checks for one generated image: background, centring, single object,
sharpness and coverage.

Curation makes N candidates and keeps the best; for a series such as 100 crayon pictures
for a children's book, each picture must show one object, centred, on clean white paper,
sharp, neither tiny nor cut off. These rules measure exactly that, cheaply, with numpy and
scipy only (no torch: they must run where only hosted backends are installed), in a few
milliseconds per image, so scoring 16 candidates never waits on them.

How it works: the image is shrunk to WORK_SIZE pixels on its long side (the checks judge
composition, which survives a thumbnail, and every threshold is a fraction of the image,
so the answer does not depend on resolution). The background colour is the median of the
outer BORDER_FRACTION frame; the *foreground* is every pixel that differs clearly from it,
so the other checks still make sense on a grey or coloured backdrop even though the
background check fails there. The foreground is closed (crayon gaps, anti-aliasing), its
holes are filled (paper showing through a waxy fill, the inside of a line drawing), and
pieces smaller than MIN_OBJECT_FRACTION of the image are dropped as specks; what is left
are the *objects* the checks talk about. Transparent pixels count as white paper.

Every result carries a score in 0..1 that is exactly 0.5 at the check's threshold, higher
is better, and passes exactly when the score is at least 0.5; ranking uses the score, the
verdict uses the threshold, and the two never disagree.

Length: five checks share one segmentation of the image (background, objects); each
check is short, and separating them would recompute or pass around that state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from PIL import Image
from scipy import ndimage

from core.errors import InvalidInput
from core.image_decoding import open_image

# --------------------------------------------------------------------- thresholds (data)

# Working size (long side, pixels). Big enough to see a speck of 0.2% of the image and an
# edge blurred over 1% of it; small enough that every check takes about a millisecond.
WORK_SIZE = 256
# Images smaller than this on either side are refused: too few pixels to judge.
MIN_SIDE = 32

# The border frame: this fraction of the width (left and right) and of the height (top and
# bottom). 8% keeps clear of a subject that is well framed, and is enough pixels to be sure.
BORDER_FRACTION = 0.08

# background: a border pixel is *near-white* when every channel is at least
# WHITE_MIN_CHANNEL and the channels are within WHITE_MAX_TINT of each other (cream paper
# passes; pale grey-blue, light grey and coloured paper do not).
WHITE_MIN_CHANNEL = 225
WHITE_MAX_TINT = 30
# A clean background: at least this fraction of the border is near-white...
BACKGROUND_MIN_WHITE = 0.90
# ...and those near-white pixels are even: the standard deviation of their brightness
# (grey levels, 0..255, measured at working size) is at most this. Paper grain and JPEG
# noise stay far below it; shadows, vignettes and painted textures go above.
BACKGROUND_MAX_SPREAD = 8.0

# Foreground: differs from the background colour by at least FOREGROUND_MIN_DIFF grey
# levels in some channel (a pale yellow crayon on white differs by ~100, JPEG noise by
# <10). On a noisy backdrop the bar rises to FOREGROUND_NOISE_FACTOR times the border's
# typical difference, capped at FOREGROUND_MAX_DIFF so a subject is never thresholded away.
FOREGROUND_MIN_DIFF = 40
FOREGROUND_NOISE_FACTOR = 6.0
FOREGROUND_MAX_DIFF = 96
# Closing radius (fraction of the long side; 2 working pixels): joins crayon strokes and
# anti-aliased fringes into one shape without merging objects that are clearly apart.
CLOSING_FRACTION = 0.008
# Pieces smaller than this fraction of the image are specks, not objects.
MIN_OBJECT_FRACTION = 0.002

# centring: the objects' centre of mass may be at most this far from the image centre, as
# a fraction of the image diagonal (0.06 of a 1024x1024 diagonal is 87 px).
CENTRING_MAX_OFFSET = 0.06

# sharpness: the width of the objects' outline edges (an edge's contrast divided by its
# steepest slope), as a fraction of the image's long side, is at most this. A crisp edge
# measures 2 working pixels (0.7-0.8%); a Gaussian blur of standard deviation s (also a
# fraction of the long side) measures about 2.7 s, so the limit falls near s = 0.53%: on a
# 1024 px image a blur of 5 px still passes (1.4%) and one of 6 px fails (1.7%).
SHARPNESS_MAX_EDGE_WIDTH = 0.015
# The width is read at this percentile of the outline: its sharpest quarter. A crayon
# outline mixes crisp strokes with ragged, grainy stretches, and a photo's outline can be
# partly out of focus; a blurred image has no crisp stretch at all.
EDGE_PERCENTILE = 25
# At most this many outline pixels are measured (an even sample of a longer outline).
MAX_EDGE_SAMPLES = 4096
# Window (working pixels) in which an edge's contrast is measured: wide enough to hold a
# blurred edge from its dark side to its light side.
EDGE_WINDOW = 9

# coverage: the objects cover at least this fraction of the image, and none of them
# reaches the image's edge (a pixel of an object in the outermost working pixel row or
# column counts as cut off).
COVERAGE_MIN_AREA = 0.03


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class CheckResult:
    """One check's verdict; `reason` is a sentence for the user, with the numbers."""

    name: str
    value: float
    score: float
    passed: bool
    reason: str


def _falling(value: float, threshold: float, steepness: float = 2.0) -> float:
    """Score for lower-is-better: 1 at 0, exactly 0.5 at the threshold, towards 0 above."""
    return float(0.5 ** ((max(value, 0.0) / threshold) ** steepness))


def _pct(fraction: float) -> str:
    """A fraction as a percentage with as many digits as a small number needs."""
    percent = 100 * fraction
    return f"{percent:.0f}%" if percent >= 10 or percent == 0 else f"{percent:.1f}%"


# ---------------------------------------------------------------------------- analysis


class _Analysis:
    """The working copy of one image and what several checks share, computed on demand."""

    def __init__(self, image: Image.Image) -> None:
        self.original_size = image.size
        self.rgb = _working_rgb(image)
        self.height, self.width = self.rgb.shape[:2]
        self.long_side = max(self.height, self.width)
        self.area = self.height * self.width

    @cached_property
    def border_pixels(self) -> np.ndarray:
        """The outer BORDER_FRACTION frame's pixels, (n, 3) uint8."""
        return _frame(self.rgb).reshape(-1, 3)

    @cached_property
    def background(self) -> np.ndarray:
        """Background colour: per-channel median of the border (robust to a subject in it)."""
        return np.array([_median_u8(self.border_pixels[:, c]) for c in range(3)], np.uint8)

    @cached_property
    def diff(self) -> np.ndarray:
        """Per pixel, the largest channel difference from the background colour (0..255)."""
        out = np.zeros((self.height, self.width), dtype=np.uint8)
        for c in range(3):
            channel, level = self.rgb[..., c], self.background[c]
            np.maximum(out, np.maximum(channel, level) - np.minimum(channel, level), out=out)
        return out

    @cached_property
    def threshold(self) -> float:
        noise = _median_u8(_frame(self.diff).ravel())
        return float(
            np.clip(FOREGROUND_NOISE_FACTOR * noise, FOREGROUND_MIN_DIFF, FOREGROUND_MAX_DIFF)
        )

    @cached_property
    def _components(self) -> tuple[np.ndarray, np.ndarray]:
        """Labels of the closed, hole-filled foreground, and each label's pixel count."""
        raw = self.diff >= self.threshold
        radius = max(1, round(CLOSING_FRACTION * self.long_side))
        filled = _fill_holes(_close(raw, radius))
        labels, count = ndimage.label(filled, structure=np.ones((3, 3), dtype=bool))
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        sizes[0] = 0
        return labels, sizes

    @cached_property
    def object_sizes(self) -> np.ndarray:
        """Pixel counts of the objects (pieces above the speck size), largest first."""
        _, sizes = self._components
        keep = sizes >= MIN_OBJECT_FRACTION * self.area
        return np.sort(sizes[keep])[::-1]

    @cached_property
    def objects(self) -> np.ndarray:
        """Boolean mask of every object, specks removed."""
        labels, sizes = self._components
        keep = sizes >= MIN_OBJECT_FRACTION * self.area
        keep[0] = False
        return keep[labels]

    def to_original_px(self, working_px: float) -> float:
        return working_px * max(self.original_size) / self.long_side


def _working_rgb(image: Image.Image) -> np.ndarray:
    """A WORK_SIZE RGB copy as uint8 (h, w, 3); transparency composited onto white."""
    if min(image.size) < MIN_SIDE:
        raise InvalidInput(
            f"The image is {image.width}x{image.height}; quality checks need at least "
            f"{MIN_SIDE} pixels on each side."
        )
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    if image.mode not in ("RGB", "RGBA", "L"):
        image = image.convert("RGBA" if has_alpha else "RGB")
    long_side = max(image.size)
    if long_side > WORK_SIZE:
        scale = WORK_SIZE / long_side
        target = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        # An integer box reduction does most of the shrinking (fast), a box resize the rest.
        factor = long_side // WORK_SIZE
        if factor > 1:
            image = image.reduce(factor)
        if target != image.size:
            image = image.resize(target, Image.Resampling.BOX)
    if image.mode == "RGBA":
        paper = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(paper, image)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image)


def _frame(array: np.ndarray) -> np.ndarray:
    """The outer BORDER_FRACTION frame of a (h, w, ...) array, as (n, ...) values."""
    height, width = array.shape[:2]
    by = max(1, round(height * BORDER_FRACTION))
    bx = max(1, round(width * BORDER_FRACTION))
    rest = array.shape[2:]
    parts = (array[:by], array[-by:], array[by:-by, :bx], array[by:-by, -bx:])
    return np.concatenate([part.reshape(-1, *rest) for part in parts])


def _median_u8(values: np.ndarray) -> int:
    """Median of uint8 values by histogram (an order of magnitude faster than sorting)."""
    counts = np.cumsum(np.bincount(values, minlength=256))
    return int(np.searchsorted(counts, (counts[-1] + 1) // 2))


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a (2r+1) square, as shifted ORs along each axis (separable)."""
    return _square(mask, radius, np.logical_or)


def _erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary erosion by a (2r+1) square; beyond the image counts as the nearest pixel,
    so a shape touching the image's edge is not eaten away from it."""
    return _square(mask, radius, np.logical_and)


def _square(mask: np.ndarray, radius: int, combine: np.ufunc) -> np.ndarray:
    padded = np.pad(mask, radius, mode="edge")
    size = 2 * radius + 1
    height, width = padded.shape
    rows = padded[:, 0 : width - size + 1].copy()
    for k in range(1, size):
        combine(rows, padded[:, k : width - size + 1 + k], out=rows)
    out = rows[0 : height - size + 1].copy()
    for k in range(1, size):
        combine(out, rows[k : height - size + 1 + k], out=out)
    return out


def _close(mask: np.ndarray, radius: int) -> np.ndarray:
    return _erode(_dilate(mask, radius), radius)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill the regions of background that do not reach the image's edge."""
    labels, count = ndimage.label(~mask)
    edge_labels = np.concatenate((labels[0], labels[-1], labels[:, 0], labels[:, -1]))
    hole = np.ones(count + 1, dtype=bool)
    hole[edge_labels] = False
    hole[0] = False
    return mask | hole[labels]


def _windows(array: np.ndarray, ys: np.ndarray, xs: np.ndarray, size: int) -> np.ndarray:
    """The size x size neighbourhood of each (y, x), as (n, size, size) float32; beyond the
    image counts as the nearest pixel."""
    half = size // 2
    padded = np.pad(array, half, mode="edge").astype(np.float32)
    offsets = np.arange(size)
    return padded[ys[:, None, None] + offsets[None, :, None], xs[:, None, None] + offsets]


# ------------------------------------------------------------------------------ checks


def _check_background(a: _Analysis) -> CheckResult:
    """value: the fraction of border-frame pixels that are near-white (0..1)."""
    r, g, b = (a.border_pixels[:, c].astype(np.int16) for c in range(3))
    low, high = np.minimum(np.minimum(r, g), b), np.maximum(np.maximum(r, g), b)
    white = (low >= WHITE_MIN_CHANNEL) & (high - low <= WHITE_MAX_TINT)
    fraction = float(white.mean())
    brightness = (r + g + b)[white] / 3
    spread = float(brightness.std()) if brightness.size else 0.0
    score = min(
        _falling(1.0 - fraction, 1.0 - BACKGROUND_MIN_WHITE),
        _falling(spread, BACKGROUND_MAX_SPREAD),
    )
    white_ok = fraction >= BACKGROUND_MIN_WHITE
    even_ok = spread <= BACKGROUND_MAX_SPREAD
    need = (
        f"a clean background needs at least {_pct(BACKGROUND_MIN_WHITE)} white "
        f"with a spread of at most {BACKGROUND_MAX_SPREAD:.0f} grey levels"
    )
    if white_ok and even_ok:
        reason = (
            f"The background is {_pct(fraction)} white and even (spread "
            f"{spread:.1f} grey levels); {need}."
        )
    elif not white_ok:
        colour = ",".join(str(int(c)) for c in a.background)
        reason = (
            f"The background is only {_pct(fraction)} white (its colour is about "
            f"RGB {colour}); {need}."
        )
    else:
        reason = (
            f"The background is {_pct(fraction)} white but uneven (spread {spread:.1f} "
            f"grey levels); {need}."
        )
    return CheckResult("background", fraction, score, white_ok and even_ok, reason)


def _check_centring(a: _Analysis) -> CheckResult:
    """value: distance of the objects' centre of mass from the image centre, as a fraction
    of the image diagonal (0 is dead centre; 0.5 when there is no object)."""
    mask = a.objects
    total = int(mask.sum())
    if total == 0:
        return CheckResult(
            "centring",
            0.5,
            0.0,
            False,
            "No subject stands out from the background, so it cannot be centred.",
        )
    cy = float(mask.sum(axis=1) @ np.arange(a.height)) / total
    cx = float(mask.sum(axis=0) @ np.arange(a.width)) / total
    dx, dy = cx - (a.width - 1) / 2, cy - (a.height - 1) / 2
    offset = math.hypot(dx, dy) / math.hypot(a.width, a.height)
    score = _falling(offset, CENTRING_MAX_OFFSET)
    passed = offset <= CENTRING_MAX_OFFSET
    limit = f"centred means at most {_pct(CENTRING_MAX_OFFSET)}"
    if passed:
        reason = f"The subject is centred: {_pct(offset)} of the diagonal from the middle; {limit}."
    else:
        reason = (
            f"The subject is off-centre: {_pct(offset)} of the diagonal from the middle, "
            f"towards the {_direction(dx / a.width, dy / a.height)}; {limit}."
        )
    return CheckResult("centring", offset, score, passed, reason)


def _direction(dx: float, dy: float) -> str:
    """'top left', 'right'... for an offset given as fractions of width and height."""
    vertical = "top" if dy < 0 else "bottom"
    horizontal = "left" if dx < 0 else "right"
    if abs(dy) < abs(dx) / 2:
        return horizontal
    if abs(dx) < abs(dy) / 2:
        return vertical
    return f"{vertical} {horizontal}"


def _check_single_object(a: _Analysis) -> CheckResult:
    """value: the number of separate objects (specks under MIN_OBJECT_FRACTION ignored)."""
    sizes = a.object_sizes
    count = len(sizes)
    specks = f"specks under {_pct(MIN_OBJECT_FRACTION)} of the image are ignored"
    if count == 1:
        return CheckResult(
            "single_object",
            1.0,
            1.0,
            True,
            f"There is exactly 1 object, as needed ({specks}).",
        )
    if count == 0:
        return CheckResult(
            "single_object",
            0.0,
            0.0,
            False,
            f"No object stands out from the background; exactly 1 is needed ({specks}).",
        )
    # Below 0.5 whatever happens; a dominant object with a small extra scores near 0.5.
    share = float(sizes[0] / sizes.sum())
    return CheckResult(
        "single_object",
        float(count),
        0.5 * share**2 / (share**2 + (1 - share) ** 2),
        False,
        f"There are {count} separate objects (the largest is {_pct(share)} of their area); "
        f"exactly 1 is needed ({specks}).",
    )


def _check_sharpness(a: _Analysis) -> CheckResult:
    """value: the width of the objects' outline edges (contrast divided by the steepest
    slope across the edge, at the EDGE_PERCENTILE of the outline), as a fraction of the
    image's long side. 1.0 when no object or no clear edge is found."""
    mask = a.objects
    # Inner outline; where an object is cut off, the image's edge is not an outline.
    outline = mask & ~_erode(mask, 1)
    if not outline.any():
        return CheckResult(
            "sharpness",
            1.0,
            0.0,
            False,
            "No subject stands out from the background, so there are no edges to judge.",
        )
    ys, xs = np.nonzero(outline)
    step = -(-len(ys) // MAX_EDGE_SAMPLES)  # an even sample bounds the cost on busy images
    ys, xs = ys[::step], xs[::step]
    window = _windows(a.diff, ys, xs, EDGE_WINDOW)
    contrast = window.max(axis=(1, 2)) - window.min(axis=(1, 2))
    # Sobel slopes (grey levels per pixel) at the 3x3 pixels around each outline pixel.
    mid = EDGE_WINDOW // 2
    core = window[:, mid - 2 : mid + 3, mid - 2 : mid + 3]
    across_x = core[:, :, 2:] - core[:, :, :-2]
    across_y = core[:, 2:, :] - core[:, :-2, :]
    slope_x = (across_x[:, :-2] + 2 * across_x[:, 1:-1] + across_x[:, 2:]) / 8
    slope_y = (across_y[:, :, :-2] + 2 * across_y[:, :, 1:-1] + across_y[:, :, 2:]) / 8
    steepest = np.hypot(slope_x, slope_y).max(axis=(1, 2))
    usable = (steepest > 0) & (contrast >= a.threshold)
    if not usable.any():
        return CheckResult(
            "sharpness",
            1.0,
            0.0,
            False,
            "The subject's outline has no clear edge anywhere; it is completely blurred.",
        )
    width_px = float(np.percentile(contrast[usable] / steepest[usable], EDGE_PERCENTILE))
    width = width_px / a.long_side
    score = _falling(width, SHARPNESS_MAX_EDGE_WIDTH, steepness=4.0)
    passed = width <= SHARPNESS_MAX_EDGE_WIDTH
    limit = f"sharp edges take at most {_pct(SHARPNESS_MAX_EDGE_WIDTH)}"
    if passed:
        # No pixel count here: a crisp edge measures the working copy's resolution.
        reason = f"Edges are sharp: {_pct(width)} of the image size wide; {limit}."
    else:
        px = a.to_original_px(width_px)
        reason = (
            f"Edges are blurred: about {px:.0f} px wide ({_pct(width)} of the image size); {limit}."
        )
    return CheckResult("sharpness", width, score, passed, reason)


def _check_coverage(a: _Analysis) -> CheckResult:
    """value: the fraction of the image covered by objects (0..1). Also fails when an
    object reaches the image's edge (cut off)."""
    mask = a.objects
    area = float(mask.sum()) / a.area
    sides = [
        side
        for side, row in (
            ("top", mask[0]),
            ("bottom", mask[-1]),
            ("left", mask[:, 0]),
            ("right", mask[:, -1]),
        )
        if row.any()
    ]
    # Rises from 0 (nothing) through 0.5 (at the minimum) towards 1.
    area_score = 0.0 if area == 0 else _falling(COVERAGE_MIN_AREA / area, 1.0)
    edge = np.concatenate((mask[0], mask[-1], mask[:, 0], mask[:, -1]))
    cut = float(edge.mean())
    # Any contact fails; the more of the frame's edge the subject covers, the lower.
    edge_score = 1.0 if not sides else 0.45 * (1.0 - min(1.0, 4 * cut))
    score = min(area_score, edge_score)
    passed = area >= COVERAGE_MIN_AREA and not sides
    need = f"it needs at least {_pct(COVERAGE_MIN_AREA)} and must not touch the edges"
    if area == 0:
        reason = f"No subject stands out from the background; {need}."
    elif sides:
        small = " and is too small" if area < COVERAGE_MIN_AREA else ""
        reason = (
            f"The subject covers {_pct(area)} of the image but is cut off at the "
            f"{_join(sides)} edge{'s' if len(sides) > 1 else ''}{small}; {need}."
        )
    elif area < COVERAGE_MIN_AREA:
        reason = f"The subject is too small: it covers {_pct(area)} of the image; {need}."
    else:
        reason = f"The subject covers {_pct(area)} of the image, inside the frame; {need}."
    return CheckResult("coverage", area, score, passed, reason)


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


_CHECKS: dict[str, Callable[[_Analysis], CheckResult]] = {
    "background": _check_background,
    "centring": _check_centring,
    "single_object": _check_single_object,
    "sharpness": _check_sharpness,
    "coverage": _check_coverage,
}
CHECKS: tuple[str, ...] = tuple(_CHECKS)


def run_checks(image: Image.Image | bytes, names: Sequence[str] | None = None) -> list[CheckResult]:
    """Run the named checks (all of CHECKS by default) on one image, in the order asked.

    Blocking and CPU-bound (a few milliseconds): call it in a worker thread from async code.
    """
    if isinstance(names, str):
        raise TypeError("names must be a sequence of check names, not one string")
    wanted = list(dict.fromkeys(CHECKS if names is None else names))
    unknown = [name for name in wanted if name not in _CHECKS]
    if unknown:
        raise InvalidInput(f"Unknown quality check {unknown[0]!r}. Checks: {', '.join(CHECKS)}.")
    if isinstance(image, bytes | bytearray | memoryview):
        image = open_image(bytes(image))
    elif not isinstance(image, Image.Image):
        raise TypeError(f"image must be PIL.Image.Image or bytes, not {type(image).__name__}")
    analysis = _Analysis(image)
    return [_CHECKS[name](analysis) for name in wanted]
