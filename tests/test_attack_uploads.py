"""Upload bombs: huge bodies, zips that unpack to 500 MB, and many uploads at once.

Issue 12, finding 9: a refused 300 MB upload raised the server's memory by ~250 MB (the
whole body was read before the size check), a 0.5 MB zip that unpacks to 500 MB raised it
by ~900 MB, and nothing bounded concurrent uploads. Here the app runs as a subprocess
and its peak memory is read from /proc around each attack (tests/attack_helpers.py).
"""

from __future__ import annotations

import asyncio
import io
import tracemalloc
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core.errors import InvalidInput
from pipelines.training.lora_dataset import DatasetLimits, images_from_zip
from tests.app_process import ADMIN_PASSWORD, AppProcess, add_user
from tests.attack_helpers import PeakMemory, RawPost
from tests.chat_client import ChatSession, login_cookie, outputs

MB = 1024 * 1024
MEMORY_BOUND = 60 * MB  # what an attack may add to the server's peak memory
BOUNDARY = "atelier-test-boundary"
PNG_HEAD = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------ raw uploads


def _preamble(filename: str = "big.png", mime: str = "image/png") -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"'
        f"\r\nContent-Type: {mime}\r\n\r\n"
    ).encode()


EPILOGUE = f"\r\n--{BOUNDARY}--\r\n".encode()


def _zeros(total: int, chunk: int = MB) -> Iterator[bytes]:
    block = b"\x00" * chunk
    for start in range(0, total, chunk):
        yield block[: min(chunk, total - start)]


def raw_upload(app: AppProcess, cookie: str, session_id: str, length: int | None) -> RawPost:
    """POST /project/file over a plain socket (see RawPost), the body still to send."""
    headers = {
        "Cookie": cookie,
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
    }
    return RawPost(app, f"/project/file?session_id={session_id}", headers, length)


def send_zeros(
    app: AppProcess, chat: ChatSession, size: int, *, declared: bool
) -> tuple[int, bytes, int, int]:
    """Upload `size` bytes of zeros, with the length declared or chunked, until the server
    answers: (status, body, bytes sent, how far the server's peak memory rose)."""
    length = len(_preamble()) + size + len(EPILOGUE) if declared else None
    with PeakMemory(app) as memory:
        raw = raw_upload(app, chat.cookie, chat.session_id, length)
        raw.send(_preamble())
        for block in _zeros(size):
            if not raw.send(block):
                break
        status, _, body = raw.response()
    return status, body, raw.sent, memory.growth


def upload(app: AppProcess, cookie: str, session_id: str, data: bytes, name: str, mime: str):
    return httpx.post(
        f"{app.base_url}/project/file",
        params={"session_id": session_id},
        files={"file": (name, data, mime)},
        headers={"Cookie": cookie},
        timeout=30,
    )


def png(width: int = 64, height: int = 64) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 40)).save(out, format="PNG")
    return out.getvalue()


def files_left(session_id: str) -> list[Path]:
    """What Chainlit keeps for the session (`.files/<session id>` in the app root)."""
    folder = Path(__file__).resolve().parents[1] / ".files" / session_id
    return sorted(folder.iterdir()) if folder.is_dir() else []


# -------------------------------------------------------------------------- zip bombs


def many_member_bomb(members: int = 100, each: int = 5 * MB) -> bytes:
    """~0.5 MB that unpacks to 500 MB: 100 entries of 5 MB of zeros, each under the
    per-image limit and together under the total limit, so only the ratio stops them."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("cover.png", png())
        zeros = b"\x00" * each
        for index in range(members):
            archive.writestr(f"img{index:03d}.png", zeros)
    return out.getvalue()


def one_member_bomb(size: int = 500 * MB) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("cover.png", png())
        with archive.open("huge.png", "w", force_zip64=True) as entry:
            for block in _zeros(size, 8 * MB):
                entry.write(block)
    return out.getvalue()


def understated_bomb() -> bytes:
    """A 64 MB entry whose central directory claims 1 KB: the directory is a lie."""
    data = bytearray(one_member_bomb(64 * MB))
    directory = data.rfind(b"PK\x01\x02")  # the last central directory record: huge.png
    data[directory + 24 : directory + 28] = (1024).to_bytes(4, "little")
    return bytes(data)


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    return {"many": many_member_bomb(), "one": one_member_bomb()}


def _peak_while(work) -> int:
    tracemalloc.start()
    try:
        work()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


def test_zip_bombs_are_refused_before_they_take_memory(bombs: dict[str, bytes]) -> None:
    many, one = bombs["many"], bombs["one"]
    assert len(many) < MB and len(one) < MB  # each really is a small upload
    limits = DatasetLimits()
    assert limits.max_image_bytes < 500 * MB

    def refuse(data: bytes, match: str) -> None:
        with pytest.raises(InvalidInput, match=match):
            images_from_zip(data, upload_name="bomb.zip")

    # 100 × 5 MB: each entry is small enough, the total too; the ratio is not.
    peak = _peak_while(lambda: refuse(many, r"entry 'img000.png' compresses more than 100:1"))
    assert peak < 4 * len(many) + 8 * MB
    # One honest 500 MB entry: over the per-image limit, refused from the directory.
    peak = _peak_while(lambda: refuse(one, r"'huge.png' unpacks to more than 50.0 MB"))
    assert peak < 4 * len(one) + 8 * MB
    # A directory that understates the size does not get more out of the entry.
    lying = understated_bomb()
    peak = _peak_while(lambda: refuse(lying, r"'huge.png' is damaged"))
    assert peak < 4 * len(lying) + 8 * MB


def test_ratio_and_entry_limits_leave_real_pictures_alone() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a.png", png(600, 400))
        archive.writestr("b.png", png(400, 600))
        archive.writestr("a.txt", "TOK " * 200)  # text compresses well, but is small
    images = images_from_zip(out.getvalue())
    assert [image.source_id for image in images] == ["upload.zip:a.png", "upload.zip:b.png"]


# ----------------------------------------------------------------- over the protocol


@pytest.fixture
def app(make_app) -> AppProcess:
    return make_app()


async def _session(app: AppProcess, user: str, password: str) -> ChatSession:
    chat = ChatSession(app.base_url, login_cookie(app.base_url, user, password))
    await chat.connect()
    return chat


@pytest.mark.slow
async def test_a_300_mb_upload_is_refused_with_memory_bounded(app: AppProcess) -> None:
    chat = await _session(app, "admin", ADMIN_PASSWORD)

    # Declared too large: answered 413 before the body is read.
    status, body, sent, growth = send_zeros(app, chat, 300 * MB, declared=True)
    assert status == 413 and b"upload limit of 100 MB" in body
    assert sent < 100 * MB
    assert growth < MEMORY_BOUND, f"memory grew by {growth / MB:.0f} MB"

    # No length given (chunked): counted while reading, stopped past the limit.
    status, body, sent, growth = send_zeros(app, chat, 300 * MB, declared=False)
    assert status == 413 and b"upload limit of 100 MB" in body
    assert sent < 200 * MB  # it stopped well before the end
    assert growth < MEMORY_BOUND, f"memory grew by {growth / MB:.0f} MB"
    assert files_left(chat.session_id) == []  # nothing of it was kept

    # The session still takes an upload of a normal size, registered as Chainlit does.
    picture = png()
    response = upload(app, chat.cookie, chat.session_id, picture, "red.png", "image/png")
    assert response.status_code == 200, response.text
    file_id = response.json()["id"]
    served = httpx.get(
        f"{app.base_url}/project/file/{file_id}",
        params={"session_id": chat.session_id},
        headers={"Cookie": chat.cookie},
    )
    assert served.status_code == 200 and served.content == picture
    reply = outputs(await chat.send("here it is", files=[{"id": file_id}]))
    assert any("Saved 1 upload(s)" in text for text in reply), reply

    # The type check Chainlit makes is kept.
    refused = upload(app, chat.cookie, chat.session_id, b"MZ\x90\x00", "tool.exe", "text/html")
    assert refused.status_code == 400 and "File type not allowed" in refused.text
    await chat.close()


@pytest.mark.slow
async def test_uploads_at_once_are_bounded_per_user(app: AppProcess) -> None:
    add_user(app, "bob", "bobs-password")
    alice = await _session(app, "admin", ADMIN_PASSWORD)
    bob = await _session(app, "bob", "bobs-password")
    picture = png()

    # Three of alice's uploads that are still arriving hold her three slots.
    stalled = []
    for _ in range(3):
        raw = raw_upload(app, alice.cookie, alice.session_id, None)
        raw.send(_preamble("slow.png") + PNG_HEAD)
        stalled.append(raw)
    await asyncio.sleep(0.5)  # let the server take them in (not a timing assertion)

    fourth = await asyncio.to_thread(
        upload, app, alice.cookie, alice.session_id, picture, "x.png", "image/png"
    )
    assert fourth.status_code == 429, fourth.text
    assert "3 uploads running" in fourth.text and fourth.headers["retry-after"]
    # Another user is not held up by alice's uploads.
    bobs = await asyncio.to_thread(
        upload, app, bob.cookie, bob.session_id, picture, "b.png", "image/png"
    )
    assert bobs.status_code == 200, bobs.text
    # Nor may bob put files into alice's session.
    intruding = await asyncio.to_thread(
        upload, app, bob.cookie, alice.session_id, picture, "b.png", "image/png"
    )
    assert intruding.status_code == 401

    # The stalled ones complete normally; a dropped one gives its slot back.
    for raw in stalled[:2]:
        raw.send(picture[len(PNG_HEAD) :] + EPILOGUE)
        raw.finish()
        status, _, body = raw.response()
        assert status == 200, body
    stalled[2].close()
    for _ in range(100):
        again = await asyncio.to_thread(
            upload, app, alice.cookie, alice.session_id, picture, "y.png", "image/png"
        )
        if again.status_code != 429:
            break
        await asyncio.sleep(0.1)
    assert again.status_code == 200, again.text
    await alice.close()
    await bob.close()


@pytest.mark.slow
async def test_a_zip_bomb_sent_for_training_is_refused_with_memory_bounded(
    app: AppProcess, bombs: dict[str, bytes]
) -> None:
    chat = await _session(app, "admin", ADMIN_PASSWORD)

    async def train_with(data: bytes, name: str) -> list[str]:
        response = upload(app, chat.cookie, chat.session_id, data, f"{name}.zip", "application/zip")
        assert response.status_code == 200, response.text
        files = [{"id": response.json()["id"]}]
        return outputs(await chat.send(f"/train {name} --trigger TOK", files=files, timeout=120))

    # A first refusal loads the code the training path needs, so the peak below is the
    # bomb's own.
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("notes.pdf", b"%PDF-1.4")
    reply = await train_with(out.getvalue(), "warmup")
    assert any("is not an image" in text for text in reply), reply

    with PeakMemory(app) as memory:
        reply = await train_with(bombs["many"], "bomb")
    assert any("compresses more than 100:1" in text for text in reply), reply
    assert memory.growth < MEMORY_BOUND, f"memory grew by {memory.growth / MB:.0f} MB"
    assert "Traceback" not in app.log()
    await chat.close()


@pytest.mark.slow
def test_crafted_upload_requests_answer_4xx(app: AppProcess) -> None:
    cookie = login_cookie(app.base_url, "admin", ADMIN_PASSWORD)
    picture = png()
    for session_id in ("x", "../../etc", "a" * 5000, "ünï", str(uuid.uuid4())):
        response = upload(app, cookie, session_id, picture, "a.png", "image/png")
        assert response.status_code == 404, (session_id, response.status_code)
    no_login = httpx.post(
        f"{app.base_url}/project/file",
        params={"session_id": str(uuid.uuid4())},
        files={"file": ("a.png", picture, "image/png")},
    )
    assert no_login.status_code == 401
