"""Session fixture: a tiny random-weight CLIP model saved to disk, for text–image scoring.

Built once per test session (~0.1 s) and loaded back by the code under test through
`from_pretrained`, as a downloaded model would be. Tests that use it are skipped when
the local extra is not installed.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # tests.tiny_clip reuses the tokenizer writer in tests.tiny_models, which imports diffusers.
    for module in ("torch", "transformers", "diffusers"):
        pytest.importorskip(module, reason="the local extra (pip install 'atelier[local]')")
    import torch

    from tests.tiny_clip import build_tiny_clip

    # Tiny models gain nothing from several threads, and on a busy 2-core CI machine
    # torch's spinning thread team runs 5-10x slower than one thread.
    torch.set_num_threads(1)
    return build_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-clip")
