"""`/tokens` in the chat: list, make (`/tokens new NAME [DAYS]`) and revoke API tokens.

Only the user can run it: it is a slash command typed by them, not a tool, so the chat
model can neither make a token nor see one. A new token is shown in a message that is
never saved (`persisted` set before sending, so Chainlit does not hand it to the data
layer): it is not in the conversation's history, which is what the model reads
(chat_app/conversation.py), nor in the database. Reloading the page loses it, as it
should; the saved message says that it was shown once.
"""

from __future__ import annotations

import chainlit as cl

from chat_app import rendering
from core.errors import InvalidInput
from memory.api_tokens import ApiTokenRecord, ApiTokenStore

USAGE = (
    "`/tokens` lists your API tokens; `/tokens new NAME [DAYS]` makes one (expiring after "
    "DAYS days, or never); `/tokens revoke ID` revokes one (the first 8 characters of its "
    "id will do)."
)


async def run(store: ApiTokenStore, user_id: str, text: str) -> None:
    action, _, rest = text.strip().partition(" ")
    action = action.lower()
    if action in ("", "list"):
        await rendering.notice(listing(await store.list(user_id)))
    elif action in ("new", "add", "create"):
        name, days = parse_new(rest)
        record, token = await store.add(user_id, name, days)
        await rendering.notice(
            f"Made API token **{record.name}** (`{record.id[:8]}`, "
            f"{'expires ' + _day(record) if record.expires_at else 'never expires'}). "
            "It was shown once, in a message that is not saved; revoke it with "
            f"`/tokens revoke {record.id[:8]}` if it is lost."
        )
        await _show_once(token)
    elif action == "revoke":
        record = await store.revoke(await _full_id(store, user_id, rest), user_id)
        await rendering.notice(f"Revoked API token **{record.name}** (`{record.id[:8]}`).")
    else:
        raise InvalidInput(USAGE)


def parse_new(rest: str) -> tuple[str, int | None]:
    """'open webui 30' -> ('open webui', 30); a name alone never expires."""
    words = rest.split()
    if not words:
        raise InvalidInput(USAGE)
    if len(words) > 1 and words[-1].isdigit():
        return " ".join(words[:-1]), int(words[-1])
    return " ".join(words), None


async def _full_id(store: ApiTokenStore, user_id: str, given: str) -> str:
    """A token id from its first characters (at least 8), among the user's own tokens."""
    given = given.strip().strip("`").lower()
    if len(given) < 8:
        raise InvalidInput("Give the token's id (at least its first 8 characters): " + USAGE)
    matches = [r.id for r in await store.list(user_id) if r.id.startswith(given)]
    if len(matches) > 1:
        raise InvalidInput(f"Several of your tokens start with {given!r}; give more of the id.")
    return matches[0] if matches else given  # none: the store says NotFound


def listing(records: list[ApiTokenRecord]) -> str:
    if not records:
        return "**Your API tokens**\n\nNone yet. " + USAGE
    lines = ["**Your API tokens**", "", "| id | name | token | status | expires | last used |"]
    lines.append("|---|---|---|---|---|---|")
    for r in records:
        expires = _day(r) if r.expires_at else "never"
        used = r.last_used_at.strftime("%Y-%m-%d %H:%M") if r.last_used_at else "never"
        name = r.name.replace("|", "/")
        lines.append(f"| `{r.id[:8]}` | {name} | `{r.prefix}…` | {r.status} | {expires} | {used} |")
    return "\n".join(lines) + "\n\n" + USAGE


def _day(record: ApiTokenRecord) -> str:
    assert record.expires_at is not None
    return record.expires_at.strftime("%Y-%m-%d")


async def _show_once(token: str) -> None:
    message = cl.Message(
        content=(
            "Your new API token (copy it now: it is not saved and will not be shown "
            f"again):\n\n```\n{token}\n```\n\nUse it as `Authorization: Bearer <token>`, "
            "or as the API key of any OpenAI client with base URL `<this site>/v1`."
        ),
        author="Atelier",
    )
    message.persisted = True  # Chainlit skips the data layer: not in history or the DB
    await message.send()
