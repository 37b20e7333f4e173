"""The gallery's HTTP routes on the real app: owner only, CSRF-safe, thumbnails cached.

One app (a subprocess, command mode) is shared by the module; two accounts each get a
few images and a clip recorded through the app's own stores against its database, as
the chat would record them. Every route is asked by the owner (answered), by the other
account (404, exactly as for an id that does not exist) and without a login (401).
"""

from __future__ import annotations

import asyncio
import io
import statistics
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import pytest
from PIL import Image

from core.errors import NotFound
from memory.db import create_engine
from memory.images import ImageStore, NewImage
from memory.media_store import MediaStore
from memory.thumbnails import Thumbnails
from memory.videos import NewVideo, VideoStore
from tests.app_process import ADMIN_PASSWORD, ROOT, AppProcess, add_user, app_rows
from tests.chat_client import login_cookie

pytestmark = pytest.mark.slow

JSON_INTENT = {"X-Atelier": "1"}


@dataclass
class World:
    app: AppProcess
    admin: httpx.Client  # logged in as admin
    bob: httpx.Client  # logged in as bob
    anon: httpx.Client  # no login
    fox: str  # admin's images and clip (ids), and their keys
    fox_key: str
    edit: str
    cat: str
    clip: str
    clip_key: str
    poster_key: str
    bobs: str  # bob's image


def _png(seed: int, size: tuple[int, int] = (640, 480)) -> bytes:
    image = Image.new("RGB", size, (seed * 40 % 256, 90, 200 - seed * 30 % 200))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _new(seed: int, prompt: str, model: str, **extra: Any) -> NewImage:
    return NewImage(
        _png(seed),
        "image/png",
        640,
        480,
        prompt,
        prompt + ", detailed",
        "replicate",
        model,
        {"request": {"prompt": prompt}},
        seed=seed,
        cost_usd=Decimal("0.04"),
        **extra,
    )


async def _seed(app: AppProcess, admin_id: str, bob_id: str) -> dict[str, str]:
    engine = create_engine(f"sqlite+aiosqlite:///{app.data_dir / 'atelier.db'}")
    media = MediaStore(app.data_dir / "media")
    images, videos = ImageStore(engine, media), VideoStore(engine, media)
    thread = "5f0c3c0e-0000-4000-8000-000000000001"
    try:
        fox, _ = await images.record(thread, admin_id, _new(1, "a red fox at night", "flux-dev"))
        edit, _ = await images.record(
            thread, admin_id, _new(2, "the fox, in snow", "flux-dev", parent_id=fox.id)
        )
        cat, _ = await images.record(thread, admin_id, _new(3, "a sleeping cat", "sdxl"))
        clip = await videos.record(
            thread,
            admin_id,
            NewVideo(
                data=b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64,
                poster=_png(4),
                width=640,
                height=480,
                frames=24,
                fps=12.0,
                seconds=2.0,
                prompt_typed="the fox runs",
                prompt_sent=None,
                backend="replicate",
                model="wan-video",
                parameters={},
                source_image_id=fox.id,
            ),
        )
        bobs, _ = await images.record(
            "5f0c3c0e-0000-4000-8000-000000000002", bob_id, _new(5, "bob's fox", "flux-dev")
        )
    finally:
        await engine.dispose()
    return {
        "fox": fox.id,
        "fox_key": fox.media_key,
        "edit": edit.id,
        "cat": cat.id,
        "clip": clip.id,
        "clip_key": clip.media_key,
        "poster_key": clip.poster_key,
        "bobs": bobs.id,
    }


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[World]:
    try:  # likeness on a tiny CLIP built on disk when the local extra is here, else off
        clip = request.getfixturevalue("tiny_clip_dir")
        env = {
            "ATELIER_CLIP_MODEL": str(clip),
            "ATELIER_LOCAL_DEVICE": "cpu",
            "ATELIER_GALLERY_LIKENESS": "true",
        }
    except pytest.skip.Exception:
        env = {"ATELIER_GALLERY_LIKENESS": "false"}
    app = AppProcess(tmp_path_factory.mktemp("gallery") / "data", env).start()
    add_user(app, "bob", "bobs-password")
    ids = {
        row["identifier"]: row["id"] for row in app_rows(app, "SELECT id, identifier FROM users")
    }
    seeded = asyncio.run(_seed(app, ids["admin"], ids["bob"]))
    clients = [
        httpx.Client(
            base_url=app.base_url, headers={"Cookie": cookie} if cookie else {}, timeout=60
        )
        for cookie in (
            login_cookie(app.base_url, "admin", ADMIN_PASSWORD),
            login_cookie(app.base_url, "bob", "bobs-password"),
            None,
        )
    ]
    try:
        yield World(app, *clients, **seeded)
    finally:
        for client in clients:
            client.close()
        app.stop()
        if "Traceback" in app.log():
            print(app.log())


def _ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


def _message(response: httpx.Response) -> str:
    return response.json()["error"]["message"]


def test_reads_are_the_owners_only(world: World) -> None:
    admins = world.admin.get("/api/gallery/items")
    assert set(_ids(admins)) == {world.fox, world.edit, world.cat, world.clip}
    assert admins.json()["next_cursor"] is None
    clip = next(i for i in admins.json()["items"] if i["id"] == world.clip)
    assert clip["kind"] == "video" and clip["thumb_url"] == f"/thumbs/{world.poster_key}"
    assert clip["media_url"] == f"/media/{world.clip_key}" and clip["seconds"] == 2.0
    fox = next(i for i in admins.json()["items"] if i["id"] == world.fox)
    assert fox["cost_usd"] == "0.040000" and fox["conversation_url"].startswith("/thread/")
    assert _ids(world.bob.get("/api/gallery/items")) == [world.bobs]
    assert world.anon.get("/api/gallery/items").status_code == 401

    detail = world.admin.get(f"/api/gallery/items/{world.edit}")
    assert detail.status_code == 200, detail.text
    body = detail.json()
    assert body["prompt_typed"] == "the fox, in snow" and body["parent_id"] == world.fox
    assert body["prompt_sent"] == "the fox, in snow, detailed" and body["seed"] == 2

    lineage = world.admin.get(f"/api/gallery/items/{world.fox}/lineage")
    assert lineage.status_code == 200, lineage.text
    nodes = {node["id"]: node for node in lineage.json()["nodes"]}
    assert {world.fox, world.edit, world.clip} <= set(nodes)
    assert nodes[world.fox]["focus"] and nodes[world.fox]["thumb_url"].startswith("/thumbs/")

    for path in (
        f"/api/gallery/items/{world.fox}",
        f"/api/gallery/items/{world.fox}/lineage",
        f"/api/gallery/items/{world.clip}",
    ):
        refused = world.bob.get(path)
        assert refused.status_code == 404, path
        assert _message(refused)
        assert world.anon.get(path).status_code == 401, path
    # Bob's own id is his; a crafted id is simply not found, never a server error.
    assert world.bob.get(f"/api/gallery/items/{world.bobs}").status_code == 200
    assert world.admin.get("/api/gallery/items/x%27%20OR%201=1").status_code == 404

    capabilities = world.admin.get("/api/gallery/capabilities")
    assert capabilities.status_code == 200 and isinstance(capabilities.json()["likeness"], bool)
    assert world.anon.get("/api/gallery/capabilities").status_code == 401


def test_filters_pass_through_and_bad_ones_say_which(world: World) -> None:
    assert _ids(world.admin.get("/api/gallery/items?model=sdxl")) == [world.cat]
    assert _ids(world.admin.get("/api/gallery/items?kind=video")) == [world.clip]
    assert set(_ids(world.admin.get("/api/gallery/items?q=FOX&kind=image"))) == {
        world.fox,
        world.edit,
    }
    assert _ids(world.admin.get("/api/gallery/items?has_video=1")) == [world.fox]
    assert _ids(world.admin.get("/api/gallery/items?since=2001-01-01&until=2001-12-31")) == []
    first = world.admin.get("/api/gallery/items?limit=1")
    assert len(_ids(first)) == 1 and first.json()["next_cursor"]
    rest = world.admin.get(f"/api/gallery/items?limit=10&cursor={first.json()['next_cursor']}")
    assert len(_ids(rest)) == 3 and not set(_ids(first)) & set(_ids(rest))

    for query, named in (("since=last-week", "since"), ("kind=gif", "kind"), ("limit=0", "limit")):
        bad = world.admin.get(f"/api/gallery/items?{query}")
        assert bad.status_code == 400 and named in _message(bad), (query, bad.text)


def test_similar_needs_a_query_and_is_owner_only(world: World) -> None:
    assert world.anon.get("/api/gallery/similar?q=fox").status_code == 401
    both = world.admin.get(f"/api/gallery/similar?q=fox&like={world.fox}")
    assert both.status_code == 400 and "either" in _message(both)
    capabilities = world.admin.get("/api/gallery/capabilities").json()
    if not capabilities["likeness"]:  # no local extra: said how to enable it
        off = world.admin.get("/api/gallery/similar?q=fox")
        assert off.status_code == 400 and _message(off) == capabilities["likeness_help"]
        assert capabilities["likeness_help"]
        return
    assert world.bob.get(f"/api/gallery/similar?like={world.fox}").status_code == 404
    # "More like this" embeds the image first if the worker has not (seeded images were
    # recorded outside the app), and leaves the image itself out.
    like = world.admin.get(f"/api/gallery/similar?like={world.fox}")
    assert like.status_code == 200, like.text
    assert world.fox not in {i["id"] for i in like.json()["items"]}
    found = world.admin.get("/api/gallery/similar?q=fox&kind=image")
    assert found.status_code == 200, found.text
    assert [i["id"] for i in found.json()["items"]][:1] == [world.fox]
    assert isinstance(found.json()["items"][0]["similarity"], float)
    assert world.admin.get("/api/gallery/similar?q=fox&kind=video").json()["items"] == []
    bobs = world.bob.get("/api/gallery/similar?q=fox")
    assert world.fox not in {i["id"] for i in bobs.json()["items"]}


def test_thumbnails_are_webp_cached_and_owner_only(world: World) -> None:
    path = f"/thumbs/{world.fox_key}"
    assert world.bob.get(path).status_code == 404
    assert world.anon.get(path).status_code == 401
    assert world.admin.get("/thumbs/" + "0" * 64).status_code == 404
    traversal = world.admin.get("/thumbs/..%2F..%2Fetc%2Fpasswd")
    assert "root:" not in traversal.text and "webp" not in traversal.headers["content-type"]

    first = world.admin.get(path)
    assert first.status_code == 200
    assert first.headers["content-type"] == "image/webp"
    assert first.headers["cache-control"].startswith("private, max-age=")
    assert first.headers["x-content-type-options"] == "nosniff"
    picture = Image.open(io.BytesIO(first.content))
    assert picture.format == "WEBP" and max(picture.size) == 384 and picture.size[1] == 288
    etag = first.headers["etag"]
    again = world.admin.get(path, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    # The other user cannot learn that a key exists by revalidating it either.
    assert world.bob.get(path, headers={"If-None-Match": etag}).status_code == 404

    # A clip's thumbnail is its poster's, by either key.
    poster = world.admin.get(f"/thumbs/{world.poster_key}")
    by_clip = world.admin.get(f"/thumbs/{world.clip_key}")
    assert poster.status_code == by_clip.status_code == 200
    assert poster.content == by_clip.content
    assert world.bob.get(f"/thumbs/{world.clip_key}").status_code == 404

    warm = []
    for _ in range(60):
        start = time.perf_counter()
        assert world.admin.get(path).status_code == 200
        warm.append((time.perf_counter() - start) * 1000)
    p95 = statistics.quantiles(warm, n=20)[-1]
    print(f"warm thumbnail p95 {p95:.2f} ms (median {statistics.median(warm):.2f} ms)")
    # The 10 ms budget is the benchmark's (benchmarks/gallery_search.py, an idle machine);
    # here only a gross regression (a thumbnail made per request) may fail the test.
    assert p95 < 250


def test_a_thumbnail_is_made_once_under_concurrent_first_requests(world: World) -> None:
    key = world.admin.get(f"/api/gallery/items/{world.edit}").json()["media_url"][7:]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: world.admin.get(f"/thumbs/{key}"), range(8)))
    assert {a.status_code for a in answers} == {200}
    assert len({a.content for a in answers}) == 1
    made = [line for line in world.app.log().splitlines() if "thumbnail_made" in line]
    assert sum(key[:12] in line for line in made) == 1


def test_state_changes_need_intent_and_the_owner(world: World) -> None:
    star = f"/api/gallery/items/{world.cat}/star"
    # A form post from another site: no JSON type, no header.
    forged = world.admin.post(
        star, content=b'{"kept": true}', headers={"Content-Type": "text/plain"}
    )
    assert forged.status_code == 403 and _message(forged)
    cross = world.admin.post(star, json={"kept": True}, headers={"Origin": "http://evil.example"})
    assert cross.status_code == 403
    assert world.admin.delete(f"/api/gallery/items/{world.cat}").status_code == 403
    assert world.anon.post(star, json={"kept": True}).status_code == 401
    assert world.bob.post(star, json={"kept": True}).status_code == 404

    starred = world.admin.post(star, json={"kept": True}, headers={"Origin": world.app.base_url})
    assert starred.status_code == 200 and starred.json()["kept"] is True
    assert _ids(world.admin.get("/api/gallery/items?kept=1")) == [world.cat]
    bad = world.admin.post(star, json={"kept": "yes"})
    assert bad.status_code == 400 and "kept" in _message(bad)
    assert world.admin.post(star, json={"kept": False}).json()["kept"] is False


def test_download_new_conversation_and_delete(world: World) -> None:
    download = "/api/gallery/download"
    assert world.anon.post(download, json={"ids": [world.fox]}).status_code == 401
    assert world.bob.post(download, json={"ids": [world.fox]}).status_code == 404
    assert world.admin.post(download, json={"ids": []}).status_code == 400
    many = world.admin.post(download, json={"ids": [world.fox] * 501})
    assert many.status_code == 400 and "500" in _message(many)
    huge = world.admin.post(
        download, content=b'{"ids": ["' + b"x" * 70_000 + b'"]}', headers=JSON_INTENT
    )
    assert huge.status_code == 413

    # A selection naming anything not the requester's is refused whole.
    mixed = world.admin.post(download, json={"ids": [world.fox, world.bobs]})
    assert mixed.status_code == 404

    got = world.admin.post(download, json={"ids": [world.fox, world.clip]})
    assert got.status_code == 200, got.text
    assert got.headers["content-type"] == "application/zip"
    assert got.headers["content-disposition"].startswith("attachment;")
    names = zipfile.ZipFile(io.BytesIO(got.content)).namelist()
    assert "manifest.csv" in names and len(names) == 4  # the image, the clip, its poster

    reuse = f"/api/gallery/items/{world.fox}/new-conversation"
    assert world.bob.post(reuse, headers=JSON_INTENT).status_code == 404
    assert world.anon.post(reuse, headers=JSON_INTENT).status_code == 401
    opened = world.admin.post(reuse, headers=JSON_INTENT)
    assert opened.status_code == 200, opened.text
    thread_id = opened.json()["thread_id"]
    assert opened.json()["url"] == f"/thread/{thread_id}"
    thread = world.admin.get(f"/project/thread/{thread_id}")
    assert thread.status_code == 200 and any(
        e["type"] == "image" for e in thread.json()["elements"]
    )

    gone = f"/api/gallery/items/{world.cat}"
    assert world.bob.delete(gone, headers=JSON_INTENT).status_code == 404
    assert world.anon.delete(gone, headers=JSON_INTENT).status_code == 401
    cat_key = world.admin.get(gone).json()["media_url"].removeprefix("/media/")
    assert world.admin.get(f"/thumbs/{cat_key}").status_code == 200
    deleted = world.admin.delete(gone, headers=JSON_INTENT)
    assert deleted.status_code == 200 and deleted.json() == {"deleted": world.cat}
    assert world.admin.get(gone).status_code == 404
    assert world.admin.get(f"/thumbs/{cat_key}").status_code == 404
    assert not list((world.app.data_dir / "media" / "thumbs").rglob(f"{cat_key}*"))


def test_the_page(world: World) -> None:
    page = world.admin.get("/gallery?image=" + world.fox)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.text == (ROOT / "public" / "gallery.html").read_text()
    anon = world.anon.get("/gallery", follow_redirects=False)
    assert anon.status_code == 303 and anon.headers["location"] == "/login"


async def test_thumbnails_keep_transparency_and_refuse_what_is_not_an_image(tmp_path) -> None:
    media = MediaStore(tmp_path / "media")
    thumbs = Thumbnails(media)
    clear = Image.new("P", (900, 300), 0)
    clear.info["transparency"] = 0
    out = io.BytesIO()
    clear.save(out, "PNG")
    key = media.put(out.getvalue())
    made = Image.open(io.BytesIO(await thumbs.read(key)))
    assert made.format == "WEBP" and made.size == (384, 128) and made.mode == "RGBA"
    thumbs.discard(key)
    assert not thumbs.path_for(key).exists()

    with pytest.raises(NotFound):
        await thumbs.read(media.put(b"not an image at all"))
    with pytest.raises(NotFound):
        await thumbs.read("0" * 64)
