"""The rule checks on synthetic pictures whose right answers are known by construction.

Each picture is drawn at 1024x1024 and at 768x512: the same composition must get the
same verdicts at either size. A "fails X only" test asserts the exact set of failed
checks, so a rule that starts failing too much is caught as surely as one that fails
too little.
"""

from __future__ import annotations

import io
import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from core.errors import InvalidInput
from pipelines.scoring.quality_rules import CHECKS, CheckResult, run_checks

REPO = Path(__file__).resolve().parents[1]
SIZES = [(1024, 1024), (768, 512)]
WHITE = (255, 255, 255)
INK = (30, 30, 40)


# ------------------------------------------------------------------------- pictures


def discs(
    size: tuple[int, int],
    centres: tuple[tuple[float, float], ...] = ((0.5, 0.5),),
    radius: float = 1 / 6,
    background: tuple[int, int, int] = WHITE,
) -> Image.Image:
    """Flat discs; centres as fractions of width and height, radius of the short side."""
    width, height = size
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    r = radius * min(size)
    for fx, fy in centres:
        cx, cy = fx * width, fy * height
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=INK)
    return image


@cache
def crayon(size: tuple[int, int], seed: int = 1) -> Image.Image:
    """A crayon-like disc: grainy paper, a ragged outline, a noisy waxy fill with diagonal
    strokes where the paper shows through, and crayon dust around it."""
    width, height = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    short = min(size)
    cx, cy = width / 2, height / 2
    theta = np.arctan2(yy - cy, xx - cx)
    ragged = 0.2 * short * (1 + 0.03 * np.sin(9 * theta) + 0.015 * np.sin(23 * theta + 1))
    inside = np.hypot(xx - cx, yy - cy) < ragged + rng.normal(0, 0.004 * short, (height, width))
    strokes = np.sin((xx + yy) * (2 * np.pi / (0.012 * short)))
    gaps = (strokes > 0.75) & (rng.random((height, width)) < 0.6)
    pixels = 255 - np.abs(rng.normal(0, 4, (height, width, 1))).repeat(3, axis=2)
    colour = np.array((214, 64, 48), np.float32)
    fill = colour + rng.normal(0, 22, (height, width, 1))
    crayoned = inside & ~gaps
    pixels[crayoned] = fill[crayoned]
    for _ in range(30):
        x, y = rng.integers(4, width - 4), rng.integers(4, height - 4)
        pixels[y - 2 : y + 2, x - 2 : x + 2] = colour
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def blurred(image: Image.Image, fraction: float = 0.012) -> Image.Image:
    """Gaussian blur with a standard deviation given as a fraction of the long side."""
    return image.filter(ImageFilter.GaussianBlur(fraction * max(image.size)))


def encoded(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return out.getvalue()


def failed(image: Image.Image | bytes) -> set[str]:
    return {r.name for r in run_checks(image) if not r.passed}


def result(image: Image.Image | bytes, name: str) -> CheckResult:
    (only,) = run_checks(image, [name])
    return only


# -------------------------------------------------------------------------- verdicts


@pytest.mark.parametrize("size", SIZES)
def test_centred_disc_passes_every_rule(size):
    results = run_checks(discs(size))
    assert [r.name for r in results] == list(CHECKS)
    assert all(r.passed for r in results), [r.reason for r in results]


@pytest.mark.parametrize("size", SIZES)
def test_off_centre_disc_fails_centring_only(size):
    assert failed(discs(size, ((0.3, 0.35),))) == {"centring"}


@pytest.mark.parametrize("size", SIZES)
def test_two_discs_placed_symmetrically_fail_single_object_only(size):
    image = discs(size, ((0.3, 0.5), (0.7, 0.5)), radius=0.7 / 6)
    assert failed(image) == {"single_object"}
    assert result(image, "single_object").value == 2


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("colour", [(128, 128, 128), (173, 216, 230)], ids=["grey", "blue"])
def test_coloured_background_fails_background_only(size, colour):
    assert failed(discs(size, background=colour)) == {"background"}


@pytest.mark.parametrize("size", SIZES)
def test_blurred_disc_fails_sharpness_only(size):
    assert failed(blurred(discs(size))) == {"sharpness"}


@pytest.mark.parametrize("size", SIZES)
def test_tiny_disc_fails_coverage_only(size):
    assert failed(discs(size, radius=0.05)) == {"coverage"}


@pytest.mark.parametrize("size", SIZES)
def test_subject_cut_off_at_the_edges_fails_coverage_only(size):
    # A centred, wide ellipse running off the left and right edges: centred, one object.
    width, height = size
    image = Image.new("RGB", size, WHITE)
    box = (-0.05 * width, 0.45 * height, 1.05 * width, 0.55 * height)
    ImageDraw.Draw(image).ellipse(box, fill=INK)
    assert failed(image) == {"coverage"}
    assert "cut off at the left and right edges" in result(image, "coverage").reason


def test_disc_cut_off_at_the_top_fails_coverage():
    coverage = result(discs((1024, 1024), ((0.5, 0.05),)), "coverage")
    assert not coverage.passed and "cut off at the top edge" in coverage.reason


@pytest.mark.parametrize("size", SIZES)
def test_crayon_disc_is_one_object_and_passes_every_rule(size):
    results = run_checks(crayon(size))
    assert all(r.passed for r in results), [r.reason for r in results]
    assert results[CHECKS.index("single_object")].value == 1


@pytest.mark.parametrize("size", SIZES)
def test_blurred_crayon_disc_fails_sharpness_only(size):
    assert failed(blurred(crayon(size))) == {"sharpness"}


def test_empty_page_fails_everything_but_the_background():
    assert failed(Image.new("RGB", (1024, 1024), WHITE)) == set(CHECKS) - {"background"}


def test_uneven_white_background_fails_background():
    # White fading to light grey: every pixel is near-white, but the page is not even.
    shade = np.linspace(230, 255, 1024, dtype=np.float32)
    pixels = np.broadcast_to(shade[None, :, None], (1024, 1024, 3)).astype(np.uint8)
    image = Image.fromarray(pixels)
    ImageDraw.Draw(image).ellipse((340, 340, 684, 684), fill=INK)
    background = result(image, "background")
    assert not background.passed and "uneven" in background.reason


def test_transparent_background_counts_as_white_paper():
    image = Image.new("RGBA", (1024, 1024), (0, 0, 0, 0))
    ImageDraw.Draw(image).ellipse((340, 340, 684, 684), fill=(*INK, 255))
    assert failed(image) == set()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_encoded_bytes_get_the_same_verdicts(fmt):
    assert failed(encoded(crayon((1024, 1024)), fmt)) == set()
    assert failed(encoded(discs((1024, 1024), ((0.3, 0.35),)), fmt)) == {"centring"}


def test_measurements_do_not_depend_on_resolution():
    by_size = {
        side: {r.name: r.value for r in run_checks(blurred(discs((side, side)), 0.004))}
        for side in (512, 1024, 2048)
    }
    for name, tolerance in (("centring", 0.002), ("sharpness", 0.001), ("coverage", 0.002)):
        values = [by_size[side][name] for side in by_size]
        assert max(values) - min(values) <= tolerance, (name, values)


# ----------------------------------------------------------------- scores and reasons


def test_scores_are_in_unit_interval_and_agree_with_verdicts():
    pictures = [
        discs((1024, 1024)),
        discs((1024, 1024), ((0.3, 0.35),)),
        discs((768, 512), ((0.3, 0.5), (0.7, 0.5)), radius=0.7 / 6),
        discs((768, 512), background=(128, 128, 128)),
        blurred(discs((1024, 1024))),
        discs((1024, 1024), radius=0.05),
        discs((1024, 1024), ((0.5, 0.05),)),
        crayon((768, 512)),
        Image.new("RGB", (512, 512), WHITE),
    ]
    for image in pictures:
        for r in run_checks(image):
            assert 0.0 <= r.score <= 1.0, r
            assert r.passed == (r.score >= 0.5), r
    # Better pictures score higher: a tighter centring, a sharper edge.
    off = result(discs((1024, 1024), ((0.45, 0.5),)), "centring")
    further = result(discs((1024, 1024), ((0.3, 0.35),)), "centring")
    assert result(discs((1024, 1024)), "centring").score > off.score > further.score
    assert (
        result(discs((1024, 1024)), "sharpness").score
        > result(blurred(discs((1024, 1024)), 0.004), "sharpness").score
    )


def test_reasons_give_the_measurement_and_the_threshold():
    grey = result(discs((1024, 1024), background=(128, 128, 128)), "background")
    assert grey.reason == (
        "The background is only 0% white (its colour is about RGB 128,128,128); a clean "
        "background needs at least 90% white with a spread of at most 8 grey levels."
    )
    off = result(discs((1024, 1024), ((0.3, 0.35),)), "centring")
    assert f"{100 * off.value:.0f}% of the diagonal" in off.reason
    assert "towards the top left" in off.reason and "at most 6.0%" in off.reason
    two = result(discs((1024, 1024), ((0.3, 0.5), (0.7, 0.5)), radius=0.7 / 6), "single_object")
    assert "There are 2 separate objects" in two.reason
    blur = result(blurred(discs((1024, 1024))), "sharpness")
    assert f"({100 * blur.value:.1f}% of the image size)" in blur.reason
    assert "at most 1.5%" in blur.reason
    tiny = result(discs((1024, 1024), radius=0.05), "coverage")
    assert f"covers {100 * tiny.value:.1f}% of the image" in tiny.reason
    assert "at least 3.0%" in tiny.reason


def test_named_checks_run_in_the_order_asked():
    names = [r.name for r in run_checks(discs((512, 512)), ["coverage", "centring"])]
    assert names == ["coverage", "centring"]


# -------------------------------------------------------------------------- refusals


def test_unknown_check_is_refused_with_the_valid_names():
    with pytest.raises(InvalidInput) as caught:
        run_checks(discs((512, 512)), ["background", "prettiness"])
    assert "'prettiness'" in caught.value.message
    assert all(name in caught.value.message for name in CHECKS)


def test_bytes_that_are_not_an_image_are_refused():
    with pytest.raises(InvalidInput, match="not an image"):
        run_checks(b"definitely not a png")


def test_an_image_too_small_to_judge_is_refused():
    with pytest.raises(InvalidInput, match="16x16"):
        run_checks(Image.new("RGB", (16, 16), WHITE))


def test_importing_the_checks_does_not_import_torch():
    code = "import sys, pipelines.scoring.quality_rules; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"
