"""Citations and errors (issue 32, point 4): sources follow the answer, its [n] markers and its chips open the
document cited at its passage (an uploaded file or a knowledge-base document); errors say what a person can do;
the ChatKit JS example says at once that it cannot load ChatKit, styled, with no form that cannot work."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from playwright.sync_api import Page, Route, expect

from tests.browser.chat_page import ChatPage
from tests.browser.conftest import OpenPage, Screenshots
from tests.browser.gateway_api import GatewayApi, new_identity
from tests.browser.test_chat_page import HANDOVER_FIRST, HANDOVER_QUESTION, handbook, load_handbooks
from tests.system import RunningSystem

pytestmark = pytest.mark.browser

CHATKIT_JS_FAILS_WITHIN_MS = 2000

# When the ChatKit JS page's status first said it failed, by the page's clock from navigation start.
_RECORD_FAILURE = """
new MutationObserver((_, observer) => {
  const status = document.querySelector('[data-testid="chatkit-js-status"]');
  if (status && status.dataset.state === "failed") {
    window.__failedAt = performance.now();
    observer.disconnect();
  }
}).observe(document, { subtree: true, childList: true, attributes: true });
"""


def test_sources_follow_the_answer_and_open_the_document_at_its_passage(
    page: Page, api: GatewayApi, shots: Screenshots
) -> None:
    who = new_identity("citer")
    load_handbooks(api, who)
    chat = ChatPage(page, api.sign_in_link)
    chat.sign_in(who)
    reply = chat.ask(HANDOVER_QUESTION, assistant_replies=1)

    # The sources card comes after the answer it backs.
    sources = chat.widgets("Card").filter(has_text="Sources")
    expect(sources).to_have_count(1)
    after: bool = reply.evaluate(
        "(reply, card) => Boolean(reply.compareDocumentPosition(card) & Node.DOCUMENT_POSITION_FOLLOWING)",
        sources.element_handle(),
    )
    assert after, "the sources card is shown above the answer"

    # [1] in the text is a control that opens its source at the cited passage; Esc closes it, back to the marker.
    marker = reply.get_by_test_id("citation-ref").first
    expect(marker).to_have_text("[1]")
    marker.click()
    viewer = chat.by("document-viewer")
    expect(viewer).to_be_visible()
    expect(viewer.locator("#document-title")).to_contain_text("Night shift handbook")
    cited = viewer.get_by_test_id("cited-passage")
    expect(cited).to_contain_text(HANDOVER_FIRST)
    expect(cited).to_be_in_viewport()
    expect(cited).to_be_focused()
    shots.take(page, "document")
    page.keyboard.press("Escape")
    expect(viewer).to_be_hidden()
    expect(marker).to_be_focused()

    # The chips are buttons to the same documents; an uploaded file can be downloaded as it was uploaded.
    chip = chat.by("citation").first
    assert chip.evaluate("node => node.tagName") == "BUTTON"
    chip.click()
    expect(viewer).to_be_visible()
    with page.expect_download() as download:
        viewer.get_by_test_id("document-download").click()
    assert Path(download.value.path()).read_bytes() in {handbook(volume) for volume in (1, 2, 3)}
    viewer.locator("#document-close").click()
    expect(viewer).to_be_hidden()

    # The sources card's own buttons open them too.
    sources.get_by_role("button", name="Open").first.click()
    expect(viewer.get_by_test_id("cited-passage")).to_contain_text(HANDOVER_FIRST)
    page.keyboard.press("Escape")


def test_a_knowledge_base_document_opens_at_its_passage(
    page: Page, api: GatewayApi, browser_system: RunningSystem, tmp_path: Path
) -> None:
    who = new_identity("reader")
    guide = tmp_path / "heron-guide.md"
    guide.write_text(
        "# Heron station guide\n\n## Arrival\n\nSign the visitor book at the gate.\n\n"
        "## Tide alarms\n\nWhen the tide alarm rings twice, everyone walks to the dune hut "
        "and waits for the all-clear.\n"
    )
    subprocess.run(
        [sys.executable, "-m", "kitrelay.services.cli", "kb", "add", str(guide), "--team", who.team_id],
        env=browser_system.env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    chat = ChatPage(page, api.sign_in_link)
    chat.sign_in(who)
    chat.ask("what does the heron station guide say about tide alarms?", assistant_replies=1)
    chat.by("citation").filter(has_text="Heron station guide").click()
    viewer = chat.by("document-viewer")
    expect(viewer.get_by_test_id("cited-passage")).to_contain_text("tide alarm rings twice")
    expect(viewer).to_contain_text("Knowledge base")
    # Loaded by an operator, not uploaded: there is no file to download.
    expect(viewer.get_by_test_id("document-download")).to_be_hidden()


def test_errors_say_what_went_wrong_in_words(page: Page, api: GatewayApi, tmp_path: Path, shots: Screenshots) -> None:
    chat = ChatPage(page, api.sign_in_link)
    chat.sign_in(new_identity("unlucky"))
    banner = chat.by("error-banner")

    broken = tmp_path / "minutes.pdf"
    broken.write_bytes(b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nstream\nx")
    chat.by("composer-attach").set_input_files(broken)
    expect(chat.by("attachment-chip")).to_have_attribute("data-state", "error")
    expect(banner).to_contain_text("minutes.pdf is not a readable PDF")
    expect(banner).to_contain_text("Try saving or exporting it as a PDF again")
    expect(banner).not_to_contain_text(re.compile(r"Pdf\w*Error|Stream has ended"))
    shots.take(page, "bad-pdf")
    chat.by("attachment-chip").get_by_role("button").click()

    picture = tmp_path / "diagram.png"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    chat.by("composer-attach").set_input_files(picture)
    expect(banner).to_contain_text("diagram.png cannot be attached: it is a PNG image")
    expect(banner).to_contain_text("Markdown")
    expect(banner).not_to_contain_text(re.compile(r"image/png|text/markdown|application/pdf"))
    chat.by("attachment-chip").get_by_role("button").click()

    # A proxy in front of kitrelay answering 502 with its own HTML page.
    def bad_gateway(route: Route) -> None:
        route.fulfill(status=502, content_type="text/html", body="<html><body><h1>502 Bad Gateway</h1></body></html>")

    page.route("**/chatkit", bad_gateway)
    chat.send("hello")
    expect(banner).to_contain_text("kitrelay cannot be reached right now (502 Bad Gateway")
    expect(banner).to_contain_text("Try again in a moment")
    expect(chat.composer).to_have_value("hello")  # nothing typed is lost
    shots.take(page, "bad-gateway")


def test_the_chatkit_js_page_fails_fast_styled_and_offers_no_form_that_cannot_work(
    open_page: OpenPage, api: GatewayApi, shots: Screenshots
) -> None:
    page = open_page()
    # This browser opened a sign-in link (so the page could offer its form), and OpenAI's CDN is out of reach.
    page.goto(api.sign_in_link())
    expect(page.get_by_test_id("signin-user")).to_be_visible()
    page.route("https://cdn.platform.openai.com/**", lambda route: route.abort("internetdisconnected"))
    page.add_init_script(_RECORD_FAILURE)

    page.goto("/chatkit-js")

    status = page.get_by_test_id("chatkit-js-status")
    expect(status).to_have_attribute("data-state", "failed")
    failed_at: float = page.evaluate("window.__failedAt")
    assert failed_at < CHATKIT_JS_FAILS_WITHIN_MS, f"the failure was shown after {failed_at:.0f} ms"
    expect(status).to_contain_text("could not be loaded")
    expect(status.get_by_role("link", name="open it")).to_have_attribute("href", "/")
    expect(page.get_by_test_id("chatkit-js-signin")).to_be_hidden()
    expect(page.locator("form:visible, input:visible")).to_have_count(0)
    # Styled like the chat page: its font, a bordered message box, a brand bar.
    style = status.evaluate(
        "node => { const s = getComputedStyle(node); return [s.borderTopStyle, s.borderTopLeftRadius, "
        "getComputedStyle(document.body).fontFamily]; }"
    )
    assert style[0] == "solid" and style[1] != "0px", style
    assert "system-ui" in style[2] or "sans-serif" in style[2], style
    shots.take(page, "chatkit-js-offline")
