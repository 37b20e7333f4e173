"""Session fixtures: a tiny random-weight SD pipeline and a LoRA for it, saved to disk.

Built once per test session (well under a second each) and loaded back by the code under
test through `from_pretrained`, as a downloaded model would be. Tests that use them are
skipped when the local extra (torch, diffusers, peft) is not installed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

LORA_NAME = "tiny-style"


def _require_local_extra() -> None:
    for module in ("torch", "diffusers", "transformers", "peft"):
        pytest.importorskip(module, reason="the local extra (pip install 'atelier[local]')")


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _require_local_extra()
    import torch

    from tests.tiny_models import build_tiny_sd

    # Tiny models gain nothing from several threads, and on a busy 2-core CI machine
    # torch's spinning thread team runs 5-10x slower than one thread.
    torch.set_num_threads(1)
    return build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_lora_dir(tiny_sd_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_models import build_tiny_lora

    folder = tmp_path_factory.mktemp("loras")
    build_tiny_lora(tiny_sd_dir, folder / f"{LORA_NAME}.safetensors")
    return folder
