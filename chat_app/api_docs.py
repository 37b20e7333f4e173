"""The API's OpenAPI schema (/api/openapi.json) and a page to read it (/api/docs).

The app itself turns FastAPI's schema and docs off (chat_app/server.py): its other
routes are the chat's own, not an API. Here the schema covers only the API's routes
(/v1 and /api/v1), with the bearer token as their security scheme.

The page is three small files of this package (chat_app/api_docs_assets/), not Swagger
UI from a CDN: many installs have no internet, and the app's Content-Security-Policy
(chat_app/security_headers.py) allows scripts and styles from the app's own origin
only, which these are. The script renders with textContent, never innerHTML.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse

router = APIRouter(include_in_schema=False)

ASSETS = Path(__file__).with_name("api_docs_assets")
_FILES = {"docs.js": "text/javascript", "docs.css": "text/css"}
API_PREFIXES = ("/v1/", "/api/v1/")
_REF = "#/components/schemas/"
DESCRIPTION = (
    "OpenAI-compatible image endpoints under /v1 (point the openai SDK's base_url at "
    "<this server>/v1) and a jobs API under /api/v1 for long work: images, batches, "
    "videos and LoRA trainings, with progress as server-sent events, cancel, and "
    "signed webhooks. Every call takes `Authorization: Bearer <token>` (make one with "
    "/tokens in the chat or `atelier tokens add`). Errors use OpenAI's envelope: "
    '{"error": {"message", "type", "param", "code"}}.'
)


def schema_for(routes: list[Any], version: str) -> dict[str, Any]:
    """FastAPI's schema of the app's routes, cut down to the API's paths and the
    component schemas they use (FastAPI walks routers included in routers itself)."""
    schema = get_openapi(
        title="Atelier API", version=version, description=DESCRIPTION, routes=routes
    )
    schema["paths"] = {
        path: item
        for path, item in schema.get("paths", {}).items()
        if path.startswith(API_PREFIXES)
    }
    components = schema.setdefault("components", {})
    used = _referenced(schema["paths"], components.get("schemas", {}))
    components["schemas"] = {
        name: value for name, value in components.get("schemas", {}).items() if name in used
    }
    components.setdefault("securitySchemes", {})["bearer"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "An Atelier API token (atl_…).",
    }
    schema["security"] = [{"bearer": []}]
    return schema


def _referenced(paths: dict[str, Any], schemas: dict[str, Any]) -> set[str]:
    """Names of the component schemas `paths` use, directly or through each other."""
    used: set[str] = set()
    pending = [paths]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith(_REF):
                name = ref[len(_REF) :]
                if name not in used:
                    used.add(name)
                    pending.append(schemas.get(name, {}))
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return used


@router.get("/api/openapi.json")
async def openapi(request: Request) -> JSONResponse:
    cached = getattr(request.app.state, "api_openapi", None)
    if cached is None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            release = version("atelier")
        except PackageNotFoundError:
            release = "dev"
        cached = schema_for(request.app.routes, release)
        request.app.state.api_openapi = cached
    return JSONResponse(cached)


@router.get("/api/docs")
async def docs() -> FileResponse:
    return FileResponse(ASSETS / "index.html", media_type="text/html")


@router.get("/api/docs/{name}")
async def asset(name: str) -> FileResponse:
    media_type = _FILES.get(name)
    if media_type is None:
        from fastapi import HTTPException

        raise HTTPException(404)
    return FileResponse(ASSETS / name, media_type=media_type)
