"""Attack: server-side request forgery through a provider's output links (issue 12, #1).

Any user may name any `replicate:owner/name`, and whoever owns that model chooses the
output URL the server downloads. Here the fake Replicate answers with links chosen by
the test (the hostile model's), and an internal-only service on 127.0.0.1 records every
request it receives: it serves a real PNG, so a fetch that got through would succeed
visibly. Each attack must be refused with the one neutral message, with nothing fetched
from the internal service, nothing spent and nothing stored.

The fake Replicate's own files are on 127.0.0.1 too; every test names it (and nothing
else) on the allow-list, so the legitimate path also runs through the real guard.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator, Iterator

import pytest
from structlog.testing import capture_logs

from chat_app.settings import load_settings
from core.errors import BackendFailed, ConfigError
from core.logging_setup import configure_logging
from pipelines.downloads.fetch_policy import FetchPolicy, is_public, parse_allow_list
from pipelines.downloads.guarded_fetch import DOWNLOAD_FAILED, GuardedFetcher
from pipelines.images.base import ImageRequest
from pipelines.images.replicate_images import ReplicateImages
from tests.app_process import add_user, app_rows, free_port
from tests.chat_client import ChatSession, login_cookie, outputs
from tests.fakes.file_host import FileHost, png_bytes
from tests.fakes.openai_server import Reply, ToolCall
from tests.fakes.replicate_server import FakeReplicate
from tests.replicate_fixtures import replicate_app_env

MB = 1024 * 1024
# The model the attacker names. A priced one, so the ledger shows a reservation that must
# be released; the fake plays its owner by answering the links each test chooses.
HOSTILE = "replicate:black-forest-labs/flux-schnell"


@pytest.fixture(autouse=True)
def _log_to_this_tests_stderr() -> None:
    configure_logging()  # see test_replicate_backend.py


@pytest.fixture
def internal() -> Iterator[FileHost]:
    """The internal-only service: nobody outside the server should ever reach it."""
    with FileHost() as host:
        yield host


@pytest.fixture
def cdn() -> Iterator[FileHost]:
    """An output host the operator allows (a self-hosted provider's file server)."""
    with FileHost() as host:
        yield host


def allowing(*hosts: FileHost | FakeReplicate, timeout_s: float = 10.0) -> FetchPolicy:
    entries = ",".join(f"127.0.0.1:{host.port}" for host in hosts)
    return FetchPolicy.from_setting(entries, timeout_s=timeout_s)


@pytest.fixture
async def fetcher(cdn: FileHost) -> AsyncIterator[GuardedFetcher]:
    guarded = GuardedFetcher(allowing(cdn))
    yield guarded
    await guarded.aclose()


async def refusal(fetcher: GuardedFetcher, url: str, max_bytes: int = 4 * MB) -> str:
    with pytest.raises(BackendFailed) as caught:
        await fetcher.fetch(url, max_bytes=max_bytes)
    return caught.value.message


# --------------------------------------------------------------------------- the classifier


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",  # carrier-grade NAT
        "169.254.169.254",  # cloud metadata
        "0.0.0.0",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "198.18.0.1",
        "::",
        "::1",
        "fe80::1",
        "fc00::1",
        "fd12:3456::1",
        "ff02::1",
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:169.254.169.254",
        "::ffff:10.0.0.1",
        "::127.0.0.1",  # IPv4-compatible
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "2001:db8::1",
    ],
)
def test_inside_addresses_are_not_public(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "151.101.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"]
)
def test_public_addresses_are_public(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


def test_the_allow_list_is_exact_and_refuses_bad_entries() -> None:
    policy = FetchPolicy.from_setting("127.0.0.1:9000, minio.internal, 10.0.0.0/8, [fd00::5]:80")
    loopback, lan = ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("10.9.8.7")
    assert policy.permits("127.0.0.1", 9000, loopback)
    assert not policy.permits("127.0.0.1", 9001, loopback)  # another port of the same host
    assert policy.permits("MINIO.internal.", 443, lan)  # by name, any port
    assert policy.permits("anything", 80, lan)  # by network
    assert policy.permits("x", 80, ipaddress.ip_address("fd00::5"))
    assert not policy.permits("x", 81, ipaddress.ip_address("fd00::5"))
    assert not policy.permits("evil.example", 80, ipaddress.ip_address("169.254.169.254"))
    for bad in ("http://host", "10.0.0.0/33", "a host", "1.2.3.4:70000", "[::1]x"):
        with pytest.raises(ValueError):
            parse_allow_list(bad)


def test_a_bad_allow_list_stops_start_up_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="ATELIER_FETCH_ALLOW_HOSTS: .*'http://minio:9000'"):
        load_settings(fetch_allow_hosts="10.0.0.0/8, http://minio:9000")


@pytest.mark.parametrize(
    "spelling",
    [
        "127.0.0.1",
        "2130706433",  # 127.0.0.1 as one decimal number
        "0x7f.1",  # hex and short form
        "0x7f000001",
        "017700000001",  # octal
        "127.1",
        "localhost",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "[::1]",
    ],
)
async def test_every_spelling_of_the_internal_host_is_refused(
    fetcher: GuardedFetcher, internal: FileHost, spelling: str
) -> None:
    # The internal service really listens on this port, on 127.0.0.1 (and ::1 may not
    # answer at all): whatever the resolver makes of the spelling, nothing reaches it.
    message = await refusal(fetcher, f"http://{spelling}:{internal.port}/secret.png")
    assert message == DOWNLOAD_FAILED
    assert internal.requests == []


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://127.0.0.1/secret.png",
        "gopher://127.0.0.1:6379/_INFO",
        "dict://127.0.0.1:6379/info",
        "data:image/png;base64,AAAA",  # decoded by the backends, never fetched
        "//127.0.0.1/secret.png",
        "not a url",
    ],
)
async def test_other_schemes_are_refused(fetcher: GuardedFetcher, url: str) -> None:
    assert await refusal(fetcher, url) == DOWNLOAD_FAILED


# --------------------------------------------------------------------------- hops and limits


async def test_a_redirect_to_an_inside_address_is_refused_at_the_hop(
    fetcher: GuardedFetcher, cdn: FileHost, internal: FileHost
) -> None:
    cdn.redirects["/out.png"] = f"{internal.base_url}/secret.png"
    cdn.redirects["/meta"] = "http://169.254.169.254/latest/meta-data/"
    cdn.redirects["/file"] = "file:///etc/passwd"
    with capture_logs() as events:
        for path in ("/out.png", "/meta", "/file"):
            assert await refusal(fetcher, cdn.base_url + path) == DOWNLOAD_FAILED
    assert [r.path for r in cdn.requests] == ["/out.png", "/meta", "/file"]  # hop 0 was fine
    assert internal.requests == []
    reasons = [e["reason"] for e in events if e["event"] == "provider_download_refused"]
    assert reasons == ["blocked address", "blocked address", "not an http(s) URL"]


async def test_redirects_within_the_allowed_host_are_followed_up_to_a_limit(
    fetcher: GuardedFetcher, cdn: FileHost
) -> None:
    cdn.files["/final.png"] = (png_bytes(), "image/png")
    cdn.redirects["/a"] = "/b"
    cdn.redirects["/b"] = f"{cdn.base_url}/final.png"
    assert await fetcher.fetch(cdn.base_url + "/a", max_bytes=MB) == png_bytes()
    for hop in range(7):
        cdn.redirects[f"/loop{hop}"] = f"/loop{hop + 1}"
    assert await refusal(fetcher, cdn.base_url + "/loop0") == DOWNLOAD_FAILED
    assert len([r for r in cdn.requests if r.path.startswith("/loop")]) == 6  # 1 + 5 hops


async def test_an_oversize_output_is_refused_while_streaming(
    fetcher: GuardedFetcher, cdn: FileHost
) -> None:
    cdn.streams["/huge.png"] = 512 * MB  # no Content-Length: only counting can stop it
    assert await refusal(fetcher, cdn.base_url + "/huge.png", max_bytes=MB) == DOWNLOAD_FAILED
    assert cdn.bytes_streamed < 64 * MB  # stopped early, not read to the end
    cdn.files["/declared.png"] = (b"\0" * (2 * MB), "image/png")  # a Content-Length says it
    assert await refusal(fetcher, cdn.base_url + "/declared.png", max_bytes=MB) == DOWNLOAD_FAILED


async def test_a_host_that_never_answers_hits_the_time_limit(cdn: FileHost) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        guarded = GuardedFetcher(
            FetchPolicy.from_setting(f"127.0.0.1:{port}", timeout_s=0.5, connect_timeout_s=0.5)
        )
        try:
            assert await refusal(guarded, f"http://127.0.0.1:{port}/x.png") == DOWNLOAD_FAILED
        finally:
            await guarded.aclose()


async def test_closed_port_404_and_blocked_address_read_the_same(
    cdn: FileHost, internal: FileHost
) -> None:
    closed = free_port()
    guarded = GuardedFetcher(FetchPolicy.from_setting(f"127.0.0.1:{cdn.port},127.0.0.1:{closed}"))
    cdn.files["/text.png"] = (b"<html>admin console</html>", "text/html")
    try:
        with capture_logs() as events:
            messages = {
                await refusal(guarded, f"http://127.0.0.1:{closed}/x.png"),
                await refusal(guarded, f"{cdn.base_url}/missing.png"),
                await refusal(guarded, f"{internal.base_url}/secret.png"),
            }
    finally:
        await guarded.aclose()
    assert messages == {DOWNLOAD_FAILED}
    # The operator's log tells them apart; the user's message does not.
    reasons = [e["reason"] for e in events if e["event"] == "provider_download_refused"]
    assert reasons == ["ConnectError", "HTTP 404", "blocked address"]
    assert internal.requests == []


# --------------------------------------------------------------------------- the backend


async def test_a_hostile_models_outputs_are_not_fetched_by_the_backend(
    fake_replicate: FakeReplicate, internal: FileHost, cdn: FileHost
) -> None:
    backend = ReplicateImages(
        fake_replicate.api_token or "",
        base_url=fake_replicate.base_url,
        poll_interval_s=0.01,
        fetch_policy=allowing(fake_replicate, cdn),
    )
    cdn.files["/page.png"] = (b"<html>not an image</html>", "text/html")
    cdn.redirects["/hop.png"] = f"{internal.base_url}/secret.png"
    links = [
        f"{internal.base_url}/secret.png",
        f"{cdn.base_url}/hop.png",
        f"{cdn.base_url}/page.png",  # fetched (allowed), but not an image: same message
        "file:///etc/passwd",
    ]
    try:
        for link in links:
            fake_replicate.output_links = [link]
            with pytest.raises(BackendFailed) as caught:
                await backend.generate(ImageRequest("a fox", model="mallory/exfil"))
            assert caught.value.message == DOWNLOAD_FAILED
        fake_replicate.output_links = None  # the fake's own files, allow-listed: still work
        made = await backend.generate(ImageRequest("a fox"))
    finally:
        await backend.aclose()
    assert len(fake_replicate.creates()) == len(links) + 1  # each prediction really ran
    assert internal.requests == []
    assert made.images and made.images[0].mime == "image/png"


# --------------------------------------------------------------------------- through the app


def _hostile_brain(messages, tools) -> Reply:
    """A chat model scripted to draw with a model its owner controls, whatever is asked."""
    if messages and messages[-1].get("role") == "tool":
        return Reply(content="Done.")
    args = {"prompt": "a fox", "backend": HOSTILE}
    return Reply(tool_calls=[ToolCall("generate_image", args)])


@pytest.mark.slow
async def test_an_ordinary_user_cannot_make_the_app_fetch_an_internal_url(
    make_app, fake_openai, fake_replicate, internal: FileHost, cdn: FileHost
) -> None:
    allow = f"{fake_replicate.fetch_allow},127.0.0.1:{cdn.port}"
    app = make_app(
        **replicate_app_env(
            fake_replicate,
            ATELIER_FETCH_ALLOW_HOSTS=allow,
            ATELIER_LOCAL_ENABLED="0",
        )
    )
    add_user(app, "mallory", "mallorys-password")
    chat = ChatSession(app.base_url, login_cookie(app.base_url, "mallory", "mallorys-password"))
    await chat.connect()

    # 1. A command naming a model whose output is the internal service.
    fake_replicate.output_links = [f"{internal.base_url}/secret.png"]
    direct = outputs(await chat.send(f"/image a fox --backend {HOSTILE}"))
    # 2. A hostile chat model, the output an allowed host redirecting inside.
    cdn.redirects["/hop.png"] = f"{internal.base_url}/secret.png"
    fake_replicate.output_links = [f"{cdn.base_url}/hop.png"]
    fake_openai.brain = _hostile_brain
    scripted = outputs(await chat.send("anything at all"))
    await chat.close()

    assert len(fake_replicate.creates()) == 2  # both predictions ran on the "provider"
    for reply in (direct, scripted):
        assert any(DOWNLOAD_FAILED in text for text in reply), reply
        assert not any(str(internal.port) in text for text in reply), reply
    assert internal.requests == []  # never reached, not even once
    assert [r.path for r in cdn.requests] == ["/hop.png"]
    assert app_rows(app, "SELECT * FROM images") == []  # nothing stored
    entries = app_rows(app, "SELECT status, actual_usd FROM ledger_entries")
    assert entries and {e["status"] for e in entries} == {"released"}  # nothing spent
    assert "provider_download_refused" in app.log()  # the operator's side of the story
