"""The page at `/`, /docs and /redoc in a real headless Chromium, with the network cut to localhost.

Every request to a host other than 127.0.0.1/localhost is aborted and recorded, and each test
asserts none was attempted: what passes here works on an air-gapped network.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    FilePayload,
    Page,
    Route,
    ViewportSize,
    expect,
    sync_playwright,
)

from tests.conftest import ROOT
from tests.images import PHOTOS, png_declaring_size
from tests.server import Server

pytestmark = [pytest.mark.browser, pytest.mark.model, pytest.mark.slow]

# Debian's Chromium (Playwright's own browser download needs the internet); CHROMIUM overrides.
CHROMIUM = Path(os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
ZEBRA = PHOTOS / "n02391049_zebra.JPEG"
SCREENSHOTS = ROOT / "test-output" / "screenshots"
README_SCREENSHOT = ROOT / "docs" / "page.png"
DESKTOP: ViewportSize = {"width": 1000, "height": 700}
PHONE: ViewportSize = {"width": 375, "height": 740}
NOT_A_PHOTO: FilePayload = {
    "name": "photo.jpg",
    "mimeType": "image/jpeg",
    "buffer": b"just some text\n" * 8,
}
TIMEOUT_MS = 30_000  # the first real inference on a busy 2-core machine can be slow


@dataclass
class Tab:
    """A page whose requests to other hosts are aborted and recorded, and its script errors."""

    page: Page
    blocked: list[str] = field(default_factory=list)
    script_errors: list[str] = field(default_factory=list)

    def assert_offline(self) -> None:
        assert self.blocked == [], "the page tried to reach other hosts"
        assert self.script_errors == []

    def screenshot(self, name: str, *, full_page: bool = False) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / name
        self.page.screenshot(path=path, full_page=full_page)
        return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.is_file():
        message = "install Chromium: apt-get install chromium (or set CHROMIUM to its path)"
        if os.environ.get("CROSS_PICTURES_REQUIRE_BROWSER") == "1":
            pytest.fail(message)  # CI installs it: a skip there would hide the browser tests
        pytest.skip(message)
    if not ZEBRA.is_file():
        pytest.skip(f"{ZEBRA} is missing: the dev photos live in ../shared/photos")
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def open_tab(browser: Browser, viewport: ViewportSize) -> Tab:
    context = browser.new_context(viewport=viewport)
    context.set_default_timeout(TIMEOUT_MS)
    tab = Tab(context.new_page())

    def guard(route: Route) -> None:
        if urlsplit(route.request.url).hostname in LOCAL_HOSTS:
            route.continue_()
        else:
            tab.blocked.append(route.request.url)
            route.abort()

    context.route("**/*", guard)
    tab.page.on("pageerror", lambda error: tab.script_errors.append(str(error)))
    return tab


@pytest.fixture
def tab(browser: Browser) -> Iterator[Tab]:
    tab = open_tab(browser, DESKTOP)
    yield tab
    tab.page.context.close()


@pytest.fixture
def phone(browser: Browser) -> Iterator[Tab]:
    tab = open_tab(browser, PHONE)
    yield tab
    tab.page.context.close()


def top_label(page: Page) -> str:
    return page.locator("#predictions li").first.locator(".bar-label").inner_text()


def scroll_width(page: Page) -> int:
    width: int = page.evaluate("document.scrollingElement.scrollWidth")
    return width


# --- /docs and /redoc ---------------------------------------------------------------------


def test_docs_render_every_operation_offline(tab: Tab, live_server: Server) -> None:
    page = tab.page
    page.goto(f"{live_server.url}/docs")

    for path in ("/health", "/ready", "/infer", "/infer/batch"):
        expect(page.locator(f".opblock-summary-path[data-path='{path}']")).to_be_visible()
    tab.screenshot("docs.png")
    tab.assert_offline()


def test_docs_show_every_status_model_and_example_of_infer(tab: Tab, live_server: Server) -> None:
    page = tab.page
    page.goto(f"{live_server.url}/docs")
    operation = page.locator("#operations-inference-infer_infer_post")
    operation.locator(".opblock-summary").click()

    responses = operation.locator(".responses-table tr.response")
    expect(responses.first).to_be_visible()
    codes = responses.evaluate_all("rows => rows.map(row => row.dataset.code)")
    assert set(codes) >= {"200", "400", "413", "415", "422", "503"}
    expect(responses.filter(has_text="tiger cat").first).to_be_visible()  # 200 example
    expect(operation.locator("tr.response[data-code='413']")).to_contain_text("MAX_UPLOAD_BYTES")
    expect(operation.locator("tr.response[data-code='415']")).to_contain_text("not images")
    expect(operation.locator("tr.response[data-code='400']")).to_contain_text("request_id")
    tab.screenshot("docs-infer-responses.png", full_page=True)
    tab.assert_offline()


def test_docs_try_it_out_uploads_a_photo(tab: Tab, live_server: Server) -> None:
    page = tab.page
    page.goto(f"{live_server.url}/docs")
    operation = page.locator("#operations-inference-infer_infer_post")
    operation.locator(".opblock-summary").click()
    operation.get_by_role("button", name="Try it out").click()

    file_input = operation.locator("input[type=file]")
    expect(file_input).to_have_count(1)
    file_input.set_input_files(ZEBRA)
    operation.get_by_role("button", name="Execute").click()

    live = operation.locator(".live-responses-table")
    expect(live.locator("tr.response .response-col_status")).to_have_text("200")
    expect(live.locator("tr.response .response-col_description")).to_contain_text(
        '"label": "zebra"'
    )
    live.scroll_into_view_if_needed()
    tab.screenshot("docs-try-it-out.png")
    tab.assert_offline()


def test_redoc_renders_offline(tab: Tab, live_server: Server) -> None:
    page = tab.page
    page.goto(f"{live_server.url}/redoc")

    expect(page.get_by_role("heading", name="Classify one image")).to_be_visible()
    expect(page.locator("h1").first).to_contain_text("cross_pictures")
    tab.screenshot("redoc.png")
    # ReDoc's own logo lives on cdn.redoc.ly; the page's CSP stops it before any request.
    tab.assert_offline()


# --- the page at / --------------------------------------------------------------------------


def test_page_classifies_a_photo(tab: Tab, live_server: Server) -> None:
    page = tab.page
    page.goto(f"{live_server.url}/")
    page.set_input_files("#image", ZEBRA)

    expect(page.locator("#predictions li")).to_have_count(5)  # the page asks for the top 5
    assert top_label(page) == "zebra"
    top_percent = page.locator("#predictions li").first.locator(".bar-pct").inner_text()
    assert re.fullmatch(r"\d+\.\d%", top_percent)
    assert float(top_percent[:-1]) > 90
    expect(page.locator("#model-time")).to_have_text(re.compile(r"Model time: \d+\.\d ms"))
    preview_width = page.locator("#preview").evaluate("img => img.naturalWidth")
    assert preview_width > 0
    path = tab.screenshot("page-result.png")
    if os.environ.get("UPDATE_README_SCREENSHOT") == "1":  # a test run leaves the checkout clean
        shutil.copyfile(path, README_SCREENSHOT)
    tab.assert_offline()


def test_page_shows_the_servers_error_for_a_text_file(tab: Tab, live_server: Server) -> None:
    files = {"image": (NOT_A_PHOTO["name"], NOT_A_PHOTO["buffer"], NOT_A_PHOTO["mimeType"])}
    answer = httpx.post(f"{live_server.url}/infer", files=files, timeout=30)
    assert answer.status_code in (400, 415)
    page = tab.page
    page.goto(f"{live_server.url}/")
    page.set_input_files("#image", NOT_A_PHOTO)

    error = page.locator("#result #error")
    expect(error).to_be_visible()
    expect(error.locator(".error-detail")).to_have_text(answer.json()["detail"])
    expect(error.locator(".error-title")).to_contain_text(
        "not an image" if answer.status_code == 415 else "cannot be read"
    )
    expect(page.locator("#predictions")).to_have_count(0)
    expect(page.locator("#figure")).to_be_hidden()  # a text file has no preview
    tab.screenshot("page-error.png")
    tab.assert_offline()


def test_page_says_when_an_image_is_too_large(tab: Tab, live_server: Server) -> None:
    # A tiny PNG whose header declares 20000x20000 pixels: refused from the header (413).
    bomb: FilePayload = {
        "name": "huge.png",
        "mimeType": "image/png",
        "buffer": png_declaring_size(20_000, 20_000),
    }
    page = tab.page
    page.goto(f"{live_server.url}/")
    page.set_input_files("#image", bomb)
    error = page.locator("#result #error")
    expect(error).to_be_visible()
    expect(error.locator(".error-title")).to_have_text("The image is too large.")
    expect(error.locator(".error-detail")).to_contain_text("400000000 pixels")
    expect(page.locator("#predictions")).to_have_count(0)
    tab.screenshot("page-too-large.png")
    tab.assert_offline()


def test_page_asks_again_when_top_k_changes(tab: Tab, live_server: Server) -> None:
    page = tab.page
    page.goto(f"{live_server.url}/")
    page.set_input_files("#image", ZEBRA)
    expect(page.locator("#predictions li")).to_have_count(5)

    page.select_option("#top_k", "10")

    expect(page.locator("#predictions li")).to_have_count(10)
    assert top_label(page) == "zebra"
    tab.assert_offline()


def test_page_classifies_a_dropped_photo(tab: Tab, live_server: Server) -> None:
    page = tab.page
    page.goto(f"{live_server.url}/")
    page.evaluate(
        """async (b64) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const data = new DataTransfer();
            data.items.add(new File([bytes], "zebra.jpg", { type: "image/jpeg" }));
            const drop = document.getElementById("drop");
            for (const type of ["dragenter", "dragover", "drop"]) {
                drop.dispatchEvent(
                    new DragEvent(type, { dataTransfer: data, bubbles: true, cancelable: true })
                );
            }
        }""",
        base64.b64encode(ZEBRA.read_bytes()).decode("ascii"),
    )

    expect(page.locator("#predictions li").first).to_be_visible()
    assert top_label(page) == "zebra"
    expect(page.locator("#caption")).to_have_text("zebra.jpg")
    tab.assert_offline()


def test_page_works_with_the_keyboard_only(tab: Tab, live_server: Server) -> None:
    page = tab.page
    # Playwright turns file-chooser interception on when the first listener is added; a key
    # press that races that set-up opens nothing (seen in 1 run of 4). Listen before loading.
    page.on("filechooser", lambda _: None)
    page.goto(f"{live_server.url}/")

    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "image"
    outline = page.locator("label[for=image]").evaluate("el => getComputedStyle(el).outlineStyle")
    assert outline != "none", "the focused file input shows no focus ring"
    tab.screenshot("page-keyboard-focus.png")
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    chooser.value.set_files(ZEBRA)
    expect(page.locator("#predictions li")).to_have_count(5)
    assert top_label(page) == "zebra"

    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "top_k"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "classify"
    page.keyboard.press("Enter")  # classify the same photo again
    expect(page.locator("#result")).to_have_attribute("aria-busy", "false")
    assert top_label(page) == "zebra"
    assert page.locator("#result").get_attribute("aria-live") == "polite"
    tab.assert_offline()


def test_page_fits_a_phone_screen(phone: Tab, live_server: Server) -> None:
    page = phone.page
    page.goto(f"{live_server.url}/")
    assert scroll_width(page) <= PHONE["width"]

    page.set_input_files("#image", ZEBRA)
    expect(page.locator("#predictions li")).to_have_count(5)
    assert scroll_width(page) <= PHONE["width"]
    phone.screenshot("page-phone-result.png", full_page=True)

    page.set_input_files("#image", NOT_A_PHOTO)
    expect(page.locator("#error")).to_be_visible()
    assert scroll_width(page) <= PHONE["width"]
    phone.screenshot("page-phone-error.png", full_page=True)
    phone.assert_offline()
