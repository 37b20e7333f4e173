"""A login token's claims: checked once, kept only while the token is valid.

claims_of keeps a token's verified claims (every socket event, request and sweep asks
again); these check that keeping them never lets a token through that a fresh check
would refuse: an expired one, one signed with another secret, a forged one.
"""

from __future__ import annotations

import time

import jwt
import pytest

from chat_app import session_guard
from chat_app.session_guard import SESSION_CLAIM, Claims, claims_of

SECRET = "s" * 64


@pytest.fixture(autouse=True)
def secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAINLIT_AUTH_SECRET", SECRET)
    session_guard._verified.clear()


def token(exp: float, secret: str = SECRET, **extra: object) -> str:
    payload = {
        "identifier": "ada",
        "display_name": None,
        "metadata": {SESSION_CLAIM: "sess-1", "role": "user"},
        "exp": int(exp),
        "iat": int(time.time()),
        **extra,
    }
    return jwt.encode(payload, secret, algorithm="HS256")


def test_a_valid_token_gives_its_user_and_session() -> None:
    assert claims_of(token(time.time() + 600)) == Claims("ada", "sess-1")


def test_a_kept_token_is_refused_once_it_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    expires = time.time() + 60
    kept = token(expires)
    assert claims_of(kept) == Claims("ada", "sess-1")  # now kept
    monkeypatch.setattr(session_guard.time, "time", lambda: expires + 1)
    assert claims_of(kept) is None


def test_an_expired_token_is_refused() -> None:
    assert claims_of(token(time.time() - 5)) is None


def test_a_token_of_another_secret_is_refused_even_after_it_was_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kept = token(time.time() + 600)
    assert claims_of(kept) is not None
    monkeypatch.setenv("CHAINLIT_AUTH_SECRET", "t" * 64)  # the secret was rotated
    assert claims_of(kept) is None
    assert claims_of(token(time.time() + 600, secret="x" * 64)) is None


def test_forged_garbled_and_incomplete_tokens_are_refused() -> None:
    good = token(time.time() + 600)
    head, body, signature = good.split(".")
    forged = f"{head}.{body}.{signature[:-2]}AA"
    no_exp = jwt.encode({"identifier": "ada", "metadata": {}}, SECRET, algorithm="HS256")
    no_name = jwt.encode({"metadata": {}, "exp": int(time.time()) + 60}, SECRET, "HS256")
    bad_name = jwt.encode({"identifier": 7, "exp": int(time.time()) + 60}, SECRET, "HS256")
    for bad in (forged, "not-a-token", "", None, no_exp, no_name, bad_name):
        assert claims_of(bad) is None, bad


def test_a_token_without_a_session_claim_has_none() -> None:
    old = jwt.encode(
        {"identifier": "ada", "metadata": {}, "exp": int(time.time()) + 60}, SECRET, "HS256"
    )
    assert claims_of(old) == Claims("ada", None)
