"""The try-it page and the offline /docs and /redoc: local assets only, every one served."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import pytest
from fastapi.testclient import TestClient

from cross_pictures.app import create_app
from cross_pictures.config import Settings
from tests.fakes import FakeClassifier

EXTERNAL = re.compile(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}", re.IGNORECASE)
ASSET_TYPES = {
    ".js": "javascript",
    ".css": "text/css",
    ".png": "image/png",
    ".svg": "image/svg",
    ".json": "application/json",
}


class _Refs(HTMLParser):
    """Every URL an HTML document refers to (src, href, action, spec-url)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.tags.append((tag, found))
        for name in ("src", "href", "action", "spec-url"):
            value = found.get(name)
            if value:
                self.urls.append(value)


def refs(html: str) -> _Refs:
    parser = _Refs()
    parser.feed(html)
    return parser


def assert_local(url: str) -> None:
    parts = urlsplit(url)
    assert not parts.scheme, f"{url} names a scheme: the page must work offline"
    assert not parts.netloc, f"{url} names another host: the page must work offline"


def assert_asset(client: TestClient, page: str, url: str) -> str:
    """Fetch an asset the page at `page` refers to and check its type; return its text."""
    response = client.get(urljoin(page, url))
    assert response.status_code == 200, url
    suffix = "." + urlsplit(url).path.rsplit(".", 1)[-1]
    assert ASSET_TYPES[suffix] in response.headers["content-type"], url
    return response.text if suffix in (".js", ".css") else ""


def test_index_is_html_with_only_local_assets(client: TestClient) -> None:
    response = client.get("/")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in response.headers["content-security-policy"]
    assert not EXTERNAL.search(response.text)
    page = refs(response.text)
    assert page.urls
    for url in page.urls:
        assert_local(url)
    for url in page.urls:
        if url.startswith("static/"):
            assert not EXTERNAL.search(assert_asset(client, "/", url)), url


def test_index_has_a_labelled_file_input_and_a_live_region(client: TestClient) -> None:
    page = refs(client.get("/").text)
    by_tag: dict[str, list[dict[str, str | None]]] = {}
    for tag, attrs in page.tags:
        by_tag.setdefault(tag, []).append(attrs)

    (file_input,) = [a for a in by_tag["input"] if a.get("type") == "file"]
    assert file_input["name"] == "image"
    assert any(label.get("for") == file_input["id"] for label in by_tag["label"])
    (select,) = by_tag["select"]
    assert any(label.get("for") == select["id"] for label in by_tag["label"])
    assert any(section.get("aria-live") == "polite" for section in by_tag["section"])
    (viewport,) = [a for a in by_tag["meta"] if a.get("name") == "viewport"]
    assert "width=device-width" in (viewport.get("content") or "")


def test_index_script_posts_the_image_field_to_infer(client: TestClient) -> None:
    script = client.get("/static/page.js").text

    assert 'body.append("image"' in script
    assert "`infer?top_k=" in script
    assert "data.detail" in script  # errors show the server's own words


@pytest.mark.parametrize(
    ("path", "assets"),
    [
        ("/docs", {"swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"}),
        ("/redoc", {"redoc.standalone.js", "favicon.png", "openapi.json"}),
    ],
)
def test_docs_pages_load_assets_from_the_package(
    client: TestClient, path: str, assets: set[str]
) -> None:
    response = client.get(path)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert not EXTERNAL.search(response.text)
    urls = refs(response.text).urls
    for url in urls:
        assert_local(url)
        assert_asset(client, path, url)
    assert {url.rsplit("/", 1)[-1] for url in urls} == assets
    assert "'/openapi.json'" in response.text or 'spec-url="/openapi.json"' in response.text


def test_swagger_ui_does_not_call_the_online_validator(client: TestClient) -> None:
    assert '"validatorUrl": null' in client.get("/docs").text


@pytest.fixture
def prefixed_client(settings: Settings, fake: FakeClassifier) -> Iterator[TestClient]:
    """The app as a proxy serving it under /prefix would call it."""
    app = create_app(settings, load_classifier=lambda _: fake)
    with TestClient(app, root_path="/prefix") as test_client:
        yield test_client


def test_docs_assets_follow_the_root_path(prefixed_client: TestClient) -> None:
    html = prefixed_client.get("/docs").text

    assert 'href="/prefix/static-docs/swagger-ui.css"' in html
    assert "url: '/prefix/openapi.json'" in html


def test_pages_stay_out_of_the_openapi_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]

    assert not {"/", "/docs", "/redoc"} & set(paths)
    assert not any(path.startswith("/static") for path in paths)


def test_the_docs_show_the_infer_upload_as_a_file_field(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/infer"]["post"]
    schema = operation["requestBody"]["content"]["multipart/form-data"]["schema"]

    assert schema["properties"]["image"] == {"type": "string", "format": "binary"}
    assert {"200", "400", "413", "415", "422", "503"} <= set(operation["responses"])
