"""Media on S3: the store against moto's S3 server on 127.0.0.1 through real boto3, and
the running app with its media in a bucket, where /media/<key> still answers only the
key's owner (a second account gets 404; a presigned redirect comes after the check).

The server is started once for the module (a thread in this process); each test makes
its own bucket. Credentials are dummies in the environment, as an operator would set
real ones; no request leaves 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import io
import re
import socket
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer
from PIL import Image

from chat_app.settings import Settings
from core.errors import NotFound, PersistenceError
from memory.gallery import Gallery
from memory.gallery_actions import delete_item
from memory.gallery_export import zip_items
from memory.media_store import LocalMediaStore, Redirect, SendFile, Stream
from memory.media_stores import media_store_for
from memory.s3_media_store import PRESIGN_SECONDS, S3MediaStore
from memory.thumbnails import Thumbnails
from tests.app_process import ADMIN_PASSWORD, AppProcess, add_user, app_rows
from tests.chat_client import ChatSession, login_cookie
from tests.db_fixtures import engine  # noqa: F401 - fixture
from tests.gallery_rows import account, chain

REGION = "us-east-1"
SECRET = "dummy-secret-key-never-shown"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "dummy-access-key",
    "AWS_SECRET_ACCESS_KEY": SECRET,
    "AWS_DEFAULT_REGION": REGION,
}


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """Dummy credentials, and no AWS config of this machine's user read."""
    env = {
        **CREDENTIALS,
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
    }
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def bucket(s3_endpoint: str, aws_env: dict[str, str]) -> str:
    name = f"atelier-test-{uuid.uuid4().hex[:12]}"
    _client(s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def store(s3_endpoint: str, bucket: str, tmp_path: Path) -> S3MediaStore:
    return S3MediaStore(bucket, tmp_path / "media", endpoint_url=s3_endpoint, region=REGION)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """SQLite only: what is tested here is where the files are, not the database."""
    return f"sqlite+aiosqlite:///{tmp_path / 'atelier.db'}"


def _client(endpoint: str) -> Any:
    """A plain boto3 client, to read the bucket back as an operator would."""
    return boto3.client("s3", endpoint_url=endpoint, region_name=REGION)


def _objects(endpoint: str, bucket: str) -> dict[str, bytes]:
    s3 = _client(endpoint)
    listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


def _png(size: tuple[int, int] = (600, 200)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 90, 30)).save(out, "PNG")
    return out.getvalue()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------- the store


def test_keys_and_bytes_are_the_local_stores(store, s3_endpoint, bucket, tmp_path) -> None:
    data = _png()
    key = store.put(data)
    assert key == hashlib.sha256(data).hexdigest() == LocalMediaStore(tmp_path / "l").put(data)
    assert store.put(data) == key  # stored once
    assert _objects(s3_endpoint, bucket) == {f"media/{key}": data}
    assert store.get(key) == data and store.size(key) == len(data) and store.exists(key)
    with store.open(key) as body:
        assert body.read(8) == b"\x89PNG\r\n\x1a\n"

    store.delete(key)
    assert not store.exists(key) and _objects(s3_endpoint, bucket) == {}
    store.delete(key)  # already gone: no error
    for missing in (store.get, store.size, store.open):
        with pytest.raises(NotFound):
            missing(key)
    with pytest.raises(NotFound):  # not a key at all: never sent to S3
        store.get("../" + "0" * 61)


def test_the_route_answer_streams_byte_ranges(store) -> None:
    data = _png()
    key = store.put(data)

    def fetch(byte_range: str | None) -> tuple[Stream, bytes]:
        answer = store.answer(key, "image/png", byte_range)
        assert isinstance(answer, Stream)
        return answer, b"".join(answer.chunks)

    whole, body = fetch(None)
    assert whole.status == 200 and body == data
    assert whole.headers["Content-Length"] == str(len(data))
    part, body = fetch("bytes=0-7")
    assert part.status == 206 and body == data[:8]
    assert part.headers["Content-Range"] == f"bytes 0-7/{len(data)}"
    tail, body = fetch("bytes=-4")
    assert tail.status == 206 and body == data[-4:]
    several, body = fetch("bytes=0-1,4-5")  # not one range: the whole file, as RFC 9110 allows
    assert several.status == 200 and body == data
    past, body = fetch(f"bytes={len(data) + 10}-")
    assert past.status == 416 and body == b""
    assert past.headers["Content-Range"] == f"bytes */{len(data)}"
    with pytest.raises(NotFound):
        store.answer("0" * 64, "image/png", None)


def test_presigned_links_expire_within_a_minute(s3_endpoint, bucket, tmp_path) -> None:
    store = S3MediaStore(
        bucket, tmp_path / "media", endpoint_url=s3_endpoint, region=REGION, presign=True
    )
    data = _png()
    key = store.put(data)
    answer = store.answer(key, "image/png", None)
    assert isinstance(answer, Redirect)
    query = parse_qs(urlparse(answer.url).query)
    assert int(query["X-Amz-Expires"][0]) == PRESIGN_SECONDS <= 60
    fetched = httpx.get(answer.url)
    assert fetched.status_code == 200 and fetched.content == data
    assert fetched.headers["content-type"] == "image/png"
    with pytest.raises(NotFound):  # checked before a link is made
        store.answer("0" * 64, "image/png", None)


def test_failures_are_clear_sentences_without_secrets(s3_endpoint, aws_env, tmp_path) -> None:
    missing = S3MediaStore("no-such-bucket", tmp_path / "a", endpoint_url=s3_endpoint)
    with pytest.raises(PersistenceError) as caught:
        missing.put(b"hello")
    assert "no-such-bucket" in caught.value.message and "NoSuchBucket" in caught.value.message
    with pytest.raises(PersistenceError):
        missing.check()

    nowhere = S3MediaStore("b", tmp_path / "b", endpoint_url=f"http://127.0.0.1:{_free_port()}")
    with pytest.raises(PersistenceError, match="cannot be reached") as caught:
        nowhere.get("0" * 64)
    for error in (caught.value,):
        assert SECRET not in str(error) and aws_env["AWS_ACCESS_KEY_ID"] not in str(error)


def test_check_writes_and_cleans_up(store, s3_endpoint, bucket) -> None:
    store.check()
    assert _objects(s3_endpoint, bucket) == {}


def test_settings_choose_the_store(s3_endpoint, bucket, tmp_path) -> None:
    local = media_store_for(Settings(data_dir=tmp_path))
    assert isinstance(local, LocalMediaStore) and local.root == (tmp_path / "media").resolve()
    assert isinstance(local.answer(local.put(b"x"), "text/plain", None), SendFile)
    chosen = media_store_for(
        Settings(
            data_dir=tmp_path,
            media_s3_bucket=bucket,
            media_s3_endpoint_url=s3_endpoint,
            media_s3_prefix="atelier/files/",
        )
    )
    assert isinstance(chosen, S3MediaStore)
    key = chosen.put(b"shared by every app process")
    assert list(_objects(s3_endpoint, bucket)) == [f"atelier/files/{key}"]


# ----------------------------------------- thumbnails, the zip, delete on S3


async def test_thumbnails_are_made_from_the_bucket_and_cached_locally(store, tmp_path) -> None:
    key = store.put(_png((900, 300)))
    thumbs = Thumbnails(store)
    made = Image.open(io.BytesIO(await thumbs.read(key)))
    assert made.format == "WEBP" and made.size == (384, 128)
    assert thumbs.path_for(key).is_file()
    assert thumbs.path_for(key).is_relative_to(tmp_path / "media" / "thumbs")
    with pytest.raises(NotFound):
        await thumbs.read("0" * 64)


async def test_zip_and_delete_with_the_originals_in_s3(engine, store, s3_endpoint, bucket) -> None:  # noqa: F811
    ada = await account(engine, "ada")
    made = await chain(engine, store, ada)
    gallery = Gallery(engine)
    ids = [made.forked.id, made.clip.id]
    path = await zip_items(gallery, store, ada.id, ids)
    try:
        with zipfile.ZipFile(path) as archive:
            files = {name: archive.read(name) for name in archive.namelist()}
    finally:
        path.unlink()
    assert files[f"{made.forked.id}.png"] == store.get(made.forked.media_key)
    assert files[f"{made.clip.id}.mp4"] == store.get(made.clip.media_key)
    assert files[f"{made.clip.id}-poster.png"] == store.get(made.clip.poster_key)

    deleted = await delete_item(engine, store, ada.id, made.forked.id)
    assert deleted.removed_files == [made.forked.media_key]
    assert f"media/{made.forked.media_key}" not in _objects(s3_endpoint, bucket)
    assert store.exists(made.generated.media_key)


# ------------------------------------------------------------------- the app


def _s3_app(make_app: Any, endpoint: str, bucket: str, aws_env: dict[str, str], **more: str):
    return make_app(
        ATELIER_MEDIA_S3_BUCKET=bucket,
        ATELIER_MEDIA_S3_ENDPOINT_URL=endpoint,
        ATELIER_MEDIA_S3_REGION=REGION,
        **aws_env,
        **more,
    )


async def _generated_key(app: AppProcess) -> tuple[str, str, str]:
    """An image made through the chat (the fake OpenAI server): its key, the signed link
    the chat shows it by, and admin's cookie."""
    admin = ChatSession(app.base_url, login_cookie(app.base_url, "admin", ADMIN_PASSWORD))
    await admin.connect()
    await admin.send("/image a private painting")
    await admin.close()
    thread = httpx.get(
        f"{app.base_url}/project/thread/{admin.thread_id}", headers={"Cookie": admin.cookie}
    ).json()
    url = next(e["url"] for e in thread["elements"] if e["type"] == "image")
    return re.match(r"/media/([0-9a-f]{64})\?", url).group(1), url, admin.cookie


def _originals_on_disk(app: AppProcess) -> list[Path]:
    media = app.data_dir / "media"
    return [p for p in media.rglob("*") if p.is_file() and "thumbs" not in p.parts]


@pytest.mark.slow
async def test_the_app_keeps_media_in_the_bucket_for_its_owner_only(
    make_app, s3_endpoint, bucket, aws_env
) -> None:
    app = _s3_app(make_app, s3_endpoint, bucket, aws_env)
    key, link, admin = await _generated_key(app)
    stored = _objects(s3_endpoint, bucket)
    assert list(stored) == [f"media/{key}"] and stored[f"media/{key}"].startswith(b"\x89PNG")
    assert _originals_on_disk(app) == []
    size = app_rows(app, f"SELECT size_bytes FROM media_refs WHERE media_key = '{key}'")
    assert size and size[0]["size_bytes"] == len(stored[f"media/{key}"])

    add_user(app, "bob", "bobs-password")
    bob = login_cookie(app.base_url, "bob", "bobs-password")

    def get(path: str, cookie: str | None = None, **headers: str) -> httpx.Response:
        return httpx.get(
            app.base_url + path, headers={**({"Cookie": cookie} if cookie else {}), **headers}
        )

    assert get(link).content == stored[f"media/{key}"]  # the signed link the chat showed
    mine = get(f"/media/{key}", admin)
    assert mine.status_code == 200 and mine.content == stored[f"media/{key}"]
    assert mine.headers["content-type"] == "image/png"
    assert mine.headers["x-content-type-options"] == "nosniff"
    ranged = get(f"/media/{key}", admin, Range="bytes=0-7")
    assert ranged.status_code == 206 and ranged.content == b"\x89PNG\r\n\x1a\n"
    assert get(f"/media/{key}", bob).status_code == 404
    assert get(f"/media/{key}").status_code == 401
    thumb = get(f"/thumbs/{key}", admin)
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/webp"
    assert get(f"/thumbs/{key}", bob).status_code == 404


@pytest.mark.slow
async def test_presigned_mode_redirects_only_the_owner(
    make_app, s3_endpoint, bucket, aws_env
) -> None:
    app = _s3_app(make_app, s3_endpoint, bucket, aws_env, ATELIER_MEDIA_S3_PRESIGN="true")
    key, _, admin = await _generated_key(app)
    add_user(app, "bob", "bobs-password")
    bob = login_cookie(app.base_url, "bob", "bobs-password")

    def get(cookie: str | None) -> httpx.Response:
        headers = {"Cookie": cookie} if cookie else {}
        return httpx.get(f"{app.base_url}/media/{key}", headers=headers, follow_redirects=False)

    mine = get(admin)
    assert mine.status_code == 302 and mine.headers["cache-control"] == "no-store"
    link = mine.headers["location"]
    assert link.startswith(f"{s3_endpoint}/{bucket}/media/{key}?")
    assert int(parse_qs(urlparse(link).query)["X-Amz-Expires"][0]) <= 60
    followed = httpx.get(link)
    assert followed.status_code == 200 and followed.content.startswith(b"\x89PNG")
    assert followed.content == _objects(s3_endpoint, bucket)[f"media/{key}"]
    assert get(bob).status_code == 404 and "location" not in get(bob).headers
    assert get(None).status_code == 401
