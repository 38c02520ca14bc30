"""Several things at once (issue 32, point 3): a message shows typing dots at once, until its reply shows anything;
each thread has its own reply state (Stop, Enter, the sidebar's writing marks), and a message can be sent in one
thread while another's reply is being written."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from kitrelay.services.turn_log import STOPPED_MARK
from tests.browser.chat_page import ChatPage
from tests.browser.conftest import Screenshots
from tests.browser.gateway_api import GatewayApi, new_identity
from tests.browser.test_chat_page import HANDOVER_QUESTION, load_handbooks

pytestmark = pytest.mark.browser

TYPING_WITHIN_MS = 100

# Sends the message in the composer and measures, by the page's clock, how long until the typing dots show (-1:
# not within 3 s). It then watches every frame until a reply shows: a frame with neither the dots, nor the
# progress line, nor an assistant item, is a gap in which the page showed only the user's bubble.
_SEND_AND_TIME_TYPING = """() => new Promise((resolve) => {
  const typing = () => document.querySelector('[data-testid="typing-indicator"]');
  const visible = (node) => Boolean(node && !node.hidden && node.getClientRects().length);
  const replying = () => visible(document.querySelector('[data-testid="progress"]'))
    || document.querySelector(
      '[data-testid="messages"] [data-role="assistant"], [data-testid="messages"] .item-widget');
  window.__typingGaps = 0;
  window.__typingWatch = true;
  const watch = () => {
    if (!window.__typingWatch) return;
    if (!visible(typing()) && !replying()) window.__typingGaps += 1;
    if (replying() && !visible(typing())) { window.__typingWatch = false; return; }
    requestAnimationFrame(watch);
  };
  const start = performance.now();
  document.getElementById("composer-send").click();
  const wait = () => {
    if (visible(typing())) { resolve(performance.now() - start); requestAnimationFrame(watch); return; }
    if (performance.now() - start > 3000) { resolve(-1); return; }
    requestAnimationFrame(wait);
  };
  wait();
})"""


def test_typing_dots_show_at_once_until_the_reply_shows(page: Page, api: GatewayApi, shots: Screenshots) -> None:
    who = new_identity("waiter")
    load_handbooks(api, who)
    chat = ChatPage(page, api.sign_in_link)
    chat.sign_in(who)
    chat.composer.fill(HANDOVER_QUESTION)

    shown_after_ms: float = page.evaluate(_SEND_AND_TIME_TYPING)

    assert 0 <= shown_after_ms < TYPING_WITHIN_MS, f"typing dots after {shown_after_ms:.0f} ms (-1: never)"
    shots.take(page, "typing")
    typing = chat.by("typing-indicator")
    # Named for a screen reader (it may be gone already: the reply can start any moment now).
    expect(typing.locator('[role="img"]')).to_have_attribute("aria-label", "kitrelay is writing")
    chat.wait_streaming_text()
    expect(typing).to_be_hidden()
    page.wait_for_function("() => window.__typingWatch === false")
    assert page.evaluate("window.__typingGaps") == 0, "frames with only the user's bubble before the reply showed"
    chat.finish_turn(assistant_replies=1)
    expect(typing).to_be_hidden()


def test_each_thread_has_its_own_reply(page: Page, api: GatewayApi, shots: Screenshots) -> None:
    who = new_identity("juggler")
    load_handbooks(api, who)
    chat = ChatPage(page, api.sign_in_link)
    chat.sign_in(who)
    chat.ask("hello", assistant_replies=1)
    quiet = chat.open_thread_id()

    # A long reply in a new thread, then the quiet thread opened while it is written.
    chat.by("new-thread").click()
    chat.send(HANDOVER_QUESTION)
    chat.wait_streaming_text()
    busy = chat.open_thread_id()
    chat.thread_items().and_(page.locator(f'[data-thread-id="{quiet}"]')).click()
    expect(chat.messages("user")).to_have_count(1)

    # This thread is idle: no Stop, Send is there, and the sidebar marks the other one as writing.
    expect(chat.body).to_have_attribute("data-turn-state", "idle")
    expect(chat.by("composer-stop")).to_be_hidden()
    expect(chat.by("composer-send")).to_be_visible()
    busy_row = chat.thread_items().and_(page.locator(f'[data-thread-id="{busy}"]'))
    expect(busy_row).to_have_attribute("data-writing", "true")
    expect(busy_row.get_by_test_id("thread-writing")).to_be_visible()
    expect(chat.thread_items().and_(page.locator(f'[data-thread-id="{quiet}"]'))).to_have_attribute(
        "data-writing", "false"
    )
    shots.take(page, "other-thread-writing")

    # A message sent here is answered here, while the other reply is still being written.
    chat.send("hello again", press_enter=True)
    expect(chat.messages("user")).to_have_count(2)
    chat.finish_turn(assistant_replies=2)
    expect(busy_row).to_have_attribute("data-writing", "true")

    # Back in the busy thread: its reply goes on to its end, not stopped by anything done elsewhere.
    busy_row.click()
    reply = chat.finish_turn(assistant_replies=1)
    expect(reply).not_to_contain_text("Stopped.")
    expect(busy_row).to_have_attribute("data-writing", "false")
    saved = api.assistant_texts(who, busy)
    assert len(saved) == 1 and not saved[0].endswith(STOPPED_MARK), saved


def test_stop_and_enter_act_on_the_open_thread_only(page: Page, api: GatewayApi, shots: Screenshots) -> None:
    who = new_identity("stopper")
    load_handbooks(api, who)
    chat = ChatPage(page, api.sign_in_link)
    chat.sign_in(who)
    chat.send(HANDOVER_QUESTION)
    chat.wait_streaming_text()
    first = chat.open_thread_id()

    chat.by("new-thread").click()
    chat.send(HANDOVER_QUESTION)
    chat.wait_streaming_text()
    second = chat.open_thread_id()
    assert second != first
    expect(chat.by("composer-stop")).to_be_visible()

    # Enter while this thread's reply is written does nothing: the text stays for later.
    chat.composer.fill("not yet")
    chat.composer.press("Enter")
    expect(chat.composer).to_have_value("not yet")
    expect(chat.messages("user")).to_have_count(1)

    # Stop stops this thread's reply, and gives the keyboard back to the message box.
    chat.by("composer-stop").click()
    stopped = chat.finish_turn(assistant_replies=1)
    expect(stopped).to_contain_text("Stopped.")
    expect(chat.composer).to_be_focused()
    shots.take(page, "stopped-here")

    # The first thread's reply was not stopped: it ends whole.
    first_row = chat.thread_items().and_(page.locator(f'[data-thread-id="{first}"]'))
    first_row.click()
    reply = chat.finish_turn(assistant_replies=1)
    expect(reply).to_contain_text("See also")
    expect(reply).not_to_contain_text("Stopped.")
    [first_answer] = api.assistant_texts(who, first)
    [second_answer] = api.assistant_texts(who, second)
    assert not first_answer.endswith(STOPPED_MARK) and second_answer.endswith(STOPPED_MARK)
