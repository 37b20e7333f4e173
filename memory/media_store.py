"""Content-addressed files on local disk under the data dir.

A file's key is the SHA-256 of its bytes, so the same image stored twice costs no disk
and a key can never point at a different content. Who may read a key is recorded in the
database (`media_refs`), not here: this module only stores and returns bytes.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from core.errors import NotFound, PersistenceError
from memory.ids import require_media_key


class MediaStore:
    def __init__(self, root: Path) -> None:
        self.root = root
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
        path = self.path_for(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise NotFound("No such file.") from None

    def exists(self, key: str) -> bool:
        return self.path_for(key).exists()
