"""`atelier doctor`: what is configured and reachable, without printing any secret."""

from __future__ import annotations

import asyncio
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy import make_url, text

from chat_app.bootstrap import SECRET_FILE, ensure_data_dir
from chat_app.doctor_scale import scale_checks
from chat_app.settings import Settings
from core.errors import ConfigError
from core.redact import redact_urls
from memory.db import create_engine


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def database_label(url: str) -> str:
    """How the database is named to the operator: a SQLite database by its file path.

    Its URL (`sqlite+aiosqlite:////srv/data/atelier.db`) has a slash for the URL and
    one for the path, which reads as a path with a slash too many or too few; any
    other database is shown by its URL, without its password.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return f"SQLite file {Path(parsed.database).resolve()}"
    return redact_urls(url)


async def _database(settings: Settings) -> Check:
    url = settings.resolved_database_url
    shown = database_label(url)
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
            try:
                version = await conn.scalar(text("SELECT version_num FROM alembic_version"))
            except Exception:
                version = None
        migrated = f"schema {version}" if version else "not migrated yet (atelier run does it)"
        return Check("database", True, f"{shown} reachable, {migrated}")
    except Exception as exc:
        return Check("database", False, f"{shown} unreachable: {type(exc).__name__}")
    finally:
        await engine.dispose()


async def _http(name: str, configured: bool, base: str, key: str | None, hint: str) -> Check:
    if not configured:
        return Check(name, False, f"not configured ({hint})")
    shown = redact_urls(base)  # requested as configured, shown without its password
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(base.rstrip("/") + "/models", headers=headers)
        if response.status_code == 401:
            return Check(name, False, f"{shown} reachable but the key was rejected")
        return Check(name, True, f"{shown} reachable (HTTP {response.status_code})")
    except httpx.HTTPError as exc:
        return Check(name, False, f"{shown} unreachable: {type(exc).__name__}")


def _models(settings: Settings) -> list[Check]:
    """Each configured hosted model's place in the catalogue: live / retiring / retired."""
    from chat_app.model_status import line, load_catalogue, statuses

    try:
        catalogue = load_catalogue(settings)
    except ConfigError as exc:
        return [Check("models", False, exc.message)]
    return [
        Check("model", status.usable, line(configured, status))
        for configured, status in statuses(catalogue, settings)
    ]


def _gpu() -> Check:
    if importlib.util.find_spec("torch") is None:
        return Check("gpu", True, "local extra not installed (pip install 'atelier[local]')")
    import torch

    if torch.cuda.is_available():
        return Check("gpu", True, f"CUDA: {torch.cuda.get_device_name(0)}")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return Check("gpu", True, "Apple MPS")
    return Check("gpu", True, "none (local pipelines would run on the CPU, slowly)")


async def run_checks(settings: Settings) -> list[Check]:
    checks = []
    try:
        path = ensure_data_dir(settings)
        checks.append(Check("data dir", True, f"{path} writable"))
    except ConfigError as exc:
        checks.append(Check("data dir", False, exc.message))
    checks.append(await _database(settings))
    llm_base, llm_key = settings.llm_endpoint
    checks.append(
        await _http(
            f"llm ({settings.llm_model})",
            settings.llm_configured,
            llm_base or "https://api.openai.com/v1",
            llm_key,
            "set OPENAI_API_KEY or ATELIER_LLM_BASE_URL; without it Atelier runs in command mode",
        )
    )
    openai_key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
    checks.append(
        await _http(
            f"openai images ({settings.image_model})",
            settings.openai_images_configured,
            settings.openai_base_url or "https://api.openai.com/v1",
            openai_key,
            "set OPENAI_API_KEY",
        )
    )
    checks.append(
        Check(
            "replicate",
            settings.replicate_api_token is not None,
            "token set" if settings.replicate_api_token else "not configured (REPLICATE_API_TOKEN)",
        )
    )
    checks.extend(_models(settings))
    checks.append(_gpu())
    checks.extend(await scale_checks(settings))  # broker, each live worker, media store
    secret_source = (
        "CHAINLIT_AUTH_SECRET"
        if settings.auth_secret
        else f"{settings.data_dir / SECRET_FILE}"
        if (settings.data_dir / SECRET_FILE).exists()
        else "will be generated on first run"
    )
    checks.append(Check("auth secret", True, f"from {secret_source}"))
    return checks


def doctor(settings: Settings) -> int:
    checks = asyncio.run(run_checks(settings))
    width = max(len(c.name) for c in checks)
    for check in checks:
        mark = "ok  " if check.ok else "--  "
        # Details may quote URLs and library errors: no password leaves through them.
        print(f"{mark}{check.name.ljust(width)}  {redact_urls(check.detail)}")
    essential = {c.name: c.ok for c in checks}
    needed = ("data dir", "database", "broker", "media")  # a broker is ok when not set
    return 0 if all(essential.get(name) for name in needed) else 1
