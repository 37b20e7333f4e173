"""Who is asking the data layer, said explicitly.

Chainlit names the requester only inside a socket session (`context.session.user`). Its
HTTP routes (feedback, thread, element) and the socket's `connect` handler reach the data
layer with no Chainlit context at all, and treating that as "nobody to check" let one
user rewrite another's feedback. So the data layer never guesses: a read or write is done
either

- for a user: inside a Chainlit session, or inside `acting_as(...)`, which the edge sets
  for HTTP requests and socket connections from the login cookie; or
- by the server itself: inside `system("why")`, for internal work that has no user (the
  reason is logged), and which no client input can reach;

and anything else is refused with AccessDenied. There is no third, silent way.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from core.logging_setup import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class Requester:
    """A user (identifier and user id), or the server itself (`is_system`)."""

    identifier: str | None
    user_id: str | None
    is_system: bool = False
    reason: str = ""

    @classmethod
    def user(cls, identifier: str, user_id: str | None) -> Requester:
        if not identifier:
            raise ValueError("a user requester needs an identifier")
        return cls(identifier, user_id)


_explicit: ContextVar[Requester | None] = ContextVar("atelier_requester", default=None)


def explicit() -> Requester | None:
    """The requester set by `acting_as` or `system` around this call, if any."""
    return _explicit.get()


@contextmanager
def acting_as(identifier: str, user_id: str | None) -> Iterator[Requester]:
    """Everything inside runs for this user (owner checks apply)."""
    who = Requester.user(identifier, user_id)
    token = _explicit.set(who)
    try:
        yield who
    finally:
        _explicit.reset(token)


@contextmanager
def system(reason: str) -> Iterator[Requester]:
    """Everything inside is the server's own work, with no owner check.

    Only for code paths no client input can steer (start-up, maintenance commands,
    benchmarks); `reason` says which, and is logged.
    """
    if not reason:
        raise ValueError("say why the server acts without a user")
    who = Requester(None, None, is_system=True, reason=reason)
    log.info("data_access_as_system", reason=reason)
    token = _explicit.set(who)
    try:
        yield who
    finally:
        _explicit.reset(token)
