"""Video through the real app: "animate the fox", then play the clip again after a restart.

The app subprocess talks to the fake Replicate server with the real `replicate` client,
and the agent's LLM is the fake OpenAI server (its "animate …" rule calls
generate_video). Assertions read what the fake received, the database rows, and the
files the app serves back over HTTP, decoded with imageio-ffmpeg.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import imageio_ffmpeg
import pytest

from tests.app_process import ADMIN_PASSWORD, add_user, app_rows
from tests.chat_client import ChatSession, login_cookie, outputs
from tests.replicate_fixtures import replicate_app_env

pytestmark = pytest.mark.slow


def _frames(data: bytes, tmp_path: Path) -> tuple[tuple[int, int], int]:
    path = tmp_path / "served.mp4"
    path.write_bytes(data)
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    return tuple(meta["size"]), sum(1 for _ in reader)


async def test_animate_the_fox_and_play_it_again_after_a_restart(
    make_app, fake_replicate, tmp_path
) -> None:
    app = make_app(**replicate_app_env(fake_replicate, ATELIER_LOCAL_ENABLED="0"))
    cookie = login_cookie(app.base_url, "admin", ADMIN_PASSWORD)
    chat = ChatSession(app.base_url, cookie)
    await chat.connect()
    await chat.send("/backend replicate")
    await chat.send("draw a red fox in the snow")
    reply = outputs(await chat.send("animate the fox", timeout=120))

    # The clip was made from the approved image, by the conversation's video model.
    create = fake_replicate.creates()[-1]
    assert create.path == "/v1/models/minimax/video-01/predictions"
    assert create.json["input"]["prompt"] == "animate the fox"
    assert create.json["input"]["first_frame_image"].startswith("data:image/png;base64,")
    [fox] = app_rows(app, "select * from images")
    [video] = app_rows(app, "select * from videos")
    assert video["source_image_id"] == fox["id"] and video["thread_id"] == chat.thread_id
    assert (video["backend"], video["model"]) == ("replicate", "minimax/video-01")
    assert (video["frames"], video["fps"], video["seconds"]) == (150, 25.0, 6.0)
    assert float(video["cost_usd"]) == pytest.approx(0.5)
    [entry] = app_rows(app, "select * from ledger_entries where what = 'video'")
    assert entry["status"] == "settled"
    assert any("Estimated cost of a clip" in text for text in reply), reply
    assert any("6 s · 150 frames at 25 fps" in text for text in reply), reply
    # Shown live as a video element with its poster frame.
    [live] = [e for e in chat.elements if e["type"] == "video"]
    assert live["mime"] == "video/mp4"
    poster_url = f"/media/{video['poster_key']}"
    assert live["playerConfig"] == {"file": {"attributes": {"poster": poster_url}}}
    await chat.close()

    app.restart()
    cookie = login_cookie(app.base_url, "admin", ADMIN_PASSWORD)
    resumed = ChatSession(app.base_url, cookie)
    await resumed.connect(resume_thread=chat.thread_id)
    [element] = [e for e in resumed.resumed["elements"] if e["type"] == "video"]
    assert element["url"].startswith(f"/media/{video['media_key']}?exp=")  # a signed link
    assert element["playerConfig"]["file"]["attributes"]["poster"] == poster_url
    served = httpx.get(app.base_url + element["url"], timeout=30)
    assert served.status_code == 200 and served.headers["content-type"] == "video/mp4"
    assert _frames(served.content, tmp_path) == ((64, 64), 150)
    poster = httpx.get(app.base_url + poster_url, headers={"Cookie": cookie}, timeout=30)
    assert poster.status_code == 200 and poster.headers["content-type"] == "image/png"
    await resumed.close()

    # Nobody else gets the clip or its poster: not logged in, or another user.
    assert httpx.get(app.base_url + poster_url, timeout=30).status_code == 401
    add_user(app, "bob", "bobs-password")
    bob = login_cookie(app.base_url, "bob", "bobs-password")
    for path in (poster_url, f"/media/{video['media_key']}"):
        assert (
            httpx.get(app.base_url + path, headers={"Cookie": bob}, timeout=30).status_code == 404
        )


async def test_video_commands_refuse_clearly(make_app, fake_replicate) -> None:
    app = make_app(**replicate_app_env(fake_replicate, ATELIER_LOCAL_ENABLED="0"))
    chat = ChatSession(app.base_url, login_cookie(app.base_url, "admin", ADMIN_PASSWORD))
    await chat.connect()
    nothing = outputs(await chat.send("/animate the fox runs"))
    assert any("has no image yet" in text for text in nothing), nothing
    await chat.send("/image a fox --backend replicate")
    too_long = outputs(await chat.send("/animate the fox runs --seconds 12"))
    assert any("makes 6 s clips; 12 s was asked" in text for text in too_long), too_long
    no_local = outputs(await chat.send("/video waves --backend local"))
    assert any("local video backend is not configured" in text for text in no_local)
    images_only = outputs(await chat.send("/video waves --backend openai"))
    assert any("makes images only, not video" in text for text in images_only)
    bad_option = outputs(await chat.send("/video waves --fps fast"))
    assert any("--fps takes a whole number" in text for text in bad_option)
    made = outputs(await chat.send("/video waves at dusk --backend replicate", timeout=120))
    assert any("Clip for *waves at dusk*" in text for text in made), made
    assert len(app_rows(app, "select id from videos")) == 1
    await chat.close()


async def test_text_to_video_on_local_svd_shows_the_keyframe_first(
    make_app, fake_replicate, tiny_svd_dir
) -> None:
    """The local backend animates images only: a keyframe is drawn, shown, then animated."""
    app = make_app(
        **replicate_app_env(
            fake_replicate,
            ATELIER_LOCAL_VIDEO_MODEL=str(tiny_svd_dir),
            ATELIER_LOCAL_DEVICE="cpu",
        )
    )
    chat = ChatSession(app.base_url, login_cookie(app.base_url, "admin", ADMIN_PASSWORD))
    await chat.connect()
    await chat.send("/backend replicate")
    reply = await chat.send(
        "/video a lighthouse at night --backend local --size 32x32 --fps 4 --seconds 1 --steps 2",
        timeout=180,
    )

    texts = outputs(reply)
    keyframe = next(i for i, t in enumerate(texts) if "Keyframe for the clip" in t)
    clip = next(i for i, t in enumerate(texts) if "Clip for *a lighthouse at night*" in t)
    assert keyframe < clip, texts
    # Beside the tool's step (its sibling), not folded into it.
    step = next(m for m in reply if m.get("type") == "tool" and m.get("name") == "generate_video")
    assert reply[keyframe].get("parentId") == step.get("parentId") != step["id"]
    [image] = app_rows(app, "select * from images")
    [video] = app_rows(app, "select * from videos")
    assert image["model"] == "black-forest-labs/flux-schnell"
    assert video["source_image_id"] == image["id"]
    assert (video["backend"], video["frames"], video["width"], video["height"]) == (
        "local",
        4,
        32,
        32,
    )
    kinds = [e["type"] for e in chat.elements]
    assert kinds.count("video") == 1 and kinds.count("image") >= 1
    await chat.close()
