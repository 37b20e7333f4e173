"""Find a user's images by likeness: by words ("foxes at night") or by another image.

The words are embedded by CLIP's text tower and compared with every image's stored
embedding from its vision tower, so an image is found by what it shows, whatever its
prompt said. What the gallery routes and the `find_images` tool call; they hide the
feature when `available` is false and show `how_to_enable` instead.

Embedding a query is blocking model work: it runs in a worker thread (the loaded model is
shared and thread-safe), or, with a broker configured, as an `embedding` job on an
`atelier worker` (`remote`, pipelines/scoring/clip_jobs.py), so an app without torch can
search too. The search itself is `EmbeddingIndex.nearest`: exact, owner-only.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from core.errors import BackendNotConfigured, NotFound
from memory.ids import require_uuid
from memory.image_embeddings import EmbeddingIndex
from memory.media_store import MediaStorage
from pipelines.scoring import clip_embeddings

if TYPE_CHECKING:
    import numpy as np

    from pipelines.scoring.clip_jobs import RemoteClip

MAX_MODEL_KEY = 255  # image_embeddings.model


def model_key(model_id: str) -> str:
    """What names the model's vectors in the table: its id, or a digest of a long path."""
    if len(model_id) <= MAX_MODEL_KEY:
        return model_id
    return "sha256:" + hashlib.sha256(model_id.encode()).hexdigest()


class Likeness:
    """Likeness search over one CLIP model's vectors; `unavailable` when it cannot run."""

    def __init__(
        self,
        index: EmbeddingIndex,
        media: MediaStorage,
        model_id: str,
        device: str = "auto",
        remote: RemoteClip | None = None,
    ) -> None:
        self.available = True
        self.how_to_enable = ""
        self.index = index
        self.media = media
        self.model_id = model_id
        self.model = model_key(model_id)
        self.device = device
        self.remote = remote  # set: vectors are computed by workers, not in this process

    @classmethod
    def unavailable(cls, how_to_enable: str) -> Likeness:
        """A Likeness that refuses every search with `how_to_enable` (said to the user)."""
        likeness = cls.__new__(cls)
        likeness.available = False
        likeness.how_to_enable = how_to_enable
        return likeness

    async def search_text(
        self, user_id: str, text: str, k: int = 60, among: Sequence[str] | None = None
    ) -> list[tuple[str, float]]:
        """The user's k images that look most like `text`: (image id, cosine), best first."""
        self._check_available()
        query = await self.text_vector(text)
        return await self.index.nearest(user_id, self.model, query, k, among)

    async def more_like(
        self, user_id: str, image_id: str, k: int = 60, among: Sequence[str] | None = None
    ) -> list[tuple[str, float]]:
        """The user's k images most like their image `image_id` (itself left out).

        NotFound when the image is not the user's. One not embedded yet (stored before
        likeness was on, backfill not run) is embedded now.
        """
        self._check_available()
        image_id = require_uuid(image_id, "image id")
        vector = await self.index.vector_of(user_id, self.model, image_id)
        if vector is None:
            vector = await self.embed_now(user_id, image_id)
        found = await self.index.nearest(user_id, self.model, vector, k + 1, among)
        return [(other, score) for other, score in found if other != image_id][:k]

    async def embed_now(self, user_id: str, image_id: str) -> np.ndarray:
        """Embed and store one of the user's images at once; NotFound if it is not theirs."""
        sources = await self.index.sources([image_id])
        if not sources or sources[0].user_id != user_id:
            raise NotFound(f"No image with id {image_id} in your conversations.")
        data = await asyncio.to_thread(self.media.get, sources[0].media_key)
        rows = await self.image_vectors([data])
        await self.index.add(image_id, user_id, self.model, rows[0])
        return rows[0]

    async def text_vector(self, text: str) -> np.ndarray:
        """A query's vector: on a worker when CLIP runs there, else in a thread here."""
        if self.remote is not None:
            return await self.remote.embed_text(self.model_id, text)
        return await asyncio.to_thread(clip_embeddings.embed_text, text, self.model_id, self.device)

    async def image_vectors(self, images: Sequence[bytes]) -> np.ndarray:
        """Image vectors, a row each: on a worker when CLIP runs there, else here."""
        if self.remote is not None:
            return await self.remote.embed_images(self.model_id, images)
        return await asyncio.to_thread(
            clip_embeddings.embed_images, list(images), self.model_id, self.device
        )

    def _check_available(self) -> None:
        if not self.available:
            raise BackendNotConfigured(self.how_to_enable)
