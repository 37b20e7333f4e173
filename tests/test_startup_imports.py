"""`atelier run` starts without the heavy libraries: they are imported on first use.

Start-up time is mostly imports (benchmarks/startup.py measures it); the model clients
(langchain_openai, openai, replicate), numpy/scipy (quality checks), plotly (/cost charts)
and the local extra (torch, diffusers, transformers) are each imported by the code that
needs them, the first time it runs. So is the chat itself (the agent, every tool,
langchain's messages): on the first chat, not while the first page waits. This builds
the app exactly as `atelier run` does (`create_app`, then its start-up: migrations, the
first account) with every hosted backend configured, in a fresh interpreter, and looks
at what got imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = (
    "langchain_openai",
    "openai",
    "replicate",
    "numpy",
    "scipy",
    "plotly",
    "torch",
    "diffusers",
    "transformers",
    "langchain_core",
)
# Our own modules that only a chat needs (chat_app/handlers.py imports them on first use).
FIRST_CHAT = (
    "chat_app.turn",
    "chat_app.commands",
    "chat_app.agent",
    "chat_app.tool_runner",
    "chat_app.conversation",
    "tools.registry",
)

_START_THE_APP = """
import asyncio, json, sys
from pathlib import Path
from chat_app.server import create_app
from chat_app.settings import load_settings

app = create_app(load_settings(data_dir=Path(sys.argv[1])), public_origins=["http://127.0.0.1:1"])

async def start_and_stop():
    async with app.router.lifespan_context(app):
        pass

asyncio.run(start_and_stop())
print(json.dumps(sorted(sys.modules)))
"""


def test_starting_the_app_imports_no_heavy_library(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "ATELIER_", "REPLICATE_", "CHAINLIT_"))
    }
    env.update(
        {
            # Every hosted backend configured (nothing is contacted at start-up).
            "OPENAI_API_KEY": "sk-test-not-a-key",
            "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
            "REPLICATE_API_TOKEN": "r8_test-not-a-token",
            "REPLICATE_BASE_URL": "http://127.0.0.1:9",
            "ATELIER_ADMIN_PASSWORD": "admin-password-for-tests",
            "HF_HUB_OFFLINE": "1",
        }
    )
    done = subprocess.run(
        [sys.executable, "-c", _START_THE_APP, str(tmp_path / "data")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    imported = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert "chainlit" in imported  # the app really was built
    assert "chat_app.runtime" in imported
    packages = {name.partition(".")[0] for name in imported}
    assert not packages & set(HEAVY), sorted(packages & set(HEAVY))
    assert not imported & set(FIRST_CHAT), sorted(imported & set(FIRST_CHAT))


def test_the_check_names_known_without_numpy_match_the_checks() -> None:
    # image_scoring names the checks itself so that importing it does not load
    # quality_rules (numpy, scipy); the two lists must stay the same.
    from pipelines.scoring import image_scoring, quality_rules

    assert image_scoring.CHECKS == quality_rules.CHECKS
