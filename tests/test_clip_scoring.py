"""Text–image scoring through the real transformers code path, on a tiny CLIP from disk.

The weights are random, so the numbers mean nothing about agreement; what is checked is
what curation relies on: finite cosines in [-1, 1], the same numbers every time and
whether batched or not, one load per process, bytes and PIL inputs treated alike, and
errors that say what to check.
"""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.errors import BackendNotConfigured, InvalidInput
from pipelines.scoring import clip_scoring
from pipelines.scoring.clip_scoring import get_scorer, to_unit
from tests import clip_fixtures

# Until conftest lists tests.clip_fixtures as a plugin (a plain import trips ruff's F811).
tiny_clip_dir = clip_fixtures.tiny_clip_dir

PROMPT = "a red fox sitting in the snow, watercolour"


def _images(count: int, seed: int = 0) -> list[Image.Image]:
    """Noise images of a few sizes and aspect ratios (the processor resizes and crops)."""
    rng = np.random.default_rng(seed)
    sizes = [(48, 64), (64, 48), (40, 40), (96, 33)]
    return [
        Image.fromarray(rng.integers(0, 256, (*sizes[i % 4], 3), dtype=np.uint8))
        for i in range(count)
    ]


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_scores_are_cosines_and_batching_changes_nothing(tiny_clip_dir: Path) -> None:
    scorer = get_scorer(str(tiny_clip_dir))
    images = _images(20)  # more than one batch of 16

    batched = scorer.score(images, PROMPT)
    again = scorer.score(images, PROMPT)
    single = scorer.score_one_at_a_time(images, PROMPT)

    assert len(batched) == 20
    assert all(np.isfinite(batched)) and all(-1.0 <= s <= 1.0 for s in batched)
    assert batched == again
    assert np.allclose(batched, single, rtol=0, atol=1e-5)
    assert len({round(s, 6) for s in batched}) == 20, "different images, different scores"
    assert all(0.0 <= to_unit(s) <= 1.0 for s in batched)


def test_captions_rank_stably_and_agree_with_score(tiny_clip_dir: Path) -> None:
    scorer = get_scorer(str(tiny_clip_dir))
    image = _images(1, seed=3)[0]
    captions = ["a cat", "a dog on a beach", "the moon", "an orange", PROMPT]

    first = scorer.rank_captions(image, captions)
    second = scorer.rank_captions(image, captions)

    assert first == second
    assert len(set(first)) == len(captions)
    assert list(np.argsort(first)) == list(np.argsort(second))
    each = [scorer.score([image], caption)[0] for caption in captions]
    assert np.allclose(first, each, rtol=0, atol=1e-5)


def test_long_prompts_are_cut_to_the_model_length(tiny_clip_dir: Path) -> None:
    scorer = get_scorer(str(tiny_clip_dir))
    images = _images(2)
    long_prompt = " ".join(["bright"] * 200)

    scores = scorer.score(images, long_prompt)

    assert scorer.max_tokens == 77
    assert scores == scorer.score(images, long_prompt + " but the rest is never seen")


def test_bytes_and_pil_inputs_agree(tiny_clip_dir: Path) -> None:
    scorer = get_scorer(str(tiny_clip_dir))
    images = _images(3, seed=5)
    images.append(images[0].convert("L"))  # a grey image is scored as RGB

    from_pil = scorer.score(images, PROMPT)
    from_bytes = scorer.score([_png(image) for image in images], PROMPT)

    assert np.allclose(from_pil, from_bytes, rtol=0, atol=1e-6)


def test_bad_inputs_are_refused(tiny_clip_dir: Path) -> None:
    scorer = get_scorer(str(tiny_clip_dir))

    with pytest.raises(InvalidInput, match="not an image"):
        scorer.score([_png(_images(1)[0]), b"definitely not a PNG"], PROMPT)
    with pytest.raises(InvalidInput, match="non-empty text"):
        scorer.score(_images(1), "   ")
    assert scorer.score([], PROMPT) == []


def test_the_model_is_loaded_once_per_process(tiny_clip_dir: Path) -> None:
    first = get_scorer(str(tiny_clip_dir))
    second = get_scorer(str(tiny_clip_dir), device="cpu")
    first.score(_images(8), PROMPT)

    assert second is first
    assert clip_scoring.loads(str(tiny_clip_dir)) == 1


def test_threads_asking_at_once_share_one_load(tmp_path: Path) -> None:
    from tests.tiny_clip import build_tiny_clip

    folder = str(build_tiny_clip(tmp_path / "clip-for-threads"))
    scorers: list[object] = []
    start = threading.Barrier(6)

    def ask() -> None:
        start.wait()
        scorers.append(get_scorer(folder))

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(scorers) == 6 and all(s is scorers[0] for s in scorers)
    assert clip_scoring.loads(folder) == 1


def test_an_unknown_model_fails_fast_and_says_what_to_check(
    tiny_clip_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(InvalidInput, match="nobody/no-such-clip") as error:
        get_scorer("nobody/no-such-clip")
    assert time.monotonic() - started < 5
    assert "HF_HUB_OFFLINE" in error.value.message

    with pytest.raises(InvalidInput, match="does not exist"):
        get_scorer(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInput, match="save_pretrained"):
        get_scorer(str(tmp_path / "empty"))
    assert clip_scoring.loads("nobody/no-such-clip") == 0


def test_without_the_local_extra_the_error_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = clip_scoring.importlib.util.find_spec

    def no_torch(name: str, *args: object) -> object:
        return None if name == "torch" else real_find_spec(name, *args)

    monkeypatch.setattr(clip_scoring.importlib.util, "find_spec", no_torch)
    with pytest.raises(BackendNotConfigured, match=r"atelier\[local\]"):
        get_scorer("openai/clip-vit-base-patch32")


def test_to_unit_spreads_real_clip_similarities() -> None:
    assert to_unit(0.05) == 0.0
    assert to_unit(0.10) == 0.0
    assert to_unit(0.225) == pytest.approx(0.5)
    assert to_unit(0.35) == pytest.approx(1.0)
    assert to_unit(0.9) == 1.0
    assert to_unit(-1.0) == 0.0


def test_importing_the_module_does_not_import_torch() -> None:
    code = (
        "import sys, pipelines.scoring.clip_scoring; "
        "print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    )
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
