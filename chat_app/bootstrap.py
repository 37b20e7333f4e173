"""Things that must happen before Chainlit is imported: data dir, auth secret, env.

Chainlit reads its config and the JWT secret from the environment at import time, so
the CLI and the tests call `prepare_environment` first.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from chat_app.settings import Settings
from core.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SECRET_FILE = "auth_secret"


def ensure_data_dir(settings: Settings) -> Path:
    path = settings.data_dir.resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"ATELIER_DATA_DIR: cannot write to {path} ({exc.strerror}).") from None
    return path


def load_or_create_auth_secret(settings: Settings) -> str:
    """CHAINLIT_AUTH_SECRET if set, else one generated once and kept in the data dir."""
    if settings.auth_secret is not None:
        value = settings.auth_secret.get_secret_value()
        if len(value) < 32:
            raise ConfigError("CHAINLIT_AUTH_SECRET: must be at least 32 characters long.")
        return value
    path = ensure_data_dir(settings) / SECRET_FILE
    if path.exists():
        value = path.read_text().strip()
        if len(value) >= 32:
            return value
        path.unlink(missing_ok=True)  # too short to be one we wrote: replaced below
    value = secrets.token_urlsafe(48)
    # Written to a file of its own, then linked into place: of replicas starting together
    # on a shared data dir, the first link wins and the others read the winner's secret
    # (a cookie signed by one must be honoured by all).
    draft = path.with_name(f"{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value)
    try:
        os.link(draft, path)
    except FileExistsError:
        value = path.read_text().strip()
    finally:
        draft.unlink()
    return value


def chainlit_root(settings: Settings) -> Path:
    """Where `.chainlit/config.toml` lives: the source tree, else the data dir."""
    if (PROJECT_ROOT / ".chainlit" / "config.toml").exists():
        return PROJECT_ROOT
    return settings.data_dir.resolve()


def prepare_environment(settings: Settings) -> str:
    """Set what Chainlit reads at import; returns the auth secret."""
    ensure_data_dir(settings)
    secret = load_or_create_auth_secret(settings)
    os.environ["CHAINLIT_AUTH_SECRET"] = secret
    os.environ.setdefault("CHAINLIT_APP_ROOT", str(chainlit_root(settings)))
    return secret
