"""Settings validation and the `atelier` command, run as a user would run it."""

from __future__ import annotations

import pytest

from chat_app.settings import load_settings
from core.errors import ConfigError
from tests.app_process import atelier


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ATELIER_DATABASE_URL", "mysql://somewhere/db"),
        ("ATELIER_REQUEST_TIMEOUT", "-3"),
        ("ATELIER_LOG_LEVEL", "chatty"),
        ("OPENAI_BASE_URL", "ftp://example"),
        ("ATELIER_LOG_JSON", "perhaps"),
        ("ATELIER_BUDGET_THREAD_USD", "-1"),
        ("ATELIER_BUDGET_USER_DAY_USD", "ten dollars"),
        ("ATELIER_CONFIRM_ABOVE_USD", "0.0000001"),
    ],
)
def test_bad_value_names_the_variable(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert variable in str(error.value)


def test_defaults_are_embedded(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for name in ("ATELIER_DATABASE_URL", "OPENAI_API_KEY", "ATELIER_LLM_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(data_dir=tmp_path / "d")
    assert settings.resolved_database_url == f"sqlite+aiosqlite:///{tmp_path / 'd' / 'atelier.db'}"
    assert not settings.llm_configured
    monkeypatch.setenv("ATELIER_DATABASE_URL", "postgresql://u@h/db")
    assert load_settings().resolved_database_url == "postgresql+asyncpg://u@h/db"


def test_run_refuses_bad_configuration_with_the_variable_name(tmp_path):
    result = atelier("run", "--data-dir", str(tmp_path), env={"ATELIER_DATABASE_URL": "oracle://x"})
    assert result.returncode == 2
    assert "ATELIER_DATABASE_URL" in result.stderr


def test_users_add_list_remove(tmp_path):
    data = ["--data-dir", str(tmp_path)]
    added = atelier("users", *data, "add", "carol", "--password-stdin", stdin="long-enough-pw\n")
    assert added.returncode == 0, added.stderr
    again = atelier("users", *data, "add", "carol", "--password-stdin", stdin="long-enough-pw\n")
    assert again.returncode == 2 and "already exists" in again.stderr
    short = atelier("users", *data, "add", "dave", "--password-stdin", stdin="short\n")
    assert short.returncode == 2 and "at least 8 characters" in short.stderr
    bad_name = atelier("users", *data, "add", "no spaces", "--password-stdin", stdin="x" * 10)
    assert bad_name.returncode == 2 and "User names" in bad_name.stderr
    listed = atelier("users", *data, "list")
    assert listed.stdout.split() == ["carol", "user"]
    assert atelier("users", *data, "remove", "carol").returncode == 0
    missing = atelier("users", *data, "remove", "carol")
    assert missing.returncode == 2 and "No user named 'carol'" in missing.stderr


def test_doctor_reports_without_secrets(tmp_path, fake_openai):
    secret = "sk-very-secret-value-123"
    result = atelier(
        "doctor",
        "--data-dir",
        str(tmp_path),
        env={"OPENAI_API_KEY": secret, "OPENAI_BASE_URL": fake_openai.base_url},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert secret not in result.stdout + result.stderr
    assert "database" in result.stdout and "reachable" in result.stdout
    assert f"{fake_openai.base_url} reachable" in result.stdout
    assert "replicate" in result.stdout and "REPLICATE_API_TOKEN" in result.stdout


def test_doctor_flags_unreachable_llm(tmp_path):
    result = atelier(
        "doctor",
        "--data-dir",
        str(tmp_path),
        env={"ATELIER_LLM_BASE_URL": "http://127.0.0.1:9/v1"},
    )
    assert "unreachable" in result.stdout


def test_run_refuses_a_price_file_with_a_bad_row(tmp_path):
    prices = tmp_path / "my-prices.toml"
    prices.write_text(
        '[[price]]\nbackend = "openai"\nmodel = "gpt-image-1.5"\nunit = "image"\n'
        'amount_usd = -0.04\nsource = "me"\ndate = "2026-11-22"\n'
    )
    result = atelier(
        "run", "--data-dir", str(tmp_path / "d"), env={"ATELIER_PRICES_FILE": str(prices)}
    )
    assert result.returncode == 2, result.stderr
    assert "my-prices.toml" in result.stderr and "line 1" in result.stderr
    assert "amount_usd" in result.stderr
