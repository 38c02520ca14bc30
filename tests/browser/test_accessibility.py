"""A page anyone can use (issue 32, point 5): axe-core finds no serious or critical violation on the sign-in
screen, an empty chat, a conversation with widgets and sources, and the phone drawer, in light and dark; the phone
drawer holds the keyboard while it is open and gives it back when it closes; small text is readable (4.5:1); a
reply is announced once, when it is done, not token by token."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.browser.accessibility import assert_accessible, require_axe
from tests.browser.chat_page import ChatPage
from tests.browser.conftest import PHONE, OpenPage, Screenshots
from tests.browser.gateway_api import GatewayApi, new_identity
from tests.browser.test_chat_page import HANDOVER_QUESTION, load_handbooks

pytestmark = pytest.mark.browser

# WCAG AA for text under 18.66 px bold / 24 px.
AA_SMALL_TEXT = 4.5

# The contrast ratio of an element's text against the background it sits on (the first ancestor that paints one).
_CONTRAST = """(node) => {
  const rgb = (value) => {
    const parts = value.match(/[\\d.]+/g).map(Number);
    return { r: parts[0], g: parts[1], b: parts[2], a: parts.length > 3 ? parts[3] : 1 };
  };
  const lum = ({ r, g, b }) => {
    const channel = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b);
  };
  let back = null;
  for (let at = node; at && !back; at = at.parentElement) {
    const color = rgb(getComputedStyle(at).backgroundColor);
    if (color.a > 0.5) back = color;
  }
  back ||= { r: 255, g: 255, b: 255 };
  const fore = rgb(getComputedStyle(node).color);
  const [hi, lo] = [lum(fore), lum(back)].sort((a, b) => b - a);
  return (hi + 0.05) / (lo + 0.05);
}"""


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_axe_finds_no_serious_violation(open_page: OpenPage, api: GatewayApi, scheme: str, shots: Screenshots) -> None:
    require_axe()
    who = new_identity(f"axe-{scheme}")
    load_handbooks(api, who)

    stranger = open_page(color_scheme=scheme)
    stranger.goto("/")
    expect(stranger.get_by_test_id("signin-form")).to_be_visible()
    assert_accessible(stranger, f"the sign-in screen without a link ({scheme})")

    page = open_page(color_scheme=scheme)
    chat = ChatPage(page, api.sign_in_link)
    page.goto(api.sign_in_link())
    expect(chat.by("signin-user")).to_be_visible()
    assert_accessible(page, f"the sign-in form ({scheme})")
    chat.by("signin-user").fill(who.user_id)
    chat.by("signin-team").fill(who.team_id)
    chat.by("signin-submit").click()
    chat.wait_ready()
    assert_accessible(page, f"an empty chat ({scheme})")

    chat.ask("add task water the plants", assistant_replies=1)
    chat.ask("list my tasks", assistant_replies=2)
    chat.ask(HANDOVER_QUESTION, assistant_replies=3)
    expect(chat.widgets("Card").filter(has_text="Sources")).to_have_count(1)
    chat.messages("assistant").last.get_by_test_id("feedback-up").click()
    assert_accessible(page, f"a conversation with widgets and sources ({scheme})")
    chat.by("citation").first.click()
    expect(chat.by("document-viewer")).to_be_visible()
    assert_accessible(page, f"the document viewer ({scheme})")
    shots.take(page, f"conversation-{scheme}")

    phone = open_page(viewport=PHONE, color_scheme=scheme)
    small = ChatPage(phone, api.sign_in_link)
    small.sign_in(new_identity(f"phone-{scheme}"))
    assert_accessible(phone, f"the phone's empty chat ({scheme})")
    phone.locator("#sidebar-open").click()
    expect(phone.locator("#sidebar")).to_be_in_viewport()
    assert_accessible(phone, f"the phone drawer ({scheme})")
    shots.take(phone, f"drawer-{scheme}")


def test_the_phone_drawer_holds_the_keyboard_and_gives_it_back(
    open_page: OpenPage, api: GatewayApi, shots: Screenshots
) -> None:
    page = open_page(viewport=PHONE)
    chat = ChatPage(page, api.sign_in_link)
    chat.sign_in(new_identity("thumbs"))
    chat.ask("hello", assistant_replies=1)
    menu = page.locator("#sidebar-open")
    menu.click()
    expect(page.locator("#sidebar")).to_be_in_viewport()
    in_drawer = "() => Boolean(document.activeElement && document.activeElement.closest('#sidebar'))"
    assert page.evaluate(in_drawer), "opening the drawer left the keyboard behind it"

    # Tab and Shift+Tab go round the drawer: nothing behind the dimmed page is reached.
    for key in ["Tab"] * 14 + ["Shift+Tab"] * 6:
        page.keyboard.press(key)
        assert page.evaluate(in_drawer), (
            f"after {key} the keyboard is on {page.evaluate('document.activeElement.outerHTML.slice(0, 120)')}"
        )
    shots.take(page, "drawer-focus")

    # Esc closes it and puts the keyboard back on the menu button (not on <body>).
    page.keyboard.press("Escape")
    expect(page.locator("#sidebar")).not_to_be_in_viewport()
    expect(menu).to_be_focused()
    expect(menu).to_have_attribute("aria-expanded", "false")
    # A closed drawer is out of the keyboard's way too.
    page.keyboard.press("Tab")
    assert not page.evaluate(in_drawer)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_small_text_is_readable(open_page: OpenPage, api: GatewayApi, scheme: str) -> None:
    page = open_page(color_scheme=scheme)
    chat = ChatPage(page, api.sign_in_link)
    chat.sign_in(new_identity(f"reader-{scheme}"))
    chat.ask("hello", assistant_replies=1)
    for selector in (".threads-heading", ".thread-when", ".composer-hint", ".account-team"):
        ratio: float = page.locator(selector).first.evaluate(_CONTRAST)
        assert ratio >= AA_SMALL_TEXT, f"{selector} has a contrast of {ratio:.2f}:1 in {scheme}"
    placeholder_ratio: float = page.evaluate(
        """(contrast) => {
          const probe = document.createElement('span');
          probe.className = 'thread-when';
          document.querySelector('.composer').append(probe);
          probe.textContent = 'x';
          return (new Function('return ' + contrast))()(probe);
        }""",
        _CONTRAST,
    )
    assert placeholder_ratio >= AA_SMALL_TEXT, f"hint text on the composer: {placeholder_ratio:.2f}:1 in {scheme}"


# Every text the announcer region takes, and whether a reply was streaming at that moment.
_RECORD_ANNOUNCEMENTS = """
(() => {
  window.__announced = [];
  const watch = () => {
    const region = document.querySelector('[data-testid="announcer"]');
    if (!region) { requestAnimationFrame(watch); return; }
    new MutationObserver(() => {
      const text = region.textContent.trim();
      if (!text) return;
      const streaming = Boolean(document.querySelector('[data-role="assistant"][data-streaming="true"]'));
      window.__announced.push({ text, streaming });
    }).observe(region, { subtree: true, childList: true, characterData: true });
  };
  document.addEventListener("DOMContentLoaded", watch);
})();
"""


def test_a_reply_is_announced_once_when_it_is_done(page: Page, api: GatewayApi) -> None:
    who = new_identity("listener")
    load_handbooks(api, who)
    chat = ChatPage(page, api.sign_in_link)
    page.add_init_script(_RECORD_ANNOUNCEMENTS)
    chat.sign_in(who)

    # The conversation is not read out as it changes: it is not a live region.
    log = chat.by("messages")
    assert log.get_attribute("aria-live") in (None, "off"), log.get_attribute("aria-live")
    assert "text" not in (log.get_attribute("aria-relevant") or "")

    reply = chat.ask(HANDOVER_QUESTION, assistant_replies=1)
    page.wait_for_function("() => window.__announced.length > 0")
    page.wait_for_timeout(300)  # a second announcement would come right after the first
    announced = page.evaluate("window.__announced")
    assert len(announced) == 1, announced
    assert not announced[0]["streaming"], "announced while the reply was still being written"
    assert "According to" in announced[0]["text"]
    assert reply.inner_text().split()[0] in announced[0]["text"]
    region = chat.by("announcer")
    expect(region).to_have_attribute("aria-live", "polite")
