"""The FastAPI parent app: our routes first, Chainlit mounted at `/` last.

Mounting (rather than `chainlit run`) keeps our routes from being shadowed by Chainlit's
catch-all, and gives us a lifespan for migrations; Chainlit's own start-up hooks do not
run when mounted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from chat_app.bootstrap import prepare_environment
from chat_app.runtime import build_runtime, install
from chat_app.settings import Settings
from memory.logging_setup import configure_logging

HANDLERS = Path(__file__).with_name("handlers.py")


def create_app(settings: Settings, public_origins: list[str] | None = None) -> FastAPI:
    configure_logging(settings.log_json, settings.log_level)
    secret = prepare_environment(settings)
    runtime = build_runtime(settings, secret)
    install(runtime)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    from chat_app.media_route import router as media_router

    app.include_router(media_router)

    from chainlit.config import config

    if public_origins:
        config.project.allow_origins = public_origins
    from chainlit.utils import mount_chainlit

    mount_chainlit(app, target=str(HANDLERS), path="/")
    if public_origins:
        from chainlit.server import sio

        # Chainlit leaves Socket.IO's origin check off; a foreign page must not connect.
        sio.eio.cors_allowed_origins = public_origins
    return app
