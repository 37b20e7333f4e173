"""CLIP work as `embedding` jobs on `atelier worker` processes, when a broker is configured.

Without ATELIER_BROKER_URL nothing here is used: likeness search, the embedding worker
and curation call `clip_embeddings` / `clip_scoring` in a thread of the app, as before.
With a broker, the app may lack torch altogether; then every CLIP forward pass (a stored
image's vector, a search query's vector, curation's text–image scores) is a job on the
same board, and through the same `JobRunner` seam, as image generation: fair between
users, routed to a worker that already holds the CLIP model, stoppable.

`run_clip_job` is what the worker runs. It calls the very functions the app calls in
process (`clip_embeddings`, `ClipScorer.score`), on the worker's device (the worker puts
its own plan into the job), so a vector is the same whichever side computed it. Results
cross as plain bytes and floats: the job codec's unpickler admits no numpy.

`RemoteClip` is the app's side. Before a job goes on the board it checks that some live
worker takes `embedding` jobs: otherwise a search would wait, silently, for a worker that
may never come; it says instead how to start one.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from core.errors import BackendNotConfigured
from pipelines.devices import DevicePlan
from pipelines.progress import Progress

if TYPE_CHECKING:
    import numpy as np

KIND = "embedding"
Task = Literal["load", "images", "text", "score"]
NO_WORKER = (
    "No worker takes CLIP jobs: start one with `atelier worker --queues embedding` "
    "(or with no --queues, which takes every kind) on a machine with the local extra."
)


@dataclass(frozen=True)
class ClipJob:
    """One CLIP job: load a model, embed images, embed a text, or score images by a text.

    `model` is the CLIP model id or folder (what routing matches against the models a
    worker holds); `plan` is replaced by the worker's own, of which only the device is
    used (`get_scorer` picks the number format for its device, as in process).
    """

    model: str
    task: Task
    images: tuple[bytes, ...] = ()
    text: str = ""
    plan: DevicePlan = DevicePlan("auto", "auto")


@dataclass(frozen=True)
class Vectors:
    """Unit-length float32 rows as little-endian bytes: numpy-free on the way back."""

    rows: int
    dim: int
    data: bytes

    @classmethod
    def of(cls, array: Any) -> Vectors:
        import numpy as np

        rows = np.ascontiguousarray(array, dtype="<f4")
        if rows.ndim == 1:
            rows = rows[None, :]
        return cls(int(rows.shape[0]), int(rows.shape[1]), rows.tobytes())

    def array(self) -> np.ndarray:
        import numpy as np

        return np.frombuffer(self.data, dtype="<f4").reshape(self.rows, self.dim).astype(np.float32)


def run_clip_job(job: ClipJob, progress: Progress) -> Vectors | list[float] | None:
    """The worker's side (blocking): the same calls the app makes when CLIP runs in it."""
    from pipelines.scoring import clip_embeddings

    device = job.plan.device
    if job.task == "load":
        clip_embeddings.load_model(job.model, device)
        return None
    if job.task == "images":
        return Vectors.of(clip_embeddings.embed_images(job.images, job.model, device))
    if job.task == "text":
        return Vectors.of(clip_embeddings.embed_text(job.text, job.model, device))
    if job.task == "score":
        from pipelines.scoring.clip_scoring import get_scorer

        return get_scorer(job.model, device).score(list(job.images), job.text)
    raise ValueError(f"Unknown CLIP task {job.task!r}.")


class RemoteClip:
    """CLIP on the workers, with the in-process functions' results (numpy arrays, floats)."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner  # a CeleryJobRunner (pipelines.remote.celery_runner)
        self._loaded: set[str] = set()

    async def load(self, model: str) -> None:
        """Have a worker load `model` (once per app process); raises as loading would."""
        if model not in self._loaded:
            await self._run(ClipJob(model, "load"))
            self._loaded.add(model)

    async def embed_images(self, model: str, images: Sequence[bytes]) -> np.ndarray:
        """One unit-length float32 row per image, as `clip_embeddings.embed_images`."""
        done = await self._run(ClipJob(model, "images", images=tuple(bytes(i) for i in images)))
        return done.array()

    async def embed_text(self, model: str, text: str) -> np.ndarray:
        """The unit-length float32 vector of `text`, as `clip_embeddings.embed_text`."""
        return (await self._run(ClipJob(model, "text", text=text))).array()[0]

    async def score(self, model: str, images: Sequence[bytes], text: str) -> list[float]:
        """Cosine similarity of each image with `text`, as `ClipScorer.score`."""
        job = ClipJob(model, "score", images=tuple(bytes(i) for i in images), text=text)
        return list(await self._run(job))

    def blocking_scorer(self, model: str) -> Any:
        """`score` for code in a worker thread (curation's `score_images`).

        Call it on the event loop; the function it returns must be called off it: it
        hands the job to this loop and blocks its thread until the result is back.
        """
        loop = asyncio.get_running_loop()

        def score(images: Sequence[bytes], text: str) -> list[float]:
            try:
                asyncio.get_running_loop()
            except RuntimeError:  # off the loop, as it must be
                return asyncio.run_coroutine_threadsafe(
                    self.score(model, images, text), loop
                ).result()
            raise RuntimeError("Remote CLIP scoring blocks: call it in a thread, not the loop.")

        return score

    async def _run(self, job: ClipJob) -> Any:
        board = getattr(self.runner, "board", None)
        if board is not None and not any(KIND in w.kinds for w in await board.live_workers()):
            raise BackendNotConfigured(NO_WORKER)
        return await self.runner.run(job.model, functools.partial(run_clip_job, job), Progress())


def remote_clip(settings: Any) -> RemoteClip | None:
    """The app's RemoteClip when jobs run on workers (ATELIER_BROKER_URL), else None."""
    from pipelines import job_runners

    if not job_runners.broker_url_of(settings):
        return None
    return RemoteClip(job_runners.runner_for(settings))
