"""CLIP embeddings for finding images by likeness: image vectors to store, text vectors to ask.

An image's embedding is computed once, when it is stored (or by the backfill), and a
query's text is embedded on each search; both come from the same loaded CLIP model that
curation scores with (`clip_scoring.get_scorer`), so an app that does both loads it once.
Vectors are float32 numpy arrays of unit length, so a dot product is the cosine
similarity, the number CLIP was trained to make meaningful between images and texts.

These calls are blocking (a forward pass: milliseconds on a GPU, tens of them on a CPU
per image); callers run them in a worker thread. torch and transformers are imported by
the first call, never by importing this module.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import TYPE_CHECKING

from core.errors import BackendNotConfigured, InvalidInput

if TYPE_CHECKING:
    import numpy as np

    from pipelines.scoring.clip_scoring import ClipScorer

# What the likeness search says when the local extra is missing (pyproject's `local`).
EXTRA_HINT = "pip install 'atelier[local]'"


def extra_installed() -> bool:
    """Whether torch and transformers can be imported (without importing them)."""
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "transformers"))


def embed_images(images: Sequence[bytes], model_id: str, device: str = "auto") -> np.ndarray:
    """One unit-length float32 row per image (encoded file bytes), in the given order.

    Raises BackendNotConfigured without the local extra, InvalidInput for a file that is
    not an image or a model that cannot be loaded.
    """
    scorer = _scorer(model_id, device)
    rows = scorer.embed_images([bytes(image) for image in images])
    import numpy as np

    return np.ascontiguousarray(rows.numpy(), dtype=np.float32)


def embed_text(text: str, model_id: str, device: str = "auto") -> np.ndarray:
    """The unit-length float32 embedding of a query text (CLIP sees its first 77 tokens)."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput("Describe what to look for: the likeness search got no words.")
    scorer = _scorer(model_id, device)
    import numpy as np

    return np.ascontiguousarray(scorer.embed_text(text).numpy(), dtype=np.float32)


def load_model(model_id: str, device: str = "auto") -> None:
    """Load the model now (once per process); raises as the embedding calls would."""
    _scorer(model_id, device)


def _scorer(model_id: str, device: str) -> ClipScorer:
    if not extra_installed():
        raise BackendNotConfigured(
            f"Finding images by likeness needs the local extra: {EXTRA_HINT}, then restart."
        )
    from pipelines.scoring.clip_scoring import get_scorer

    return get_scorer(model_id, device)
