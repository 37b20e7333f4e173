"""The one interface every image backend implements, and the checks done before a call.

A backend declares what it supports as plain data (`Capabilities`); a request that asks
for anything else is refused with a message listing what the backend can do, never
silently changed into one it can honour.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from memory.errors import InvalidInput


@dataclass(frozen=True)
class Capabilities:
    sizes: tuple[str, ...]
    qualities: tuple[str, ...] = ("auto",)
    max_n: int = 1
    seed: bool = False
    max_prompt_chars: int = 4000


@dataclass(frozen=True)
class ImageRequest:
    prompt: str
    n: int = 1
    size: str | None = None
    quality: str | None = None
    seed: int | None = None


@dataclass(frozen=True)
class GeneratedImage:
    data: bytes
    mime: str
    width: int
    height: int
    seed: int | None = None


@dataclass(frozen=True)
class ImageResult:
    images: list[GeneratedImage]
    backend: str
    model: str
    prompt_sent: str
    parameters: dict[str, Any] = field(default_factory=dict)
    usage: dict[str, Any] | None = None
    seed_honoured: bool = False


class ImageBackend(Protocol):
    """What tools call; they look backends up by id in the registry, never import them."""

    id: str
    model: str
    label: str
    capabilities: Capabilities

    async def generate(self, request: ImageRequest) -> ImageResult: ...


def check_request(backend: ImageBackend, request: ImageRequest) -> ImageRequest:
    """Refuse what the backend cannot do; fill unset options with its defaults."""
    caps = backend.capabilities
    prompt = (request.prompt or "").strip()
    if not prompt:
        raise InvalidInput("The prompt is empty: describe the image you want.")
    if len(prompt) > caps.max_prompt_chars:
        raise InvalidInput(
            f"The prompt has {len(prompt):,} characters; {backend.label} accepts at most "
            f"{caps.max_prompt_chars:,}."
        )
    if not 1 <= request.n <= caps.max_n:
        raise InvalidInput(
            f"{backend.label} makes 1 to {caps.max_n} images per request; {request.n} was asked."
        )
    size = request.size or caps.sizes[0]
    if size not in caps.sizes:
        raise InvalidInput(
            f"{backend.label} cannot make {size} images. Valid sizes: {', '.join(caps.sizes)}."
        )
    quality = request.quality or caps.qualities[0]
    if quality not in caps.qualities:
        raise InvalidInput(
            f"{backend.label} has no quality {quality!r}. Valid: {', '.join(caps.qualities)}."
        )
    if request.seed is not None and not 0 <= request.seed < 2**63:
        raise InvalidInput("A seed is a whole number from 0 to 2^63-1.")
    return ImageRequest(prompt=prompt, n=request.n, size=size, quality=quality, seed=request.seed)
