"""A device job as bytes, and back on a worker with that worker's cache and device.

Local backends hand their runner `functools.partial(job_function, spec, [cache])`. To
cross to a worker process the partial is pickled with the app's `PipelineCache`
replaced by a marker (the worker puts its own in; a cache is live pipelines, not data),
and the worker replaces the device plan too: the worker, not the app, knows its device
(the app in remote mode never imports torch). A training job gets the worker's plan
through `training_plan`, and when it is a retry after a worker died, it resumes from
the checkpoint the dead worker left in the shared LoRA folder.

Unpickling is limited to this project's classes, pathlib, functools.partial and plain
builtin containers and exceptions: the bytes come through Redis, and a pickle that
could name any callable would run whatever someone with Redis access wrote there.
"""

from __future__ import annotations

import builtins
import functools
import io
import pickle
from collections.abc import Callable
from dataclasses import fields, is_dataclass, replace
from typing import Any

from pipelines.devices import DevicePlan
from pipelines.images.pipeline_cache import PipelineCache

KINDS = {
    "pipelines.images.local_diffusers.render": "image",
    "pipelines.video.local_video.render_clip": "video",
    "pipelines.training.lora_training.run_training": "training",
    "pipelines.scoring.clip_jobs.run_clip_job": "embedding",
}
_ALLOWED_MODULES = ("pipelines.", "core.", "pathlib", "datetime", "collections", "decimal")
_ALLOWED_BUILTINS = {"set", "frozenset", "tuple", "list", "dict", "complex", "bytearray", "slice"}


class _CacheMarker:
    """Stands where the app's PipelineCache was; the worker's own goes there."""

    def __reduce__(self) -> str:
        return "CACHE"


CACHE = _CacheMarker()


def job_kind(fn: Callable[..., Any]) -> str:
    """ "image", "video", "training" or "embedding"; ValueError for what workers do not run."""
    func = getattr(fn, "func", fn)
    name = f"{getattr(func, '__module__', '')}.{getattr(func, '__qualname__', '')}"
    if name not in KINDS:
        raise ValueError(f"{name} is not a job a worker runs (known: {', '.join(KINDS)})")
    return KINDS[name]


def job_model(fn: Callable[..., Any]) -> str:
    """The model a job loads: what routing prefers a worker that has loaded."""
    spec = _spec(fn)
    return str(getattr(spec, "source", "") or getattr(spec, "model", "") or "") or str(
        getattr(spec, "base_model", "")
    )


def _spec(fn: Callable[..., Any]) -> Any:
    args = getattr(fn, "args", ())
    return args[0] if args else None


def dumps_job(fn: functools.partial[Any], *, watched: bool = False) -> bytes:
    """The job as bytes; `watched`: the app shows its progress, so previews are worth making."""
    job_kind(fn)  # refuse early what no worker can run
    args = tuple(CACHE if isinstance(a, PipelineCache) else a for a in fn.args)
    return pickle.dumps(
        {"func": fn.func, "args": args, "keywords": dict(fn.keywords), "watched": watched},
        protocol=pickle.HIGHEST_PROTOCOL,
    )


def loads_job(
    blob: bytes,
    cache_for: Callable[[str], PipelineCache],
    plan: DevicePlan,
    *,
    attempt: int = 1,
) -> tuple[functools.partial[Any], bool]:
    """The job rebuilt for this worker, and whether the app watches it.

    `cache_for(kind)` is the worker's cache for that kind of job; `plan` its device plan.
    """
    data = loads(blob)
    func = data["func"]
    fn = functools.partial(func, *data["args"], **data["keywords"])
    kind = job_kind(fn)
    args = [cache_for(kind) if isinstance(a, _CacheMarker) else a for a in data["args"]]
    if args:
        args[0] = _for_worker(args[0], kind, plan, attempt)
    return functools.partial(func, *args, **data["keywords"]), bool(data.get("watched"))


def _for_worker(spec: Any, kind: str, plan: DevicePlan, attempt: int) -> Any:
    if not is_dataclass(spec) or "plan" not in {f.name for f in fields(spec)}:
        return spec
    if kind != "training":
        return replace(spec, plan=plan)
    from pipelines.training import lora_checkpoints
    from pipelines.training.lora_training import training_plan

    spec = replace(spec, plan=training_plan(plan, spec.params))
    # The app checked that no checkpoint existed when it was asked; one there now was
    # left by this job's earlier attempt on a worker that died.
    retried = attempt > 1 and not spec.resume
    if retried and lora_checkpoints.latest_step(spec.layout.checkpoints) is not None:
        spec = replace(spec, resume=True)
    return spec


def dumps_result(value: Any, plan: DevicePlan, worker: str) -> bytes:
    return pickle.dumps(
        {"value": value, "device": plan.device, "dtype": plan.dtype, "worker": worker},
        protocol=pickle.HIGHEST_PROTOCOL,
    )


def loads_result(blob: bytes) -> dict[str, Any]:
    """{"value", "device", "dtype", "worker"}."""
    return loads(blob)


def dumps_error(exc: BaseException) -> bytes | None:
    """The exception as bytes when it survives a round trip here, else None."""
    try:
        blob = pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
        loads(blob)
    except Exception:
        return None
    return blob


def loads(blob: bytes) -> Any:
    return _Unpickler(io.BytesIO(blob)).load()


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins":
            found = getattr(builtins, name, None)
            if name in _ALLOWED_BUILTINS or (
                isinstance(found, type) and issubclass(found, BaseException)
            ):
                return found
        elif module == "functools" and name == "partial":
            return functools.partial
        elif module.startswith(_ALLOWED_MODULES) or module == "copyreg":
            if module == "copyreg" and name not in ("_reconstructor", "__newobj__"):
                raise pickle.UnpicklingError(f"{module}.{name} may not be loaded from a job")
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} may not be loaded from a job")
