"""Loaded diffusers pipelines, kept between requests and shared between tasks.

Loading a model takes seconds to minutes (and a download on first use); a warm request
must not pay it again. Pipelines are keyed by (model id or folder, device, dtype). The
image-to-image and inpainting pipelines of a model are made with `from_pipe`, so all
three share one set of weights: switching task costs nothing and no memory.

At most `max_models` models stay loaded (two by default, as one SDXL-class model in
half precision takes ~7 GB of GPU memory); the least recently used is dropped and the
accelerator's cache emptied so the next one fits.

Pipelines are loaded with the model's own components, including a safety checker where
the model ships one; the backend turns its verdict into a refusal rather than passing on
the black image it leaves. Model CPU offload is not used: it needs an accelerator (it
raises without one) and trades speed for memory, which is the operator's call.

Calls come from the device worker threads of `JobQueue`, so one device never loads two
things at once; the lock only guards the bookkeeping shared between devices.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from core.errors import InvalidInput
from pipelines.devices import DevicePlan, free_accelerator_memory

Task = Literal["text2img", "img2img", "inpaint"]
CacheKey = tuple[str, str, str]
Loader = Callable[[str, DevicePlan], Any]


def is_local_path(model: str) -> bool:
    """A folder on disk rather than a Hugging Face id ("org/name")."""
    if model.startswith(("/", ".", "~", "\\")) or "\\" in model or model.count("/") > 1:
        return True
    return len(model) > 1 and model[1] == ":"  # a Windows drive, C:\models\...


def load_text2img(model: str, plan: DevicePlan) -> Any:
    """Load a model's text-to-image pipeline onto the plan's device, or explain why not."""
    from diffusers import AutoPipelineForText2Image

    source = _source(model)
    try:
        pipe = AutoPipelineForText2Image.from_pretrained(source, **_dtype_argument(plan))
    except (OSError, ValueError) as exc:
        raise load_error(model, source, exc, "the diffusers pipeline") from exc
    pipe = pipe.to(plan.device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _dtype_argument(plan: DevicePlan) -> dict[str, Any]:
    """diffusers renamed `torch_dtype` to `dtype` (PR 14205); older releases know only the first."""
    from diffusers.utils import deprecation_utils

    name = "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"
    return {name: plan.torch_dtype}


def load_error(
    model: str, source: str, exc: BaseException, what: str, hub_what: str = "the model"
) -> InvalidInput:
    """Why `model` did not load, naming a folder only as its last part.

    Which branch is taken depends on the name alone (a path or a hub id), never on what
    the disk holds, and the reason has the folder's path taken out: a user learns nothing
    about the server's files from it.
    """
    reason = _first_line(exc)
    for path in {source, model, str(Path(model).expanduser())}:
        if len(path) > 1 and is_local_path(path):
            reason = reason.replace(path, "the model folder")
    if is_local_path(model):
        return InvalidInput(f"Could not load {what} in the folder {_shown(model)} ({reason}).")
    return InvalidInput(
        f"Could not download or load {hub_what} {model!r} from the Hugging Face Hub "
        f"({reason}); check the id, your network, or HF_TOKEN for gated models."
    )


def _source(model: str) -> str:
    """A folder's resolved path after checking it holds a pipeline; a hub id's snapshot.

    Only a path (absolute, `~`, `./`) is read as a folder; callers make the operator's own
    relative folders absolute first (ModelSources.source). A hub id is fetched into (or
    found in) the hub cache first and loaded from there: diffusers would read a folder of
    the same name under the working directory instead, and answer differently when one
    exists. So what a user names as a hub id never reads a server folder, and its errors
    are the hub's alone.
    """
    if is_local_path(model):
        folder = Path(model).expanduser()
        if not folder.is_dir():
            raise InvalidInput(
                f"The local model {_shown(model)} does not exist. Give a diffusers pipeline "
                "folder holding model_index.json, or a Hugging Face id such as "
                "stabilityai/sd-turbo."
            )
        if not (folder / "model_index.json").is_file():
            raise InvalidInput(
                f"The model folder {_shown(model)} has no model_index.json, so it is not "
                "a diffusers pipeline folder (save one with pipe.save_pretrained(folder))."
            )
        return str(folder.resolve())
    return _hub_snapshot(model)


def _hub_snapshot(model: str) -> str:
    """The hub's files of `model` in the local hub cache (downloaded if need be)."""
    from diffusers import DiffusionPipeline

    try:
        return str(DiffusionPipeline.download(model))
    except (OSError, ValueError) as exc:
        raise load_error(model, model, exc, "the model") from exc


def _shown(model: str) -> str:
    """A folder as errors name it: its last part only, never the server's path."""
    return repr(Path(model).name or model)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200].rstrip(".")


def derive(base: Any, task: Task) -> Any:
    """The img2img or inpainting pipeline built on `base`'s components (no copy)."""
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

    auto = AutoPipelineForImage2Image if task == "img2img" else AutoPipelineForInpainting
    try:
        pipe = auto.from_pipe(base)
    except ValueError as exc:
        what = "image-to-image" if task == "img2img" else "inpainting"
        raise InvalidInput(
            f"diffusers has no {what} pipeline for {type(base).__name__} models."
        ) from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe


class PipelineCache:
    """Loaded pipelines by (model, device, dtype), least recently used dropped first."""

    def __init__(self, max_models: int = 2, loader: Loader = load_text2img) -> None:
        if max_models < 1:
            raise ValueError("max_models must be at least 1")
        self.max_models = max_models
        self.loads = 0  # how many times a model was loaded (tests and stats read it)
        self._loader = loader
        self._entries: OrderedDict[CacheKey, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(model: str, plan: DevicePlan) -> CacheKey:
        return (model, plan.device, plan.dtype)

    def is_loaded(self, model: str, plan: DevicePlan) -> bool:
        with self._lock:
            return self.key(model, plan) in self._entries

    def get(self, model: str, plan: DevicePlan, task: Task = "text2img") -> Any:
        """The pipeline for `task`, loading the model (and dropping an old one) if needed."""
        key = self.key(model, plan)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
        if entry is None:
            entry = {"text2img": self._loader(model, plan)}
            self._store(key, entry)
        if task not in entry:
            entry[task] = derive(entry["text2img"], task)
        return entry[task]

    def _store(self, key: CacheKey, entry: dict[str, Any]) -> None:
        evicted: list[CacheKey] = []
        with self._lock:
            self.loads += 1
            self._entries[key] = entry
            while len(self._entries) > self.max_models:
                old_key, old_entry = self._entries.popitem(last=False)
                old_entry.clear()
                del old_entry
                evicted.append(old_key)
        for _model, device, _dtype in evicted:
            free_accelerator_memory(device)

    def clear(self) -> None:
        with self._lock:
            devices = {device for _model, device, _dtype in self._entries}
            self._entries.clear()
        for device in devices:
            free_accelerator_memory(device)
