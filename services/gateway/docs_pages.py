"""Swagger UI (/docs) and ReDoc (/redoc) served from files installed with the gateway, never from a CDN:
the pages work on an offline machine or an air-gapped cluster.

The script, stylesheet and favicon come from the `fastapi-offline` package's static folder (Swagger UI and
ReDoc as released, MIT/Apache-2.0); only those files are used, not its FastAPI subclass.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_PATH = "/docs-assets"
ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"
REQUIRED_ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")


def add_docs_pages(app: FastAPI) -> None:
    """Mount the local assets and the two pages (FastAPI's own must be disabled: docs_url=None, redoc_url=None)."""
    missing = [name for name in REQUIRED_ASSETS if not (ASSETS_DIR / name).is_file()]
    if missing:
        raise RuntimeError(f"the API docs assets are missing from {ASSETS_DIR}: {missing}; reinstall fastapi-offline")
    app.mount(ASSETS_PATH, StaticFiles(directory=ASSETS_DIR), name="docs-assets")

    def assets(request: Request) -> str:
        return request.scope.get("root_path", "").rstrip("/") + ASSETS_PATH

    def openapi_url(request: Request) -> str:
        return request.scope.get("root_path", "").rstrip("/") + (app.openapi_url or "/openapi.json")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        base = assets(request)
        return get_swagger_ui_html(openapi_url=openapi_url(request), title=f"{app.title} - API",
                                   swagger_js_url=f"{base}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{base}/swagger-ui.css", swagger_favicon_url=f"{base}/favicon.png")

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        base = assets(request)
        return get_redoc_html(openapi_url=openapi_url(request), title=f"{app.title} - API",
                              redoc_js_url=f"{base}/redoc.standalone.js", redoc_favicon_url=f"{base}/favicon.png",
                              with_google_fonts=False)
