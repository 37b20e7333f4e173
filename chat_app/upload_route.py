"""POST /project/file: uploads streamed to disk, the size limit enforced while reading.

Replaces Chainlit's route of the same path (our routes come before the mount). Chainlit's
reads the whole body into memory and only then compares its size with `max_size_mb`: a
refused 300 MB upload raised the server's memory by ~250 MB, and nothing bounded how
many ran at once. Here:

- a declared `Content-Length` over the limit is answered 413 before a byte is read;
- the body is read as it arrives and counted; past the limit the upload stops with 413
  (the parser spools file data to a temporary file past 1 MB, so memory stays small);
- each user may have `uploads_per_user` uploads running at once; more answer 429
  (counted across app processes when ATELIER_REDIS_URL is set);
- the checks Chainlit makes are kept: the session must be the caller's own, the parent
  message of an AskFileMessage must exist, and the file's type and size are checked with
  Chainlit's own `validate_file_upload` against the same configuration;
- the file is registered in the session exactly as `BaseSession.persist_file` does (the
  same folder, id, extension and `session.files` entry), so Chainlit's
  `GET /project/file/<id>` and the message's file references work unchanged.
"""

from __future__ import annotations

import asyncio
import mimetypes
import shutil
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any

from chainlit.auth import get_current_user
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from chat_app.session_access import own_session
from chat_app.shared_slots import HeldSlots, MemorySlots, Slots, slots_for
from core.logging_setup import get_logger

if TYPE_CHECKING:
    from chat_app.settings import Settings

log = get_logger(__name__)

# Room for the multipart boundaries and part headers around the file itself.
MULTIPART_OVERHEAD = 64 * 1024
# When Chainlit's configuration sets no size limit, this one still applies.
DEFAULT_MAX_MB = 100


class TooLarge(Exception):
    """The body passed the limit while it was being read."""


class UploadSlots:
    """How many uploads each user has running: in this process, or with ATELIER_REDIS_URL
    in every app process (chat_app/shared_slots.py), so replicas do not multiply it."""

    def __init__(self, slots: Slots | None = None) -> None:
        self._held = HeldSlots(slots or MemorySlots())

    @classmethod
    def from_settings(cls, settings: Settings) -> UploadSlots:
        return cls(slots_for(settings, "atelier-uploads"))

    @asynccontextmanager
    async def hold(self, user: str, limit: int) -> AsyncIterator[None]:
        slot_id = await self._held.take(user, limit)
        if slot_id is None:
            log.warning("upload_concurrency_refused", limit=limit)
            raise HTTPException(
                status_code=429,
                detail=f"You already have {limit} uploads running; wait for them to finish.",
                headers={"Retry-After": "5"},
            )
        try:
            yield
        finally:
            await asyncio.shield(self._held.give_back(user, slot_id))


def max_file_mb(spec: Any) -> float:
    """The file size limit: the AskFileMessage's own, else the spontaneous upload one."""
    from chainlit.config import config

    if spec is not None:
        return spec.max_size_mb
    configured = config.features.spontaneous_file_upload
    if configured is not None and configured.max_size_mb is not None:
        return configured.max_size_mb
    return DEFAULT_MAX_MB


async def _limited(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The request body, chunk by chunk, stopping once more than `limit` bytes came."""
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise TooLarge
        yield chunk


def _too_large(limit_mb: float) -> HTTPException:
    return HTTPException(
        status_code=413,
        detail=f"The file is larger than the upload limit of {limit_mb:g} MB.",
    )


async def _read_file(request: Request, file_limit_mb: float) -> UploadFile:
    """Parse the multipart body into one spooled `file` part, counting as it comes."""
    body_limit = int(file_limit_mb * 1024 * 1024) + MULTIPART_OVERHEAD
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > body_limit:
        raise _too_large(file_limit_mb)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise HTTPException(status_code=400, detail="Send the file as multipart/form-data.")
    parser = MultiPartParser(
        request.headers, _limited(request, body_limit), max_files=1, max_fields=4
    )
    try:
        form = await parser.parse()
    except TooLarge:
        raise _too_large(file_limit_mb) from None
    except MultiPartException as exc:
        raise HTTPException(status_code=400, detail=exc.message) from None
    file = form.get("file")
    if not isinstance(file, UploadFile):
        await form.close()
        raise HTTPException(status_code=400, detail="The upload holds no file.")
    return file


def _copy(file: UploadFile, target: Any) -> int:
    file.file.seek(0)
    with open(target, "wb") as out:
        shutil.copyfileobj(file.file, out, 1024 * 1024)
    return target.stat().st_size


async def persist(session: Any, file: UploadFile, name: str, mime: str) -> dict[str, str]:
    """What `BaseSession.persist_file` does, copying from the spooled file in chunks."""
    session.files_dir.mkdir(exist_ok=True)
    file_id = str(uuid.uuid4())
    path = session.files_dir / file_id
    extension = mimetypes.guess_extension(mime)
    if extension:
        path = path.with_suffix(extension)
    size = await asyncio.to_thread(_copy, file, path)
    session.files[file_id] = {"id": file_id, "path": path, "name": name, "type": mime, "size": size}
    return {"id": file_id}


def create_router(per_user: int, slots: UploadSlots | None = None) -> APIRouter:
    """The upload route, allowing `per_user` uploads at once for each user."""
    slots = slots or UploadSlots()
    router = APIRouter()

    @router.post("/project/file")
    async def upload_file(
        request: Request,
        session_id: str,
        current_user: Annotated[Any, Depends(get_current_user)],
        ask_parent_id: str | None = None,
    ) -> JSONResponse:
        session = own_session(session_id, current_user)
        spec = session.files_spec.get(ask_parent_id) if ask_parent_id else None
        if ask_parent_id and spec is None:
            raise HTTPException(status_code=404, detail="Parent message not found")
        async with slots.hold(current_user.identifier, per_user):
            reference = await _receive(request, session, spec)
        return JSONResponse(content=reference)

    return router


async def _receive(request: Request, session: Any, spec: Any) -> dict[str, str]:
    from chainlit.server import validate_file_upload

    limit_mb = max_file_mb(spec)
    file = await _read_file(request, limit_mb)
    try:
        if file.size is not None and file.size > limit_mb * 1024 * 1024:
            raise _too_large(limit_mb)
        if not file.filename or not file.content_type:
            raise HTTPException(status_code=400, detail="The file needs a name and a type.")
        try:
            validate_file_upload(file, spec=spec)  # type: ignore[arg-type]
        except ValueError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None
        reference = await persist(session, file, file.filename, file.content_type)
    finally:
        await file.close()
    log.info("upload_received", size=file.size, mime=file.content_type)
    return reference
