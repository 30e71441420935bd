"""/docs (Swagger UI) and /redoc (ReDoc) with their scripts, stylesheet and icon served by this service, from the
installed ``fastapi-offline`` package (swagger-ui-dist 5 and redoc 2 standalone builds, ~2.8 MB): they work on hosts
without internet access (HPC login nodes, air-gapped labs), and their pages load nothing from another origin.

    /docs/assets/swagger-ui-bundle.js   /docs/assets/swagger-ui.css   /docs/assets/redoc.standalone.js
    /docs/assets/favicon.png

The pages' Content-Security-Policies (``service.api.security``) allow scripts and styles from 'self' only (plus the
Swagger page's one inline script, by hash); ReDoc also needs web workers from blob: URLs for its search.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
ASSETS_URL = "/docs/assets"
ASSETS_DIR = Path(str(files("fastapi_offline") / "static"))
ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")


def install_docs(app: FastAPI) -> None:
    """Mount the assets and add the two pages (the app is created with docs_url=None, redoc_url=None)."""
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS_DIR), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get(DOCS_URL, include_in_schema=False, response_class=HTMLResponse)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path") or ""
        return get_swagger_ui_html(openapi_url=root + openapi_url, title=f"{app.title} — API documentation",
                                   swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
                                   swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png")

    @app.get(REDOC_URL, include_in_schema=False, response_class=HTMLResponse)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path") or ""
        return get_redoc_html(openapi_url=root + openapi_url, title=f"{app.title} — API reference",
                              redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
                              redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png", with_google_fonts=False)
