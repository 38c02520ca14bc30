"""Fixtures of the browser tests: the whole system as processes, and Playwright driving the system's Chromium.

One system (gateway + triage, task and research workers on a migrated SQLite) and one headless Chromium serve the
whole package; each test gets fresh browser contexts. The gateway runs in JWT mode with DEV_TOKEN_SECRET, so the
page shows its dev sign-in form and every test signs in as a user of its own. The offline model writes a token
every OFFLINE_TOKEN_DELAY_MS, so a long reply lasts a few seconds: long enough to reload or stop mid-reply.

Playwright never downloads a browser here: it launches Debian's `chromium` (`make browser` installs it). The tests
skip, saying so, only when no Chromium exists at all.

Artifacts go to build/test-artifacts/browser/: the screenshots the tests take, one more of every page when its
test failed, and each page's console messages. A test fails on an uncaught page error and on any request the page
makes off this machine (the page must work with no network).
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Error,
    Page,
    Playwright,
    Route,
    expect,
    sync_playwright,
)

from kitrelay.services.devservers import is_loopback_host
from tests.browser.gateway_api import GatewayApi
from tests.system import RunningSystem, running_system

ARTIFACTS_DIR = Path(__file__).resolve().parents[2] / "build" / "test-artifacts" / "browser"
# Root in a container with no network: no sandbox (it needs user namespaces), no GPU, and none of the background
# calls home that would only wait for a network that is not there.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
# Generous: two cores are shared by five processes, a browser and whatever else runs.
TIMEOUT_MS = 15_000
VIEWPORT = {"width": 1280, "height": 860}
TOKEN_DELAY_MS = 40

# Opens a page in a new browser context: `open_page()`, or `open_page(viewport=PHONE, color_scheme="dark")`.
OpenPage = Callable[..., Page]
PHONE = {"width": 390, "height": 844}


def find_chromium() -> str | None:
    """$KITRELAY_CHROMIUM, else Debian's /usr/bin/chromium, else a `chromium` on PATH."""
    configured = os.environ.get("KITRELAY_CHROMIUM", "").strip()
    candidates = [configured] if configured else ["/usr/bin/chromium"]
    for candidate in candidates:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    if configured:
        return None
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    # Fixture finalizers run before the report of the teardown phase, so they read the call phase's outcome here.
    report = yield
    if report.when == "call":
        item.stash[_CALL_FAILED] = report.failed
    return report


_CALL_FAILED = pytest.StashKey[bool]()


@pytest.fixture(scope="package")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        where = os.environ.get("KITRELAY_CHROMIUM") or "/usr/bin/chromium or `chromium` on PATH"
        pytest.skip(f"no Chromium ({where}): `make browser` installs Debian's (apt-get install chromium)")
    return path


@pytest.fixture(scope="package")
def artifacts_dir() -> Path:
    """Emptied once per run, so every file in it comes from this run."""
    shutil.rmtree(ARTIFACTS_DIR, ignore_errors=True)
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS_DIR


@pytest.fixture(scope="package")
def dev_token_secret() -> str:
    return secrets.token_urlsafe(48)


@pytest.fixture(scope="package")
def browser_system(
    chromium: str,
    nats_url: str,
    redis_url: str,
    namespace: str,
    dev_token_secret: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningSystem]:
    """The product as `kitrelay up` runs it, with dev sign-in: a gateway and one worker of each kind."""
    workdir = tmp_path_factory.mktemp("browser")
    with running_system(
        nats_url=nats_url,
        redis_url=redis_url,
        namespace=f"{namespace}br",
        log_dir=workdir,
        extra_env={"DEV_TOKEN_SECRET": dev_token_secret, "OFFLINE_TOKEN_DELAY_MS": str(TOKEN_DELAY_MS)},
    ) as running:
        yield running


@pytest.fixture(scope="package")
def api(browser_system: RunningSystem, dev_token_secret: str) -> GatewayApi:
    return GatewayApi(browser_system.base_url, dev_token_secret)


@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    # Package scope: Playwright's own event loop is gone before the async tests of other folders start theirs.
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="package")
def browser(playwright: Playwright, chromium: str) -> Iterator[Browser]:
    launched = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
    try:
        yield launched
    finally:
        launched.close()


@dataclass
class PageWatch:
    """What one browser context saw go wrong: uncaught page errors, console errors and off-machine requests."""

    page_errors: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    off_machine: list[str] = field(default_factory=list)

    def on_console(self, message: ConsoleMessage) -> None:
        self.console.append(f"[{message.type}] {message.text}")

    def on_page_error(self, error: Error) -> None:
        self.page_errors.append(f"{error.name}: {error.message}\n{error.stack or ''}".strip())

    def route(self, route: Route) -> None:
        url = route.request.url
        host = urlsplit(url).hostname
        if url.startswith(("data:", "blob:", "about:")) or (host is not None and is_loopback_host(host)):
            route.continue_()
        else:
            self.off_machine.append(url)
            route.abort("internetdisconnected")


@pytest.fixture
def open_page(
    browser: Browser, browser_system: RunningSystem, artifacts_dir: Path, request: pytest.FixtureRequest
) -> Iterator[OpenPage]:
    """Opens pages, each in a fresh browser context (its own storage: one signed-in user each), on the gateway.

    At the end: a screenshot of every page if the test failed, the console log saved, and a failure for any
    uncaught page error or off-machine request."""
    opened: list[tuple[BrowserContext, Page, PageWatch]] = []

    def open_one(*, viewport: dict[str, int] | None = None, color_scheme: str | None = None) -> Page:
        context = browser.new_context(
            base_url=browser_system.base_url,
            viewport=viewport or VIEWPORT,  # type: ignore[arg-type]
            color_scheme=color_scheme,  # type: ignore[arg-type]
        )
        context.set_default_timeout(TIMEOUT_MS)
        watch = PageWatch()
        context.route("**/*", watch.route)
        page = context.new_page()
        page.on("console", watch.on_console)
        page.on("pageerror", watch.on_page_error)
        opened.append((context, page, watch))
        return page

    expect.set_options(timeout=TIMEOUT_MS)
    yield open_one

    name = request.node.name
    failed = request.node.stash.get(_CALL_FAILED, False)
    problems: list[str] = []
    for index, (context, page, watch) in enumerate(opened):
        suffix = f"-{index + 1}" if len(opened) > 1 else ""
        if failed and not page.is_closed():
            page.screenshot(path=artifacts_dir / f"{name}{suffix}-failed.png", full_page=True)
        (artifacts_dir / f"{name}{suffix}.console.log").write_text("\n".join(watch.console) + "\n")
        problems += [f"uncaught page error: {error}" for error in watch.page_errors]
        problems += [f"request off this machine: {url}" for url in watch.off_machine]
        context.close()
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def page(open_page: OpenPage) -> Page:
    return open_page()


class Screenshots:
    """Screenshots of a test's key moments, named after the test; `save_as` gives one a fixed name."""

    def __init__(self, directory: Path, test_name: str) -> None:
        self._directory = directory
        self._test_name = test_name

    def take(self, page: Page, moment: str) -> Path:
        return self.save_as(page, f"{self._test_name}-{moment}")

    def save_as(self, page: Page, name: str) -> Path:
        path = self._directory / f"{name}.png"
        page.screenshot(path=path)
        return path


@pytest.fixture
def shots(artifacts_dir: Path, request: pytest.FixtureRequest) -> Screenshots:
    return Screenshots(artifacts_dir, request.node.name)
