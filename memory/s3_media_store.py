"""Media on S3-compatible object storage (AWS S3, MinIO, ...), with the local store's keys.

Several app processes on several machines then share one set of files. Objects are
named `<prefix><sha256 key>`; a key is stored once (a HEAD before each PUT), and an S3
PUT is atomic, so no reader ever sees half a file. Who may read a key is still decided
by the database (`media_refs`) and checked by the /media route before it calls `answer`.

The route answers either by streaming the object through the app (the default: the
bucket needs no public address, Range requests are passed on to S3) or, with
`presign`, by a redirect to a presigned GET that expires after `PRESIGN_SECONDS`; the
browser must then be able to reach the endpoint.

Credentials come from the standard AWS places (AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an instance role); they are never logged, and error
messages name only the bucket and S3's error code. boto3 blocks: every method here is
called off the event loop (`asyncio.to_thread`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
)

from core.errors import NotFound, PersistenceError
from core.logging_setup import get_logger
from memory.ids import require_media_key
from memory.media_store import Answer, Redirect, Stream

log = get_logger(__name__)

PRESIGN_SECONDS = 60  # a link handed to a browser outlives the owner check by at most this
CHUNK = 256 * 1024
# One byte range; anything else (several ranges, other units) is ignored and the whole
# file is sent, as RFC 9110 allows.
_ONE_RANGE = re.compile(r"bytes=(\d+-\d*|-\d+)")
_MISSING = {"404", "NoSuchKey", "NotFound"}


class S3MediaStore:
    def __init__(
        self,
        bucket: str,
        cache_dir: Path,
        *,
        prefix: str = "media/",
        endpoint_url: str | None = None,
        region: str | None = None,
        presign: bool = False,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.presign = presign
        self.cache_dir = cache_dir
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        config = Config(
            connect_timeout=5,
            read_timeout=60,
            retries={"max_attempts": 3, "mode": "standard"},
            max_pool_connections=32,  # thumbnails, the route and uploads run in threads
            # Checksums only where S3 requires them: other S3-compatible servers refuse
            # the newer default trailers.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            signature_version="s3v4",
        )
        self._s3 = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, region_name=region, config=config
        )

    def object_name(self, key: str) -> str:
        return self.prefix + require_media_key(key)

    def put(self, data: bytes) -> str:
        key = hashlib.sha256(data).hexdigest()
        if self.exists(key):
            return key
        self._call("save a file to", self._s3.put_object, Key=self.object_name(key), Body=data)
        return key

    def get(self, key: str) -> bytes:
        with self.open(key) as body:
            return body.read()

    def open(self, key: str) -> IO[bytes]:
        return self._call("read a file from", self._s3.get_object, Key=self.object_name(key))[
            "Body"
        ]

    def exists(self, key: str) -> bool:
        try:
            self._head(key)
        except NotFound:
            return False
        return True

    def size(self, key: str) -> int:
        return int(self._head(key)["ContentLength"])

    def delete(self, key: str) -> None:
        self._call("delete a file from", self._s3.delete_object, Key=self.object_name(key))

    def answer(self, key: str, mime: str, byte_range: str | None) -> Answer:
        if self.presign:
            self._head(key)  # a missing file is a 404 here, not an S3 error page there
            return Redirect(self.presigned_url(key, mime))
        wanted = byte_range.strip() if byte_range else ""
        ranged = bool(_ONE_RANGE.fullmatch(wanted))
        extra = {"Range": wanted} if ranged else {}
        try:
            reply = self._call(
                "read a file from", self._s3.get_object, Key=self.object_name(key), **extra
            )
        except _RangeNotSatisfiable:
            size = self.size(key)
            return Stream(416, iter(()), {"Content-Range": f"bytes */{size}"})
        headers = {"Accept-Ranges": "bytes", "Content-Length": str(reply["ContentLength"])}
        if ranged and reply.get("ContentRange"):
            headers["Content-Range"] = reply["ContentRange"]
            return Stream(206, _chunks(reply["Body"]), headers)
        return Stream(200, _chunks(reply["Body"]), headers)

    def presigned_url(self, key: str, mime: str) -> str:
        """A GET link to the object that works for PRESIGN_SECONDS, for anyone holding
        it; S3 answers it with `mime` as the type (objects are stored without one)."""
        return self._s3.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": self.object_name(key),
                "ResponseContentType": mime,
            },
            ExpiresIn=PRESIGN_SECONDS,
        )

    def check(self) -> None:
        probe = f"{self.prefix}.atelier-check"
        self._call("write to", self._s3.put_object, Key=probe, Body=b"ok")
        body = self._call("read from", self._s3.get_object, Key=probe)["Body"]
        with body:
            body.read()
        self._call("delete from", self._s3.delete_object, Key=probe)

    # ------------------------------------------------------------------ plumbing

    def _head(self, key: str) -> dict[str, Any]:
        return self._call("look up a file in", self._s3.head_object, Key=self.object_name(key))

    def _call(self, doing: str, method: Any, **params: Any) -> dict[str, Any]:
        """`method(Bucket=..., **params)`, its failures said as NotFound or as one clear
        PersistenceError naming the bucket and S3's error code, never a credential."""
        try:
            return method(Bucket=self.bucket, **params)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "unknown"))
            if code in _MISSING:
                raise NotFound("No such file.") from None
            if code == "InvalidRange":
                raise _RangeNotSatisfiable from None
            log.warning("media_s3_failed", doing=doing, bucket=self.bucket, code=code)
            raise PersistenceError(
                f"Could not {doing} the media bucket {self.bucket!r} (S3 said {code})."
            ) from None
        except NoCredentialsError:
            raise PersistenceError(
                f"No credentials for the media bucket {self.bucket!r}: set AWS_ACCESS_KEY_ID "
                "and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) for the app."
            ) from None
        except EndpointConnectionError:
            log.warning("media_s3_unreachable", doing=doing, bucket=self.bucket)
            raise PersistenceError(
                f"Could not {doing} the media bucket {self.bucket!r}: its endpoint cannot be "
                "reached."
            ) from None
        except BotoCoreError as exc:
            log.warning(
                "media_s3_failed", doing=doing, bucket=self.bucket, error=type(exc).__name__
            )
            raise PersistenceError(
                f"Could not {doing} the media bucket {self.bucket!r} ({type(exc).__name__})."
            ) from None


class _RangeNotSatisfiable(Exception):
    """S3 refused the byte range (it starts past the end)."""


def _chunks(body: Any) -> Iterator[bytes]:
    """The object's bytes, its connection given back when done or abandoned."""
    try:
        yield from body.iter_chunks(CHUNK)
    finally:
        body.close()
