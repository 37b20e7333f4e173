"""The baseline for the benchmarks: a bare Chainlit app with password login that echoes.

    CHAINLIT_AUTH_SECRET=... ECHO_PASSWORD=... \
        .venv/bin/python -m chainlit run benchmarks/echo_app.py --headless --port 8001

Any user name logs in with ECHO_PASSWORD (default "echo-password"). No data layer, no
tools, nothing but Chainlit itself: what Chainlit costs, for our app to be measured
against in the same run.
"""

from __future__ import annotations

import hmac
import os

import chainlit as cl

PASSWORD = os.environ.get("ECHO_PASSWORD", "echo-password")


@cl.password_auth_callback
async def _login(username: str, password: str) -> cl.User | None:
    if hmac.compare_digest(password.encode(), PASSWORD.encode()):
        return cl.User(identifier=username, metadata={"role": "user"})
    return None


@cl.on_message
async def _echo(message: cl.Message) -> None:
    await cl.Message(content=message.content).send()
