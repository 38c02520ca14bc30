"""The browser harness itself: the system's Chromium starts headless and reaches the gateway it runs against."""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import Browser, Page

from tests.browser.conftest import Screenshots
from tests.browser.gateway_api import GatewayApi
from tests.system import RunningSystem

pytestmark = pytest.mark.browser


def test_headless_chromium_reaches_the_gateway(page: Page, browser: Browser, browser_system: RunningSystem) -> None:
    assert browser.version.split(".")[0].isdigit()
    response = page.goto("/healthz")
    assert response is not None and response.status == 200
    assert json.loads(page.locator("body").inner_text()) == {"status": "ok"}


def test_the_dev_sign_in_is_on_offer(page: Page, api: GatewayApi, shots: Screenshots) -> None:
    """The gateway runs in JWT mode with dev sign-in, which the page's sign-in form relies on (with the key a
    sign-in link gives)."""
    response = page.request.get("/auth/config")
    assert response.status == 200
    config = response.json()
    assert config["mode"] == "jwt" and config["dev_sign_in"] is True
    code = api.sign_in_link().partition("=")[2]
    linked = page.request.post("/auth/dev-link", data={"code": code})
    assert linked.status == 200, linked.text()
    key = linked.json()["key"]
    minted = page.request.post("/auth/dev-token", data={"user": "harness", "team": "harness-team", "key": key})
    assert minted.status == 200, minted.text()
    assert minted.json()["user"] == "harness"
    page.goto("/openapi.json")
    assert "/chatkit" in json.loads(page.locator("body").inner_text())["paths"]
    shots.take(page, "openapi")
