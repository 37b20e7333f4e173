"""Content-addressed files: the interface every media store has, and the local-disk one.

A file's key is the SHA-256 of its bytes, so the same image stored twice costs no space
and a key can never point at a different content. Who may read a key is recorded in the
database (`media_refs`), not here: a store only stores and returns bytes, and the
/media route checks the owner before it asks a store how to answer.

Two stores keep the same keys: `LocalMediaStore` (a folder under the data dir, the
default) and `S3MediaStore` (memory/s3_media_store.py: S3-compatible object storage, so
several app processes on several machines share one set of files). memory/media_stores.py
picks one from the settings. Every method blocks (disk or network): on an async path,
call it through `asyncio.to_thread`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from core.errors import NotFound, PersistenceError
from memory.ids import require_media_key


@dataclass(frozen=True)
class SendFile:
    """Answer with this local file (the server does Range requests itself)."""

    path: Path


@dataclass(frozen=True)
class Redirect:
    """Answer with a redirect to this short-lived link straight to the storage."""

    url: str


@dataclass(frozen=True)
class Stream:
    """Answer with these bytes as they arrive (a byte range of them when `status` is 206)."""

    status: int
    chunks: Iterator[bytes]  # releases its connection once exhausted
    headers: dict[str, str] = field(default_factory=dict)


Answer = SendFile | Redirect | Stream


class MediaStorage(Protocol):
    """What the app needs of a media store, whatever holds the bytes."""

    # A folder on this machine for files derived from the media (thumbnails): they can be
    # made again from the originals, so each process may keep its own.
    cache_dir: Path

    def put(self, data: bytes) -> str:
        """Store bytes and return their key (the same bytes stored twice: one copy)."""
        ...

    def get(self, key: str) -> bytes:
        """The bytes; NotFound if the key is not stored."""
        ...

    def open(self, key: str) -> IO[bytes]:
        """A readable stream of the bytes (the caller closes it); NotFound if not stored."""
        ...

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int:
        """The size in bytes; NotFound if not stored."""
        ...

    def delete(self, key: str) -> None:
        """Remove the file; a key that is not stored is no error."""
        ...

    def answer(self, key: str, mime: str, byte_range: str | None) -> Answer:
        """How the /media route sends the file, after it checked who may read it.

        `mime` is the type recorded for the key; `byte_range` is the request's Range
        header. NotFound if the key is not stored.
        """
        ...

    def check(self) -> None:
        """Raise PersistenceError (a clear sentence) unless the store can be written and
        read back now; for `atelier doctor`."""
        ...


class LocalMediaStore:
    """Files under `root`, sharded by the key's first bytes (`ab/cd/abcd...`)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cache_dir = root
        self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, key: str) -> Path:
        key = require_media_key(key)
        return self.root / key[:2] / key[2:4] / key

    def put(self, data: bytes) -> str:
        """Store bytes and return their key; writing is atomic (temp file + rename)."""
        key = hashlib.sha256(data).hexdigest()
        path = self.path_for(key)
        if path.exists():
            return key
        tmp: str | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            raise PersistenceError(
                f"Could not save a file to the media store: {exc.strerror}."
            ) from exc
        return key

    def get(self, key: str) -> bytes:
        with self.open(key) as handle:
            return handle.read()

    def open(self, key: str) -> IO[bytes]:
        try:
            return self.path_for(key).open("rb")
        except FileNotFoundError:
            raise NotFound("No such file.") from None

    def exists(self, key: str) -> bool:
        return self.path_for(key).exists()

    def size(self, key: str) -> int:
        try:
            return self.path_for(key).stat().st_size
        except FileNotFoundError:
            raise NotFound("No such file.") from None

    def delete(self, key: str) -> None:
        self.path_for(key).unlink(missing_ok=True)

    def answer(self, key: str, mime: str, byte_range: str | None) -> Answer:
        path = self.path_for(key)
        if not path.is_file():
            raise NotFound("No such file.")
        return SendFile(path)

    def check(self) -> None:
        try:
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".check-")
            os.close(fd)
            Path(tmp).unlink()
        except OSError as exc:
            raise PersistenceError(
                f"The media folder {self.root} cannot be written: {exc.strerror}."
            ) from exc


# The name every caller that builds a store on local disk (tests, benchmarks, tools) uses.
MediaStore = LocalMediaStore
