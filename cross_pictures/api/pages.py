"""Pages for people: the try-it page at `/`, and /docs + /redoc with assets served locally.

FastAPI's own /docs and /redoc load Swagger UI and ReDoc from a public CDN, so on an air-gapped
network they are blank. Here both load the copies bundled by the `fastapi-offline` package, and
the page at `/` uses only files shipped in `cross_pictures/static`.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_URL = "/static"
DOCS_ASSETS_URL = "/static-docs"
# The browser enforces what the tests check: the page loads nothing from anywhere else.
PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
# Swagger UI and ReDoc need inline styles and scripts, but nothing from another host. ReDoc
# always shows Redocly's logo from cdn.redoc.ly; this stops the browser from even asking.
DOCS_CSP = "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'"
# Swagger UI's default validator badge would call validator.swagger.io.
SWAGGER_UI_PARAMETERS: dict[str, object] = {"validatorUrl": None}

router = APIRouter(include_in_schema=False)
router.mount(STATIC_URL, StaticFiles(packages=[("cross_pictures", "static")]), name="static")
router.mount(
    DOCS_ASSETS_URL,
    StaticFiles(packages=[("fastapi_offline", "static")]),
    name="static-docs",
)


@cache
def _index_html() -> str:
    return files("cross_pictures").joinpath("static", "index.html").read_text(encoding="utf-8")


def _root(request: Request) -> str:
    root: str = request.scope.get("root_path", "")
    return root.rstrip("/")


@router.get("/", response_class=HTMLResponse)
async def index() -> HTMLResponse:
    """A page to classify a photo from the browser."""
    return HTMLResponse(_index_html(), headers={"Content-Security-Policy": PAGE_CSP})


@router.get("/docs", response_class=HTMLResponse)
async def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI, with its JavaScript and CSS from the installed environment."""
    root, app = _root(request), request.app
    html = get_swagger_ui_html(
        openapi_url=f"{root}{app.openapi_url}",
        title=f"{app.title} - Swagger UI",
        swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
        oauth2_redirect_url=None,
        swagger_ui_parameters={**SWAGGER_UI_PARAMETERS, **(app.swagger_ui_parameters or {})},
    )
    html.headers["Content-Security-Policy"] = DOCS_CSP
    return html


@router.get("/redoc", response_class=HTMLResponse)
async def redoc(request: Request) -> HTMLResponse:
    """ReDoc, with its JavaScript from the installed environment and no web fonts."""
    root, app = _root(request), request.app
    html = get_redoc_html(
        openapi_url=f"{root}{app.openapi_url}",
        title=f"{app.title} - ReDoc",
        redoc_js_url=f"{root}{DOCS_ASSETS_URL}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
        with_google_fonts=False,
    )
    html.headers["Content-Security-Policy"] = DOCS_CSP
    return html
