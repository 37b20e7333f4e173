"""The media store the settings ask for: a folder under the data dir, or an S3 bucket.

boto3 is imported only when a bucket is set, so an app on local disk never loads it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.errors import ConfigError
from core.logging_setup import get_logger
from memory.media_store import LocalMediaStore, MediaStorage

if TYPE_CHECKING:
    from chat_app.settings import Settings

log = get_logger(__name__)

S3_EXTRA_HINT = "pip install 'atelier[s3]'"


def media_store_for(settings: Settings) -> MediaStorage:
    """The store for `settings`; thumbnails and other derived files stay under
    data_dir/media either way."""
    local_root = settings.data_dir.resolve() / "media"
    if not settings.media_s3_bucket:
        return LocalMediaStore(local_root)
    try:
        from memory.s3_media_store import S3MediaStore
    except ImportError:
        raise ConfigError(
            "ATELIER_MEDIA_S3_BUCKET is set, but boto3 is not installed: "
            f"{S3_EXTRA_HINT}, or unset it to keep media on local disk."
        ) from None
    store = S3MediaStore(
        settings.media_s3_bucket,
        local_root,
        prefix=settings.media_s3_prefix,
        endpoint_url=settings.media_s3_endpoint_url,
        region=settings.media_s3_region,
        presign=settings.media_s3_presign,
    )
    log.info(
        "media_store_s3",
        bucket=settings.media_s3_bucket,
        endpoint=settings.media_s3_endpoint_url or "aws",
        presign=settings.media_s3_presign,
    )
    return store
