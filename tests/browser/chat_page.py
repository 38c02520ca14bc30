"""The chat page as its user meets it, by the page's data-testid contract: sign in, send, read the replies.

Every wait is web-first (`expect(...)` retries until the page shows it). What happens faster than any poll, a
reply's streaming, is recorded inside the page by a MutationObserver installed before the page's own scripts run,
so a short reply cannot slip between two polls.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from playwright.sync_api import Locator, Page, expect

from kitrelay.shared.messages import Identity

# For every assistant message (by data-item-id): the data-streaming values it went through, in order, and the
# lengths its text had while streaming. Kept on `window`, so it starts again with every page load.
_RECORD_STREAMING = """
(() => {
  const seen = (window.__kitrelayReplies = {});
  const record = () => {
    for (const el of document.querySelectorAll('[data-testid="message"][data-role="assistant"]')) {
      const entry = (seen[el.dataset.itemId || "?"] ||= { streaming: [], lengths: [] });
      const state = el.dataset.streaming ?? null;
      if (entry.streaming.at(-1) !== state) entry.streaming.push(state);
      const length = el.textContent.trim().length;
      if (state === "true" && entry.lengths.at(-1) !== length) entry.lengths.push(length);
    }
  };
  new MutationObserver(record).observe(document, {
    subtree: true, childList: true, characterData: true, attributes: true,
  });
})();
"""


def squash(text: str) -> str:
    return " ".join(text.split())


class ChatPage:
    def __init__(self, page: Page, sign_in_link: Callable[[], str]) -> None:
        """`sign_in_link` makes a new one-time sign-in link, as `kitrelay up` prints (GatewayApi.sign_in_link)."""
        self.page = page
        self._sign_in_link = sign_in_link
        page.add_init_script(_RECORD_STREAMING)

    def by(self, test_id: str) -> Locator:
        return self.page.get_by_test_id(test_id)

    @property
    def body(self) -> Locator:
        return self.page.locator("body")

    @property
    def composer(self) -> Locator:
        return self.by("composer-input")

    def messages(self, role: str | None = None) -> Locator:
        found = self.by("messages").get_by_test_id("message")
        return found if role is None else found.and_(self.page.locator(f'[data-role="{role}"]'))

    def widgets(self, widget_type: str | None = None) -> Locator:
        found = self.by("widget")
        return found if widget_type is None else found.and_(self.page.locator(f'[data-widget-type="{widget_type}"]'))

    def thread_items(self) -> Locator:
        return self.by("thread-list").get_by_test_id("thread-item")

    def open(self) -> None:
        self.page.goto("/")

    def sign_in(self, who: Identity) -> None:
        """As a user of `kitrelay up` does: open the sign-in link it printed, pick a user and a team."""
        self.page.goto(self._sign_in_link())
        form = self.by("signin-form")
        expect(self.by("signin-user")).to_be_visible()
        expect(form).to_be_visible()
        self.by("signin-user").fill(who.user_id)
        self.by("signin-team").fill(who.team_id)
        self.by("signin-submit").click()
        self.wait_ready()
        expect(self.by("current-user")).to_contain_text(who.user_id)

    def wait_ready(self) -> None:
        expect(self.body).to_have_attribute("data-ready", "true")

    def send(self, text: str, *, press_enter: bool = False) -> None:
        self.composer.fill(text)
        if press_enter:
            self.composer.press("Enter")
        else:
            self.by("composer-send").click()

    def wait_idle(self) -> None:
        expect(self.body).to_have_attribute("data-turn-state", "idle")

    def wait_streaming_text(self) -> Locator:
        """The assistant message that is being written, once it shows some text."""
        streaming = self.messages("assistant").and_(self.page.locator('[data-streaming="true"]'))
        expect(streaming).to_have_count(1)
        expect(streaming).to_have_text(re.compile(r"\S"))
        return streaming

    def finish_turn(self, *, assistant_replies: int) -> Locator:
        """Waits until the page shows `assistant_replies` finished replies and the turn is over; the last reply."""
        replies = self.messages("assistant")
        expect(replies).to_have_count(assistant_replies)
        last = replies.last
        expect(last).to_have_attribute("data-streaming", "false")
        self.wait_idle()
        return last

    def ask(self, text: str, *, assistant_replies: int) -> Locator:
        user_messages = self.messages("user").count()
        self.send(text)
        expect(self.messages("user")).to_have_count(user_messages + 1)
        expect(self.messages("user").last).to_contain_text(text)
        return self.finish_turn(assistant_replies=assistant_replies)

    def open_thread_id(self) -> str:
        current = self.thread_items().and_(self.page.locator('[aria-current="true"]'))
        expect(current).to_have_count(1)
        thread_id = current.get_attribute("data-thread-id")
        assert thread_id, "the open thread-item has no data-thread-id"
        return thread_id

    def streaming_record(self) -> dict[str, dict[str, list[Any]]]:
        """What the in-page recorder saw of each assistant message since this page load."""
        record: dict[str, dict[str, list[Any]]] = self.page.evaluate("window.__kitrelayReplies || {}")
        return record

    def assistant_text(self) -> str:
        """The text of every assistant message, one after another."""
        return squash(" ".join(self.messages("assistant").all_inner_texts()))

    def row_struck_through(self, widget_id: str, title: str) -> bool | None:
        """Whether the widget's list row titled `title` is drawn struck through (None: no such row)."""
        result: bool | None = self.page.evaluate(_ROW_STRUCK_THROUGH, [widget_id, title])
        return result

    def wait_row_struck_through(self, widget_id: str, title: str, wanted: bool) -> None:
        # The row is redrawn when the widget is replaced, so the check looks it up afresh on every poll.
        self.page.wait_for_function(
            f"args => ({_ROW_STRUCK_THROUGH})(args) === {'true' if wanted else 'false'}", arg=[widget_id, title]
        )


# Text decoration is drawn through the children of the element it is set on, but not inherited as a computed
# value: so the title's element and its ancestors up to the row are asked.
_ROW_STRUCK_THROUGH = """([widgetId, title]) => {
  const widget = document.querySelector(`[data-testid="widget"][data-item-id="${CSS.escape(widgetId)}"]`);
  if (!widget) return null;
  for (const row of widget.querySelectorAll('[data-testid="list-item"]')) {
    const label = [...row.querySelectorAll("*")].reverse().find((el) => el.textContent.trim() === title);
    if (!label) continue;
    for (let node = label; node; node = node.parentElement) {
      if (getComputedStyle(node).textDecorationLine.includes("line-through")) return true;
      if (node === row) break;
    }
    return false;
  }
  return null;
}"""


# When the widget's row titled `title` was first seen drawn struck through (or not, `wanted`), by the page's own
# clock: installed as a requestAnimationFrame loop, so the moment is the page's, not that of a poll from the test.
_WATCH_ROW = """([widgetId, title, wanted]) => {
  const check = (__CHECK__);
  window.__rowSeenAt = null;
  const tick = () => {
    if (check([widgetId, title]) === wanted) { window.__rowSeenAt = Date.now(); return; }
    requestAnimationFrame(tick);
  };
  tick();
}""".replace("__CHECK__", _ROW_STRUCK_THROUGH)


def watch_row(page: Page, widget_id: str, title: str, *, struck: bool) -> None:
    """Start watching for the row to be drawn as wanted; `row_seen_at` reads when it was."""
    page.evaluate(_WATCH_ROW, [widget_id, title, struck])


def row_seen_at(page: Page) -> float:
    """The page clock (ms) at which the watched row was first drawn as wanted; waits for it."""
    page.wait_for_function("() => window.__rowSeenAt !== null")
    seen: float = page.evaluate("window.__rowSeenAt")
    return seen


def page_now(page: Page) -> float:
    now: float = page.evaluate("Date.now()")
    return now


def row_texts(widget: Locator) -> list[str]:
    """The widget's list rows as text, in the order shown."""
    return [squash(text) for text in widget.get_by_test_id("list-item").all_inner_texts()]
