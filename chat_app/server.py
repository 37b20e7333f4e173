"""The FastAPI parent app: our routes first, Chainlit mounted at `/` last.

Mounting (rather than `chainlit run`) keeps our routes from being shadowed by Chainlit's
catch-all, and gives us a lifespan for migrations; Chainlit's own start-up hooks do not
run when mounted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI

from chat_app.bootstrap import prepare_environment
from chat_app.runtime import Runtime, build_runtime, install
from chat_app.settings import Settings
from core.logging_setup import configure_logging

if TYPE_CHECKING:
    from chat_app.socket_guard import SocketGuard

HANDLERS = Path(__file__).with_name("handlers.py")


def create_app(settings: Settings, public_origins: list[str] | None = None) -> FastAPI:
    configure_logging(settings.log_json, settings.log_level)
    secret = prepare_environment(settings)
    runtime = build_runtime(settings, secret)
    install(runtime)
    guards: list[SocketGuard] = []  # filled once Chainlit's socket handlers exist (below)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        sweepers = [asyncio.create_task(guard.run()) for guard in guards]
        try:
            yield
        finally:
            for sweeper in sweepers:
                sweeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sweeper
            await runtime.stop()

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    from chat_app import (
        api_docs,
        jobs_api,
        metrics_route,
        openai_images_api,
        request_guards,
        token_routes,
    )
    from chat_app.batch_routes import router as batch_router
    from chat_app.gallery_routes import router as gallery_router
    from chat_app.media_route import router as media_router
    from chat_app.thumbnail_route import router as thumbnail_router

    app.include_router(media_router)
    app.include_router(thumbnail_router)
    app.include_router(gallery_router)
    app.include_router(batch_router)
    app.include_router(token_routes.router)  # /api/tokens: the user's own API tokens
    app.include_router(openai_images_api.router)  # /v1: OpenAI's Images API
    app.include_router(jobs_api.router)  # /api/v1/jobs: the jobs API
    app.include_router(api_docs.router)  # /api/openapi.json and /api/docs
    app.include_router(metrics_route.router_for(settings))
    request_guards.add_routes(app, settings)  # before the mount, so they take precedence

    from chainlit.config import config

    if public_origins:
        config.project.allow_origins = public_origins
    from chainlit.utils import mount_chainlit

    mount_chainlit(app, target=str(HANDLERS), path="/")
    from chat_app import session_cleanup, step_clock

    session_cleanup.install()  # else Chainlit keeps every message of every session
    step_clock.install()  # else every message and step made holds the event loop 1 ms
    if public_origins:
        from chainlit.server import sio

        # Chainlit leaves Socket.IO's origin check off; a foreign page must not connect.
        sio.eio.cors_allowed_origins = public_origins
    request_guards.add_guards(app)  # inside the login middleware added next
    guards.append(_guard_logins(app, runtime, settings))
    request_guards.add_security_headers(app)  # outermost: on every response
    return app


def _guard_logins(app: FastAPI, runtime: Runtime, settings: Settings) -> SocketGuard:
    """Revocable logins and login limits; returns the socket guard whose sweep must run.

    Middleware added here wraps the whole app: our routes, Chainlit's and its socket.
    """
    from chainlit.server import sio

    from chat_app.login_limits import LoginLimiter
    from chat_app.login_middleware import LoginLimitMiddleware
    from chat_app.session_guard import SessionGuard
    from chat_app.session_middleware import SessionMiddleware
    from chat_app.socket_guard import SocketGuard

    sessions = SessionGuard(runtime.auth_sessions)
    app.add_middleware(SessionMiddleware, guard=sessions)
    app.add_middleware(LoginLimitMiddleware, limiter=LoginLimiter.from_settings(settings))
    sockets = SocketGuard(sessions, sio)
    sockets.install()
    return sockets
