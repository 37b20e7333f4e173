"""What a worker tells the board about itself in each heartbeat."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True)
class WorkerInfo:
    """A worker's heartbeat: what it can run and what it holds, for routing and /metrics.

    `busy_job` is not the worker's own claim: readers fill it from `P busy:<name>`, the
    key the dispatcher sets, so that the board and the worker never disagree about it.
    """

    name: str
    kinds: tuple[str, ...]  # "image", "video", "training", "embedding"
    device: str  # "cuda:0", "cpu"
    device_name: str = ""  # "NVIDIA H200"
    memory_total_mb: int | None = None
    memory_free_mb: int | None = None
    loaded_models: tuple[str, ...] = ()  # model ids/sources in its PipelineCache
    host: str = ""
    pid: int = 0
    started_at: float = 0.0
    busy_job: str | None = None

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("busy_job")
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> WorkerInfo:
        data: dict[str, Any] = json.loads(text)
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        known["kinds"] = tuple(known.get("kinds", ()))
        known["loaded_models"] = tuple(known.get("loaded_models", ()))
        return cls(**known)

    def with_busy(self, job_id: str | None) -> WorkerInfo:
        return replace(self, busy_job=job_id)

    @property
    def incarnation(self) -> str:
        """Tells a restarted worker of the same name from the process it replaced."""
        return f"{self.host}:{self.pid}:{self.started_at!r}"
