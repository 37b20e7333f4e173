"""Scoring candidates for curation: rule checks plus text–image agreement, combined.

The rule checks (numpy/scipy, no torch) run per image; CLIP runs once for the whole
batch, through a scorer loaded once per process. The combination is a weighted mean
whose weights come from the style preset (or the user's list of criteria), so a crayon
illustration is judged on its white background and a photo is not.

A candidate that fails a check with a large weight should lose to one that passes it,
whatever their CLIP numbers; the ranking therefore orders by the weight of failed
checks first and the combined score second, and says so in each loser's reason.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.errors import AtelierError, InvalidInput
from memory.curations import StoredScore

if TYPE_CHECKING:
    from pipelines.scoring.clip_jobs import RemoteClip

# The names of quality_rules.CHECKS, which is imported on first use (numpy and scipy
# cost start-up time); tests/test_startup_imports.py checks that the two agree.
CHECKS: tuple[str, ...] = ("background", "centring", "single_object", "sharpness", "coverage")
CLIP = "clip"
CRITERIA: tuple[str, ...] = (CLIP, *CHECKS)
DEFAULT_WEIGHTS: dict[str, float] = {CLIP: 1.0, "sharpness": 0.5, "coverage": 0.5}
MAX_CANDIDATES = 16


# One measured criterion; the same record the database stores, so nothing is converted.
Score = StoredScore


@dataclass(frozen=True)
class ScoredImage:
    index: int
    scores: list[Score]
    combined: float
    failed_weight: float

    def failed(self, weights: dict[str, float]) -> list[Score]:
        return [s for s in self.scores if s.passed is False and weights.get(s.criterion, 0) > 0]


# (image bytes list, text) -> cosine similarities; None when CLIP is off.
ClipFunction = Callable[[Sequence[bytes], str], list[float]]


def weights_for(criteria: Sequence[str] | None, style_weights: dict[str, float] | None) -> dict:
    """Explicit criteria (equal weights, plus CLIP) win over the style's weights."""
    if criteria:
        unknown = [c for c in criteria if c not in CRITERIA]
        if unknown:
            raise InvalidInput(
                f"Unknown criterion {unknown[0]!r}. Criteria: {', '.join(CRITERIA)}."
            )
        return {CLIP: 1.0, **{c: 1.0 for c in criteria}}
    return dict(style_weights or DEFAULT_WEIGHTS)


def clip_for(model_id: str | None, remote: RemoteClip | None = None) -> ClipFunction | str:
    """A CLIP scoring function, or why there is none (for an honest note in the chat).

    With `remote` (a broker is configured) the scores are computed by an `atelier worker`
    as an `embedding` job, so this process needs no torch; call this on the event loop
    then (the function it returns blocks its own thread, never the loop).
    """
    if model_id is None:
        return "turned off (ATELIER_CLIP_ENABLED)"
    if remote is not None:
        return remote.blocking_scorer(model_id)
    for module in ("torch", "transformers"):
        if importlib.util.find_spec(module) is None:
            return "text–image agreement needs the local extra (pip install 'atelier[local]')"

    def score(images: Sequence[bytes], text: str) -> list[float]:
        from pipelines.scoring.clip_scoring import get_scorer

        return get_scorer(model_id).score(list(images), text)

    return score


def score_images(
    images: Sequence[bytes],
    prompt: str,
    weights: dict[str, float],
    clip: ClipFunction | str,
) -> tuple[list[ScoredImage], list[str], dict[str, float]]:
    """Score every image: (ranked best first, notes for the user, the weights used).

    `clip` is a scoring function or the reason there is none (see `clip_for`). The
    weights used lack CLIP when it could not run, so the report shows only what was
    really measured, and a note says why.

    Blocking (numpy, and torch when CLIP is on): call it in a worker thread.
    """
    from pipelines.scoring.quality_rules import run_checks

    notes: list[str] = []
    checks = [name for name in CHECKS if weights.get(name, 0) > 0] or list(CHECKS)
    per_image: list[list[Score]] = [
        [Score(r.name, r.value, r.score, r.passed, r.reason) for r in run_checks(data, checks)]
        for data in images
    ]
    weights = dict(weights)
    if weights.get(CLIP, 0) > 0:
        if isinstance(clip, str):
            notes.append(f"Text–image agreement was not scored: {clip}.")
            weights.pop(CLIP)
        else:
            try:
                similarities = clip(images, prompt)
            except AtelierError as exc:
                notes.append(f"Text–image agreement was not scored: {exc.message}")
                weights.pop(CLIP)
            else:
                from pipelines.scoring.clip_scoring import to_unit

                for scores, similarity in zip(per_image, similarities, strict=True):
                    scores.insert(
                        0,
                        Score(
                            CLIP,
                            similarity,
                            to_unit(similarity),
                            None,
                            f"Text–image agreement {similarity:.3f} (cosine similarity).",
                        ),
                    )
    total = sum(weights.get(s.criterion, 0) for s in per_image[0]) if per_image else 0
    scored = []
    for index, scores in enumerate(per_image):
        weighted = sum(weights.get(s.criterion, 0) * s.score for s in scores)
        failed = sum(weights.get(s.criterion, 0) for s in scores if s.passed is False)
        scored.append(
            ScoredImage(
                index=index,
                scores=scores,
                combined=weighted / total if total else 0.0,
                failed_weight=failed,
            )
        )
    scored.sort(key=lambda s: (s.failed_weight, -s.combined, s.index))
    return scored, notes, weights


def loss_reason(candidate: ScoredImage, best: ScoredImage, weights: dict[str, float]) -> str:
    """Why a candidate was not kept, in words: its failed checks, or a lower score."""
    failed = candidate.failed(weights)
    if failed:
        return " ".join(s.reason for s in failed)
    return f"Passed the checks but scored lower ({candidate.combined:.2f} vs {best.combined:.2f})."


def check_count(n: int, keep: int) -> None:
    if not 1 <= n <= MAX_CANDIDATES:
        raise InvalidInput(f"Curation makes 1 to {MAX_CANDIDATES} candidates; {n} was asked.")
    if not 1 <= keep <= n:
        raise InvalidInput(f"Keep must be from 1 to the number of candidates ({n}); got {keep}.")
