"""Threads a team can manage (issue 32, point 2): rename, delete (confirmed) and search from the sidebar; a URL per
thread; the list by last activity with its times, the user and the team in the footer; titles that tell threads
apart; a thumbs-up shown again."""

from __future__ import annotations

import re
from datetime import datetime

import httpx
import pytest
from playwright.sync_api import Locator, Page, expect

from kitrelay.gateway.tokens import mint_token
from kitrelay.shared.messages import Identity
from tests.browser.chat_page import ChatPage
from tests.browser.conftest import Screenshots
from tests.browser.gateway_api import GatewayApi, new_identity
from tests.system import RunningSystem

pytestmark = pytest.mark.browser


def thread_row(chat: ChatPage, thread_id: str) -> tuple[Locator, Locator]:
    """A thread's row in the sidebar, hovered (its rename and delete buttons show on hover or focus), and its item."""
    row = chat.page.locator(f'[data-thread-row="{thread_id}"]')
    row.hover()
    return row, row.get_by_test_id("thread-item")


def start_thread(chat: ChatPage, text: str, *, replies: int = 1) -> str:
    chat.by("new-thread").click()
    chat.ask(text, assistant_replies=replies)
    return chat.open_thread_id()


def get_thread_status(system: RunningSystem, secret: str, who: Identity, thread_id: str) -> int:
    token = mint_token(secret, who.user_id, who.team_id, 600)
    response = httpx.post(
        f"{system.base_url}/chatkit",
        json={"type": "threads.get_by_id", "params": {"thread_id": thread_id}},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    return response.status_code


def test_threads_are_renamed_and_searched_from_the_sidebar(page: Page, api: GatewayApi, shots: Screenshots) -> None:
    who = new_identity("keeper")
    chat = ChatPage(page, api.sign_in_link)
    chat.sign_in(who)
    milk = start_thread(chat, "add task buy milk")
    start_thread(chat, "hello")
    dog = start_thread(chat, "add task walk the dog")
    chat.ask("add task feed the zebra", assistant_replies=2)
    expect(chat.thread_items()).to_have_count(3)

    # Rename: in place, Enter saves; the page's title and the saved thread follow.
    row, item = thread_row(chat, milk)
    row.get_by_test_id("thread-rename").click()
    name = chat.page.get_by_test_id("thread-rename-input")
    expect(name).to_be_focused()
    name.fill("Groceries")
    name.press("Enter")
    expect(item).to_contain_text("Groceries")
    assert api.call(who, "threads.get_by_id", {"thread_id": milk})["title"] == "Groceries"
    # Esc leaves the name as it was.
    row, item = thread_row(chat, milk)
    row.get_by_test_id("thread-rename").click()
    chat.page.get_by_test_id("thread-rename-input").fill("Never mind")
    chat.page.get_by_test_id("thread-rename-input").press("Escape")
    expect(item).to_contain_text("Groceries")

    # Search: by title, by a word of a message (not in the title), and as the word is being typed.
    search = chat.by("thread-search")
    search.fill("groceries")
    expect(chat.thread_items()).to_have_count(1)
    expect(chat.thread_items()).to_have_attribute("data-thread-id", milk)
    search.fill("zebra")
    expect(chat.thread_items()).to_have_count(1)
    expect(chat.thread_items()).to_have_attribute("data-thread-id", dog)
    search.fill("zeb")
    expect(chat.thread_items()).to_have_attribute("data-thread-id", dog)
    search.fill("nothing like this anywhere")
    expect(chat.thread_items()).to_have_count(0)
    expect(chat.by("threads-empty")).to_have_text("No conversations match.")
    shots.take(page, "search")
    search.fill("")
    expect(chat.thread_items()).to_have_count(3)


def test_a_thread_is_deleted_once_confirmed(
    page: Page, api: GatewayApi, browser_system: RunningSystem, dev_token_secret: str, shots: Screenshots
) -> None:
    who = new_identity("cleaner")
    chat = ChatPage(page, api.sign_in_link)
    chat.sign_in(who)
    start_thread(chat, "add task keep this one")
    hello = start_thread(chat, "hello")
    expect(chat.thread_items()).to_have_count(2)

    # Delete asks first: Cancel keeps the thread, Delete removes it (and the page moves to a new chat).
    row, _ = thread_row(chat, hello)
    row.get_by_test_id("thread-delete").click()
    dialog = chat.by("confirm-dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("Hello")
    shots.take(page, "confirm-delete")
    dialog.get_by_test_id("confirm-cancel").click()
    expect(dialog).to_be_hidden()
    expect(chat.thread_items()).to_have_count(2)
    row, _ = thread_row(chat, hello)
    row.get_by_test_id("thread-delete").click()
    dialog.get_by_test_id("confirm-delete").click()
    expect(chat.thread_items()).to_have_count(1)
    expect(chat.page.locator(f'[data-thread-id="{hello}"]')).to_have_count(0)
    expect(chat.messages()).to_have_count(0)
    expect(page).to_have_url(re.compile(r"/$"))
    assert get_thread_status(browser_system, dev_token_secret, who, hello) == 404


def test_each_thread_has_its_own_address(page: Page, api: GatewayApi, shots: Screenshots) -> None:
    who = new_identity("linker")
    chat = ChatPage(page, api.sign_in_link)
    chat.sign_in(who)
    first = start_thread(chat, "add task first errand")
    expect(page).to_have_url(re.compile(rf"/t/{first}$"))
    second = start_thread(chat, "add task second errand")
    expect(page).to_have_url(re.compile(rf"/t/{second}$"))

    chat.thread_items().and_(page.locator(f'[data-thread-id="{first}"]')).click()
    expect(page).to_have_url(re.compile(rf"/t/{first}$"))
    expect(chat.messages("user")).to_contain_text("first errand")

    # Back goes to the thread before; Forward again.
    page.go_back()
    expect(page).to_have_url(re.compile(rf"/t/{second}$"))
    expect(chat.messages("user")).to_contain_text("second errand")
    assert chat.open_thread_id() == second
    page.go_forward()
    expect(chat.messages("user")).to_contain_text("first errand")

    # The address in a new tab opens the same thread.
    tab = page.context.new_page()
    try:
        tab.goto(f"/t/{first}")
        other = ChatPage(tab, api.sign_in_link)
        other.wait_ready()
        expect(other.messages("user")).to_contain_text("first errand")
        assert other.open_thread_id() == first
        shots.take(tab, "new-tab")
        # An address of a thread that is not there (or not this user's) says so and starts a new chat.
        tab.goto("/t/thr_not_a_thread_of_anyone")
        other.wait_ready()
        expect(other.by("error-banner")).to_contain_text("does not exist")
        expect(other.messages()).to_have_count(0)
    finally:
        tab.close()


def test_the_list_follows_last_activity_and_the_footer_names_user_and_team(
    page: Page, api: GatewayApi, shots: Screenshots
) -> None:
    who = new_identity("active")
    chat = ChatPage(page, api.sign_in_link)
    chat.sign_in(who)
    expect(chat.by("current-user")).to_have_text(who.user_id)
    expect(chat.by("current-team")).to_contain_text(who.team_id)
    older = start_thread(chat, "add task older thread")
    newer = start_thread(chat, "add task newer thread")
    expect(chat.thread_items().first).to_have_attribute("data-thread-id", newer)

    # Writing in the older thread brings it to the top, with the time of that message.
    chat.thread_items().and_(page.locator(f'[data-thread-id="{older}"]')).click()
    expect(chat.messages("assistant")).to_have_count(1)
    chat.ask("add task one more thing", assistant_replies=2)
    expect(chat.thread_items().first).to_have_attribute("data-thread-id", older)
    times = page.locator('[data-testid="thread-item"] time').evaluate_all(
        "nodes => nodes.map(node => Date.parse(node.dateTime))"
    )
    assert times[0] >= times[1], times
    saved = api.thread_items(who, older)
    assert abs(times[0] - _ms(saved[-1]["created_at"])) < 2000, (times, saved[-1]["created_at"])
    shots.take(page, "by-activity")


def _ms(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000


def test_titles_tell_threads_apart(page: Page, api: GatewayApi, shots: Screenshots) -> None:
    chat = ChatPage(page, api.sign_in_link)
    chat.sign_in(new_identity("titler"))
    start_thread(chat, "hey, can you please add task **buy milk**??")
    start_thread(chat, "what does the night shift handbook say about the handover?")
    start_thread(chat, "what does the night shift handbook say about breaks?")
    names = chat.page.locator(".thread-name")
    expect(names).to_have_count(3)
    expect(names).to_have_text(
        [
            "What does the night shift handbook say about breaks",
            "What does the night shift handbook say about the handover",
            "Add task buy milk",
        ]
    )
    # Each title is shown whole in the sidebar (not cut off where the two questions are still alike).
    clipped = names.evaluate_all(
        "nodes => nodes.filter(n => n.scrollHeight > n.clientHeight + 1).map(n => n.textContent)"
    )
    assert clipped == [], f"titles cut off in the sidebar: {clipped}"
    shots.take(page, "titles")


def test_a_thumbs_up_is_shown_again_after_switching_threads_and_reloading(page: Page, api: GatewayApi) -> None:
    chat = ChatPage(page, api.sign_in_link)
    chat.sign_in(new_identity("fan"))
    liked = start_thread(chat, "hello")
    up = chat.messages("assistant").last.get_by_test_id("feedback-up")
    up.click()
    expect(up).to_have_attribute("aria-pressed", "true")
    start_thread(chat, "add task something else")

    chat.thread_items().and_(page.locator(f'[data-thread-id="{liked}"]')).click()
    expect(chat.messages("assistant").last.get_by_test_id("feedback-up")).to_have_attribute("aria-pressed", "true")
    expect(chat.messages("assistant").last.get_by_test_id("feedback-down")).to_have_attribute("aria-pressed", "false")
    page.reload()
    chat.wait_ready()
    assert chat.open_thread_id() == liked
    expect(chat.messages("assistant").last.get_by_test_id("feedback-up")).to_have_attribute("aria-pressed", "true")
