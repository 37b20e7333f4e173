"""Backends of one kind looked up by id, and "backend[:model]" specs resolved against them.

Image and video backends are found the same way: a table of modules, each with a factory
that returns None when its backend is not configured, and the same answers for a known
but unconfigured id (how to enable it) and an unknown one (which ids exist). One generic
table keeps those answers and the spec syntax from drifting apart between the kinds.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, Generic, Protocol, Self, TypeVar

from core.errors import BackendNotConfigured, InvalidInput


class _Backend(Protocol):
    id: str
    default_model: str


B = TypeVar("B", bound=_Backend)


def build(modules: Mapping[str, str], factory: str, *args: Any) -> dict[str, Any]:
    """Import each module and call its `factory(*args)`; keep the backends it returns.

    Modules are imported only here, and must import heavy extras lazily, so a missing
    optional extra never breaks start-up.
    """
    backends: dict[str, Any] = {}
    for backend_id, module_name in modules.items():
        backend = getattr(importlib.import_module(module_name), factory)(*args)
        if backend is not None:
            backends[backend_id] = backend
    return backends


class BackendTable(Generic[B]):
    """The configured backends of one kind ("image", "video")."""

    kind = "image"
    modules: Mapping[str, str] = {}
    how_to_enable: Mapping[str, str] = {}
    factory = "create_backend"  # each module's `factory(settings, images)`

    def __init__(self, backends: dict[str, B]) -> None:
        self._backends = backends

    @classmethod
    def from_settings(cls, settings: Any, images: Any = None) -> Self:
        """The configured backends of this kind; `images` lets one reuse an image backend."""
        return cls(build(cls.modules, cls.factory, settings, images))

    def get(self, backend_id: str) -> B:
        if backend_id in self._backends:
            return self._backends[backend_id]
        if backend_id in self.modules:
            how = self.how_to_enable.get(backend_id, "see the README")
            raise BackendNotConfigured(
                f"The {backend_id} {self.kind} backend is not configured: {how}."
            )
        raise InvalidInput(self.unknown(backend_id))

    def unknown(self, backend_id: str) -> str:
        """The refusal for an id no module provides; a kind may say more."""
        known = ", ".join(sorted(self.modules)) or "none"
        return f"Unknown {self.kind} backend {backend_id!r}. Known backends: {known}."

    def resolve(self, spec: str) -> tuple[B, str]:
        """A spec "backend[:model]" → (backend, model); the model defaults to the backend's."""
        backend_id, _, model = (spec or "").strip().partition(":")
        backend = self.get(backend_id.strip().lower())
        return backend, model.strip() or backend.default_model

    def available(self) -> list[B]:
        return list(self._backends.values())
