"""A reload in the middle of a reply: the page follows the running turn again and shows the text written so far at
once (not only what comes after the reload), then the whole reply exactly once, as it was saved.

The reply is a research answer: triage hands over ("Handing over…"), the research agent shows a sources widget,
then writes a long cited answer. The widget is saved (done) before the reload; the answer is not, so the page has to
rebuild it from the turn's stream, replayed from its start, without showing the saved widget twice.
"""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import Page, expect

from kitrelay.shared.messages import Identity
from tests.browser.chat_page import ChatPage, squash
from tests.browser.conftest import Screenshots
from tests.browser.gateway_api import GatewayApi, new_identity

pytestmark = pytest.mark.browser

QUESTION = "what does the tide office manual say about the gate check?"
PASSAGE = (
    "The gate check starts at the east pier when the tide turns and ends at the west lock. "
    "Each gate is opened by hand, logged with its number and the time, and closed again before the next one. "
    "A gate that sticks is reported on channel four and marked with a red tag until the fitter has seen it. "
    "The keys go back into the tide office safe and the logbook is signed by both people on the check."
)
# Enough text on screen before the reload that showing only the rest afterwards could not pass for the whole.
MIN_SHOWN_CHARS = 60

# The assistant message being written, and the turn state, read in one go (so both hold at the same moment).
_STREAMING_REPLY = """() => {
  const reply = document.querySelector(
    '[data-testid="messages"] [data-testid="message"][data-role="assistant"][data-streaming="true"]');
  return {
    state: document.body.dataset.turnState,
    id: reply ? reply.dataset.itemId : null,
    text: reply ? reply.textContent.replace(/\\s+/g, " ").trim() : null,
  };
}"""


def manual(volume: int) -> bytes:
    title = f"Tide office manual of the harbour gate crew, volume {volume}, as agreed at the spring meeting"
    return f"# {title}\n\n## Gate check\n\n{PASSAGE}\n\n## Lunch\n\nLunch is at noon.\n".encode()


def saved_thread(api: GatewayApi, who: Identity, thread_id: str) -> list[dict[str, Any]]:
    thread = api.call(who, "threads.get_by_id", {"thread_id": thread_id})
    items: list[dict[str, Any]] = thread["items"]["data"]
    return items


def test_a_reload_mid_reply_shows_the_text_so_far_at_once(page: Page, api: GatewayApi, shots: Screenshots) -> None:
    who = new_identity("reloader")
    for volume in (1, 2, 3):
        api.upload(who, f"tide-office-{volume}.md", manual(volume))
    chat = ChatPage(page, api.sign_in_link)
    chat.sign_in(who)

    chat.send(QUESTION)
    chat.wait_streaming_text()
    page.wait_for_function(f"() => (({_STREAMING_REPLY})().text || '').length >= {MIN_SHOWN_CHARS}")
    before: dict[str, Any] = page.evaluate(_STREAMING_REPLY)
    assert before["state"] == "streaming" and before["id"], before
    assert before["text"].startswith("According to"), before
    thread_id = chat.open_thread_id()
    shots.take(page, "before-reload")

    # Marks this document: the checks below must not pass on it while the reload is still under way.
    page.evaluate("window.__beforeReload = true")
    page.reload()
    page.wait_for_function("() => !window.__beforeReload")
    chat.wait_ready()

    # Still streaming, the same message already holds everything shown before the reload: checked in one
    # evaluation, so a page that only catches up once the reply is finished cannot pass.
    page.wait_for_function(
        f"""([id, text]) => {{
          const now = ({_STREAMING_REPLY})();
          return !window.__beforeReload && now.state === "streaming" && now.id === id
            && now.text !== null && now.text.startsWith(text);
        }}""",
        arg=[before["id"], before["text"]],
    )
    shots.take(page, "reattached")
    # Not rebuilt piece by piece on screen either: the first text the message showed after the reload was at
    # least as long as what had been shown before it.
    lengths = chat.streaming_record().get(before["id"], {}).get("lengths", [])
    assert lengths and lengths[0] >= len(before["text"]), f"after the reload it showed lengths {lengths}"

    reply = chat.finish_turn(assistant_replies=1)
    shots.take(page, "finished")
    assert reply.get_attribute("data-item-id") == before["id"]

    items = saved_thread(api, who, thread_id)
    answers = [item for item in items if item["type"] == "assistant_message"]
    assert len(answers) == 1, answers
    saved = squash("".join(part["text"] for part in answers[0]["content"]))
    assert answers[0]["id"] == before["id"]
    assert saved.startswith(before["text"]), (saved, before["text"])
    shown = chat.assistant_text()
    assert shown.count(saved) == 1, f"the saved reply is shown {shown.count(saved)} times: {shown!r}"
    for part in ("According to", "The gate check starts", "A gate that sticks", "See also"):
        assert shown.count(part) == 1, f"{part!r} shown {shown.count(part)} times: {shown!r}"
    # Every saved item once, and nothing else: the sources widget (saved before the reload) is not doubled.
    widgets = [item["id"] for item in items if item["type"] == "widget"]
    assert widgets, items
    expect(chat.widgets()).to_have_count(len(widgets))
    assert [chat.widgets().nth(i).get_attribute("data-item-id") for i in range(len(widgets))] == widgets
    expect(chat.messages("user")).to_have_count(1)
    expect(chat.messages("assistant")).to_have_count(1)
