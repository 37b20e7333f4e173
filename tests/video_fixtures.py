"""Session fixtures for video: a tiny random-weight SVD pipeline saved to disk.

Built once per test session (about a second) and loaded back through `from_pretrained`,
as a downloaded model would be. Tests that use it are skipped when the local extra
(torch, diffusers) is not installed; video tests need imageio-ffmpeg (a core dependency).
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_svd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for module in ("torch", "diffusers", "transformers"):
        pytest.importorskip(module, reason="the local extra (pip install 'atelier[local]')")
    import torch

    from tests.tiny_video import build_tiny_svd

    # As for the tiny SD model: one thread is fastest for tiny tensors on a busy CPU.
    torch.set_num_threads(1)
    return build_tiny_svd(tmp_path_factory.mktemp("models") / "tiny-svd")
