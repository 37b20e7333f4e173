"""Training checkpoints, written so that a crash or a stop never loses more than a few steps.

A checkpoint is a folder `checkpoints/step-000040/` holding everything a resumed run
needs to continue as if it had never stopped:

    adapter.safetensors   the LoRA weights (peft keys, float32)
    optimizer.pt          AdamW's moments and step counts (and the grad scaler's, if any)
    rng.pt                the state of the job's random generator (noise, timesteps, order)
    state.json            the step, the batch order's position, the losses so far, and
                          the settings that must match for a resume to be the same run

It is built in a hidden `.step-000040.partial/` folder, each file flushed to disk, then
renamed into place in one step, so a folder named `step-N` is always complete; a partial
one left by a crash is ignored and cleaned up. Only the newest `keep` are kept.

torch is imported only by the functions that read or write tensors.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import InvalidInput

STEP_FOLDER = re.compile(r"^step-(\d{6,})$")


@dataclass(frozen=True)
class Checkpoint:
    """What a resumed run gets back (tensors already loaded, on the CPU)."""

    step: int
    folder: Path
    adapter: dict[str, Any]
    optimizer: dict[str, Any]
    rng: dict[str, Any]
    state: dict[str, Any]


def folder_for(checkpoints: Path, step: int) -> Path:
    return checkpoints / f"step-{step:06d}"


def latest_step(checkpoints: Path) -> int | None:
    """The newest complete checkpoint's step, without importing torch; None when none."""
    if not checkpoints.is_dir():
        return None
    steps = [
        int(match[1])
        for entry in checkpoints.iterdir()
        if (match := STEP_FOLDER.match(entry.name)) and (entry / "state.json").is_file()
    ]
    return max(steps, default=None)


def save(
    checkpoints: Path,
    step: int,
    adapter: dict[str, Any],
    optimizer: dict[str, Any],
    rng: dict[str, Any],
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write one checkpoint atomically, then drop all but the newest `keep`."""
    import torch
    from safetensors.torch import save_file

    final = folder_for(checkpoints, step)
    if (final / "state.json").is_file():
        return final  # this step is already safe (a stop right after a checkpoint)
    checkpoints.mkdir(parents=True, exist_ok=True)
    partial = checkpoints / f".{final.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in adapter.items()}
    save_file(tensors, str(partial / "adapter.safetensors"))
    torch.save(optimizer, partial / "optimizer.pt")
    torch.save(rng, partial / "rng.pt")
    (partial / "state.json").write_text(json.dumps({**state, "step": step}), encoding="utf-8")
    for file in partial.iterdir():
        _fsync(file)
    os.replace(partial, final)
    _fsync_dir(checkpoints)
    prune(checkpoints, keep)
    return final


def load(checkpoints: Path, step: int | None = None) -> Checkpoint:
    """A checkpoint (the newest if `step` is None), read back for resuming."""
    import torch
    from safetensors.torch import load_file

    step = latest_step(checkpoints) if step is None else step
    if step is None:
        raise InvalidInput(f"There is no checkpoint to resume from in {checkpoints}.")
    folder = folder_for(checkpoints, step)
    try:
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        adapter = load_file(str(folder / "adapter.safetensors"))
        optimizer = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
        rng = torch.load(folder / "rng.pt", map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise InvalidInput(
            f"The checkpoint at step {step} in {checkpoints} cannot be read ({exc}); delete "
            "that folder to resume from the one before, or start over."
        ) from None
    return Checkpoint(step, folder, adapter, optimizer, rng, state)


def prune(checkpoints: Path, keep: int) -> None:
    """Remove partial folders and all but the newest `keep` complete checkpoints."""
    if not checkpoints.is_dir():
        return
    complete = []
    for entry in checkpoints.iterdir():
        if entry.name.startswith(".") and entry.name.endswith(".partial"):
            shutil.rmtree(entry, ignore_errors=True)
        elif match := STEP_FOLDER.match(entry.name):
            complete.append((int(match[1]), entry))
    complete.sort()
    for _step, entry in complete[: max(0, len(complete) - max(1, keep))]:
        shutil.rmtree(entry, ignore_errors=True)


def _fsync(path: Path) -> None:
    with path.open("rb") as file:
        os.fsync(file.fileno())


def _fsync_dir(path: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
