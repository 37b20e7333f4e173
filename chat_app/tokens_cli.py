"""`atelier tokens`: the operator makes, lists and revokes users' API tokens.

`add` prints the token once, on stdout alone on its line (so a script can capture it);
it is never stored or shown again. The CLI writes the same table as the app, and the app
reads it on every request, so a revocation here takes effect at the next request.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the database layer is imported when a command runs, not by `--help`
    from memory.api_tokens import ApiTokenRecord


def add_tokens_parser(sub: Any) -> None:
    tokens = sub.add_parser("tokens", help="manage users' API tokens")
    tokens.add_argument("--data-dir", help="where the database and files live (ATELIER_DATA_DIR)")
    actions = tokens.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="make a token for a user (printed once)")
    add.add_argument("user", help="the user's name")
    add.add_argument("--name", default="cli", help="what will use it (default 'cli')")
    add.add_argument("--expires", type=int, metavar="DAYS", help="days until it expires")
    listing = actions.add_parser("list", help="list a user's tokens (never the tokens)")
    listing.add_argument("user", help="the user's name")
    revoke = actions.add_parser("revoke", help="revoke a token now")
    revoke.add_argument("token_id", help="the token's id, as `tokens list` shows it")
    for action in (add, listing, revoke):
        # Also after the action; SUPPRESS keeps a value given before it.
        action.add_argument("--data-dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    tokens.set_defaults(func=lambda a: asyncio.run(_tokens(a)))


def describe(record: ApiTokenRecord) -> str:
    """One tab-separated line: id, name, visible prefix, status, created, expires, last used."""
    return "\t".join(
        [
            record.id,
            record.name,
            record.prefix + "…",
            record.status,
            f"created {_day(record.created_at)}",
            f"expires {_day(record.expires_at) if record.expires_at else 'never'}",
            f"last used {_day(record.last_used_at) if record.last_used_at else 'never'}",
        ]
    )


def _day(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC")


async def _tokens(args: argparse.Namespace) -> int:
    from chat_app.cli import migrated_engine
    from memory.api_tokens import ApiTokenStore
    from memory.db import session_factory

    async with migrated_engine(args) as (_, engine):
        store = ApiTokenStore(session_factory(engine))
        if args.action == "add":
            user_id = await store.user_id(args.user)
            record, token = await store.add(user_id, args.name, args.expires)
            print(token)
            print(
                f"Made API token {record.id} ({record.name!r}) for {args.user}. "
                "It is shown only now: copy it.",
                flush=True,
            )
        elif args.action == "list":
            records = await store.list(await store.user_id(args.user))
            for record in records:
                print(describe(record))
            if not records:
                print(f"{args.user} has no API tokens.")
        else:
            record = await store.revoke(args.token_id)
            print(f"Revoked API token {record.id} ({record.name!r}); it no longer works.")
    return 0
