"""The `atelier` command: run the app, manage users, check the set-up."""

from __future__ import annotations

import argparse
import asyncio
import gc
import getpass
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from chat_app import listen
from chat_app.tokens_cli import add_tokens_parser
from chat_app.worker_cli import add_worker_parser
from core.errors import AtelierError

if TYPE_CHECKING:
    from fastapi import FastAPI
    from sqlalchemy.ext.asyncio import AsyncEngine

    from chat_app.embedding_worker import EmbeddingWorker
    from chat_app.settings import Settings


def _settings(args: argparse.Namespace) -> Settings:
    from chat_app.settings import load_settings  # imported here: `users` needs no more

    overrides = {}
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = Path(args.data_dir)
    return load_settings(**overrides)


def _run(args: argparse.Namespace) -> int:
    # Start-up makes about a million objects that live as long as the process (imports,
    # mostly); collecting while they are made only scans them again and again (~0.3 s).
    # Nothing is collected until the app is built; then they are frozen out of every
    # later collection, which also keeps those from scanning them during chats.
    gc.disable()
    try:
        # What the operator can get wrong is checked before the heavy imports (Chainlit,
        # FastAPI, the backends: seconds on a cold start), and the port is bound before
        # anything is created, so a mistake is told at once and leaves nothing behind.
        settings = _settings(args)
        _check_files(settings)
        sockets = listen.bind(args.host, args.port)
        try:
            app = _build_app(args, settings)
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
    finally:
        gc.freeze()
        gc.enable()
    import uvicorn

    # loop="auto" (the default) runs on uvloop, a dependency where it builds (not Windows).
    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level="warning", ws="websockets-sansio"
    )
    uvicorn.Server(config).run(sockets=sockets)
    return 0


def _check_files(settings: Settings) -> None:
    """The operator's own files (prices, models, styles), read as start-up will read
    them (plain TOML: no heavy import), so a mistake in one is named at once."""
    from chat_app.model_status import load_catalogue
    from pipelines.catalogue.pricing import PriceTable
    from tools.styles import StyleLibrary

    PriceTable.load(
        settings.prices_file, local_usd_per_gpu_second=settings.local_usd_per_gpu_second
    )
    load_catalogue(settings)
    StyleLibrary.load(settings.styles_file)


def _build_app(args: argparse.Namespace, settings: Settings) -> FastAPI:
    from chat_app.server import create_app

    hosts = (
        {args.host, "localhost", "127.0.0.1"}
        if args.host in ("127.0.0.1", "localhost")
        else {args.host}
    )
    origins = sorted(f"http://{host}:{args.port}" for host in hosts)
    extra = os.environ.get("ATELIER_PUBLIC_ORIGINS")
    if extra:
        origins += [o.strip() for o in extra.split(",") if o.strip()]
    app = create_app(settings, public_origins=origins)
    print(f"Atelier on http://{args.host}:{args.port}", flush=True)
    return app


@asynccontextmanager
async def migrated_engine(args: argparse.Namespace) -> AsyncIterator[tuple[Settings, AsyncEngine]]:
    """The settings and a migrated database for a one-shot command, disposed of after.

    `users`, `tokens` and `gallery backfill` may be the first thing run on a new data
    directory, so each makes the directory and brings the schema up to date first.
    """
    from chat_app.bootstrap import ensure_data_dir
    from memory.db import create_engine, migrate

    settings = _settings(args)
    ensure_data_dir(settings)
    engine = create_engine(settings.resolved_database_url)
    try:
        await migrate(engine)
        yield settings, engine
    finally:
        await engine.dispose()


async def _users(args: argparse.Namespace) -> int:
    from memory.db import session_factory
    from memory.users import UserStore

    async with migrated_engine(args) as (_, engine):
        store = UserStore(session_factory(engine))
        if args.action == "list":
            for account in await store.list():
                print(f"{account.identifier}\t{account.role}")
        elif args.action == "remove":
            await store.remove(args.name)
            print(f"Removed {args.name}; their open logins end within seconds.")
        elif args.action in ("add", "passwd"):
            password = _read_password(args.password_stdin)
            if args.action == "add":
                await store.add(args.name, password, role="admin" if args.admin else "user")
                print(f"Added {args.name}.")
            else:
                ended = await store.set_password(args.name, password)
                print(
                    f"Changed the password of {args.name}; "
                    f"ended {ended} login session{'s' if ended != 1 else ''}."
                )
    return 0


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Repeat: ") != first:
        raise AtelierError("The passwords do not match.")
    return first


async def _gallery_backfill(args: argparse.Namespace) -> int:
    """Embed every image without a likeness vector; safe to rerun (done ones are skipped)."""
    from chat_app.embedding_worker import build_likeness
    from memory.media_stores import media_store_for
    from pipelines import job_runners

    async with migrated_engine(args) as (settings, engine):
        likeness, worker = build_likeness(settings, engine, media_store_for(settings))
        if worker is None:
            raise AtelierError(likeness.how_to_enable)
        # With a broker, workers embed; this process hands them the jobs meanwhile.
        await job_runners.start(settings)
        try:
            stored, total = await _backfill_with_progress(settings, worker, args.batch)
        finally:
            await job_runners.reset()
    failed = total - stored
    if not total:
        print("Every image already has its likeness embedding.")
    elif failed:
        print(f"Done: {stored} embedded, {failed} failed (see the log; run again to retry).")
    else:
        print(f"Done: {stored} embedded.")
    return 1 if failed else 0


async def _backfill_with_progress(
    settings: Settings, worker: EmbeddingWorker, batch: int
) -> tuple[int, int]:
    """Run the backfill, printing a line every two seconds at most, and the last one."""
    import time

    from chat_app.embedding_worker import backfill

    shown = [0.0]

    def progress(done: int, stored: int, total: int) -> None:
        if done == total or time.monotonic() - shown[0] >= 2:
            shown[0] = time.monotonic()
            print(f"{done}/{total} images: {stored} embedded", flush=True)

    print(f"Embedding images with {settings.clip_model} ...", flush=True)
    return await backfill(worker, batch, progress)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _doctor(args: argparse.Namespace) -> int:
    from chat_app.doctor import doctor

    return doctor(_settings(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atelier", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="start the web app")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=8000)
    run.add_argument("--data-dir", help="where the database and files live (ATELIER_DATA_DIR)")
    run.set_defaults(func=_run)

    users = sub.add_parser("users", help="manage accounts")
    users.add_argument("--data-dir", help="where the database and files live (ATELIER_DATA_DIR)")
    actions = users.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="add a user")
    add.add_argument("name")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    add.add_argument("--admin", action="store_true")
    passwd = actions.add_parser("passwd", help="change a user's password")
    passwd.add_argument("name")
    passwd.add_argument("--password-stdin", action="store_true")
    listing = actions.add_parser("list", help="list users")
    remove = actions.add_parser("remove", help="remove a user and their conversations")
    remove.add_argument("name")
    for action in (add, passwd, listing, remove):
        # Also after the action (`users add NAME --data-dir X`); SUPPRESS keeps a value
        # given before it when none is given here.
        action.add_argument("--data-dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    users.set_defaults(func=lambda a: asyncio.run(_users(a)))

    gallery = sub.add_parser("gallery", help="maintain the gallery")
    gallery_actions = gallery.add_subparsers(dest="action", required=True)
    backfill = gallery_actions.add_parser(
        "backfill", help="compute the likeness embedding of every image that has none"
    )
    backfill.add_argument(
        "--batch", type=_positive, default=16, help="images per forward pass (default 16)"
    )
    backfill.add_argument("--data-dir", help="where the database and files live (ATELIER_DATA_DIR)")
    backfill.set_defaults(func=lambda a: asyncio.run(_gallery_backfill(a)))

    doctor = sub.add_parser("doctor", help="show what is configured and reachable")
    doctor.add_argument("--data-dir")
    doctor.set_defaults(func=_doctor)
    add_worker_parser(sub)  # `atelier worker` (chat_app/worker_cli.py)
    add_tokens_parser(sub)  # `atelier tokens` (chat_app/tokens_cli.py)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except AtelierError as exc:
        print(f"atelier: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
