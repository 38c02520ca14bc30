"""The chat page at `/`, driven in headless Chromium as its users drive it, against the whole system as processes.

Each test signs in as a new user of a new team, so it sees only what it did itself. Assertions are on what the user
sees; where the page claims something was saved, the saved thread is read back through the API (or the CLI) too.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from kitrelay.agents.offline_policy import GREETING_TEXT
from kitrelay.services.turn_log import STOPPED_MARK
from kitrelay.shared.messages import Identity
from tests.browser.chat_page import ChatPage, squash
from tests.browser.conftest import OpenPage, Screenshots
from tests.browser.gateway_api import GatewayApi, new_identity
from tests.system import RunningSystem

pytestmark = pytest.mark.browser

# A question whose answer is long (a passage quoted, two more sources named): at the offline model's pace in these
# tests it takes seconds to write, time enough to reload or stop the page mid-reply.
HANDOVER_QUESTION = "what does the night shift handbook say about the handover?"
HANDOVER_FIRST = "The night shift hands over to the morning crew at six sharp in the harbour office."
HANDOVER_LAST = "Cranes stay locked until the morning supervisor has signed the logbook."
HANDOVER_PASSAGE = (
    f"{HANDOVER_FIRST} Every open incident is read out loud and written into the logbook together with its owner. "
    f"{HANDOVER_LAST} Nobody leaves before the handover is complete and the radio check on channel nine is done."
)


def handbook(volume: int) -> bytes:
    title = f"Night shift handbook of the harbour operations team, volume {volume}, with every rule we agreed on"
    return f"# {title}\n\n## Handover\n\n{HANDOVER_PASSAGE}\n\n## Breaks\n\nTake breaks in turns.\n".encode()


def load_handbooks(api: GatewayApi, who: Identity) -> None:
    for volume in (1, 2, 3):
        api.upload(who, f"night-shift-{volume}.md", handbook(volume))


def test_a_user_signs_in_and_sees_a_reply_stream_in(page: Page, api: GatewayApi, shots: Screenshots) -> None:
    alice = new_identity("alice")
    chat = ChatPage(page, api.sign_in_link)
    chat.sign_in(alice)
    expect(chat.thread_items()).to_have_count(0)

    chat.send("hello", press_enter=True)

    expect(chat.messages("user")).to_have_count(1)
    expect(chat.messages("user")).to_contain_text("hello")
    reply = chat.finish_turn(assistant_replies=1)
    expect(reply).to_contain_text(GREETING_TEXT)
    item_id = reply.get_attribute("data-item-id")
    assert item_id, "the assistant message has no data-item-id"
    seen = chat.streaming_record().get(item_id)
    assert seen is not None, f"the recorder never saw {item_id}: {chat.streaming_record()}"
    assert seen["streaming"][-2:] == ["true", "false"], f"data-streaming went {seen['streaming']}"
    # Two different lengths while streaming at least: the reply grew on screen, it did not appear whole.
    assert len(seen["lengths"]) >= 2, f"the text did not grow piece by piece while streaming: {seen['lengths']}"

    expect(chat.thread_items()).to_have_count(1)
    thread_id = chat.open_thread_id()
    assert api.assistant_texts(alice, thread_id) == [GREETING_TEXT]
    shots.save_as(page, "streamed-reply")


def test_tasks_show_as_widgets_and_a_click_toggles_one_in_place(
    page: Page, api: GatewayApi, shots: Screenshots
) -> None:
    chat = ChatPage(page, api.sign_in_link)
    chat.sign_in(new_identity("tasker"))

    chat.ask("add task buy milk", assistant_replies=1)
    expect(chat.widgets("Card")).to_have_count(1)
    expect(chat.widgets("Card")).to_contain_text("buy milk")
    chat.ask("add task call Bob", assistant_replies=2)
    expect(chat.widgets("Card")).to_have_count(2)
    expect(chat.widgets("Card").last).to_contain_text("call Bob")

    chat.ask("list my tasks", assistant_replies=3)
    task_list = chat.widgets("ListView")
    expect(task_list).to_have_count(1)
    rows = task_list.get_by_test_id("list-item")
    expect(rows).to_have_count(2)
    for row in (rows.filter(has_text="buy milk"), rows.filter(has_text="call Bob")):
        expect(row).to_have_attribute("data-clickable", "true")
        expect(row).to_have_attribute("role", "button")
    widget_id = task_list.get_attribute("data-item-id")
    assert widget_id, "the widget has no data-item-id"
    assert chat.row_struck_through(widget_id, "buy milk") is False, "an open task looks done"
    assert chat.row_struck_through(widget_id, "call Bob") is False, "an open task looks done"
    shots.save_as(page, "task-widget")

    rows.filter(has_text="buy milk").click()

    # Replaced in place: the same item, still the only list, now drawing the task done; no new reply.
    chat.wait_row_struck_through(widget_id, "buy milk", True)
    expect(chat.widgets("ListView")).to_have_count(1)
    expect(chat.widgets("ListView")).to_have_attribute("data-item-id", widget_id)
    assert chat.row_struck_through(widget_id, "call Bob") is False, "the task not clicked changed too"
    expect(chat.messages("assistant")).to_have_count(3)
    chat.wait_idle()
    shots.take(page, "toggled")

    # Saved: after a reload the thread's list still shows it done.
    thread_id = chat.open_thread_id()
    page.reload()
    chat.wait_ready()
    chat.thread_items().and_(page.locator(f'[data-thread-id="{thread_id}"]')).click()
    expect(chat.widgets("ListView")).to_have_attribute("data-item-id", widget_id)
    chat.wait_row_struck_through(widget_id, "buy milk", True)
    assert chat.row_struck_through(widget_id, "call Bob") is False
    shots.take(page, "after-reload")

    # From the keyboard too: a row is a focusable button.
    bob = chat.widgets("ListView").get_by_test_id("list-item").filter(has_text="call Bob")
    bob.focus()
    expect(bob).to_be_focused()
    page.keyboard.press("Enter")
    chat.wait_row_struck_through(widget_id, "call Bob", True)
    chat.wait_idle()


def test_a_task_cards_button_marks_it_done_in_place(page: Page, api: GatewayApi, shots: Screenshots) -> None:
    chat = ChatPage(page, api.sign_in_link)
    chat.sign_in(new_identity("carder"))
    chat.ask("add task pay rent", assistant_replies=1)
    card = chat.widgets("Card")
    expect(card).to_have_count(1)
    card_id = card.get_attribute("data-item-id")
    assert card_id, "the widget has no data-item-id"
    button = card.get_by_test_id("widget-button")
    expect(button).to_have_text("Mark done")
    # The status badge follows the task's number.
    expect(card).to_contain_text(re.compile(r"#\d+\s*open"))

    button.click()

    expect(card.get_by_test_id("widget-button")).to_have_text("Reopen")
    expect(chat.widgets("Card")).to_have_count(1)
    expect(chat.widgets("Card")).to_have_attribute("data-item-id", card_id)
    expect(card).to_contain_text(re.compile(r"#\d+\s*done"))
    expect(chat.messages("assistant")).to_have_count(1)
    chat.wait_idle()
    shots.take(page, "done")


def test_a_reload_mid_reply_shows_the_same_reply_finish_once(page: Page, api: GatewayApi, shots: Screenshots) -> None:
    reader = new_identity("reader")
    load_handbooks(api, reader)
    chat = ChatPage(page, api.sign_in_link)
    chat.sign_in(reader)

    chat.send(HANDOVER_QUESTION)
    chat.wait_streaming_text()
    expect(chat.body).to_have_attribute("data-turn-state", "streaming")
    thread_id = chat.open_thread_id()
    shots.take(page, "before-reload")

    page.reload()

    chat.wait_ready()
    assert chat.open_thread_id() == thread_id, "after the reload the page shows another thread"
    reply = chat.finish_turn(assistant_replies=1)
    shots.take(page, "finished")
    # Seen streaming after the reload: the page followed the running turn, not just a thread saved later.
    followed = chat.streaming_record().get(reply.get_attribute("data-item-id") or "?", {}).get("streaming", [])
    assert followed[-2:] == ["true", "false"], f"after the reload the reply went {followed}: {chat.streaming_record()}"
    saved = api.assistant_texts(reader, thread_id)
    assert len(saved) == 1, saved
    assert HANDOVER_FIRST in saved[0] and STOPPED_MARK not in saved[0]
    shown = squash(reply.inner_text())
    # The beginning, the quoted passage's last sentence and the end (the other sources): each exactly once.
    for part in ("According to", HANDOVER_FIRST, HANDOVER_LAST, "See also"):
        assert shown.count(part) == 1, f"{part!r} shown {shown.count(part)} times: {shown!r}"
    expect(chat.messages("user")).to_have_count(1)


def test_an_uploaded_document_gets_a_cited_answer(
    page: Page, api: GatewayApi, shots: Screenshots, tmp_path: Path
) -> None:
    code = f"{secrets.randbelow(9000) + 1000}-{secrets.token_hex(2)}"
    # No H1, so the document is titled by its file name: the citation has to name the file.
    guide = tmp_path / f"falcon-lab-guide-{secrets.token_hex(2)}.md"
    guide.write_text(
        "## Door code\n\n"
        f"The door code of the falcon lab is {code}. Change it every quarter and tell nobody outside the team.\n\n"
        "## Coffee\n\nThe coffee machine is descaled on Mondays.\n"
    )
    chat = ChatPage(page, api.sign_in_link)
    chat.sign_in(new_identity("uploader"))

    chat.by("composer-attach").set_input_files(guide)

    chip = chat.by("attachment-chip")
    expect(chip).to_have_count(1)
    expect(chip).to_contain_text(guide.name)
    expect(chip).to_have_attribute("data-state", "ready")
    shots.take(page, "attached")
    reply = chat.ask("what does the falcon lab guide say about the door code?", assistant_replies=1)

    expect(reply).to_contain_text(code)
    citations = chat.by("citation")
    expect(citations.first).to_be_visible()
    expect(citations.filter(has_text=guide.stem)).not_to_have_count(0)
    shots.take(page, "cited-answer")


def test_stop_ends_the_reply_marked_stopped(page: Page, api: GatewayApi, shots: Screenshots) -> None:
    impatient = new_identity("impatient")
    load_handbooks(api, impatient)
    chat = ChatPage(page, api.sign_in_link)
    chat.sign_in(impatient)

    chat.send(HANDOVER_QUESTION)
    chat.wait_streaming_text()
    stop = chat.by("composer-stop")
    expect(stop).to_be_visible()
    stop.click()

    reply = chat.finish_turn(assistant_replies=1)
    expect(reply).to_contain_text("Stopped.")
    expect(stop).to_be_hidden()
    shots.take(page, "stopped")
    saved = api.assistant_texts(impatient, chat.open_thread_id())
    assert len(saved) == 1 and saved[0].endswith(STOPPED_MARK), saved
    assert "See also" not in chat.assistant_text(), "the reply was written to its end: nothing was stopped"

    # The composer works again: the next message gets its own reply.
    chat.ask("hello", assistant_replies=2)


def test_thumbs_up_is_recorded(page: Page, api: GatewayApi, browser_system: RunningSystem) -> None:
    voter = new_identity("voter")
    chat = ChatPage(page, api.sign_in_link)
    chat.sign_in(voter)
    reply = chat.ask("hello", assistant_replies=1)
    item_id = reply.get_attribute("data-item-id")

    up = reply.get_by_test_id("feedback-up")
    expect(up).not_to_have_attribute("aria-pressed", "true")
    up.click()
    expect(up).to_have_attribute("aria-pressed", "true")

    listed = subprocess.run(
        [sys.executable, "-m", "kitrelay.services.cli", "kb", "feedback", "--team", voter.team_id],
        env={**browser_system.env, "COLUMNS": "300"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    [vote] = [line for line in listed.stdout.splitlines() if voter.user_id in line]
    assert "positive" in vote and (item_id or "?") in vote, listed.stdout


def test_users_see_only_their_own_threads(open_page: OpenPage, api: GatewayApi) -> None:
    team = f"team-{secrets.token_hex(4)}"
    ann, ben = ChatPage(open_page(), api.sign_in_link), ChatPage(open_page(), api.sign_in_link)
    ann.sign_in(new_identity("ann", team))
    ann.ask("hello", assistant_replies=1)
    expect(ann.thread_items()).to_have_count(1)
    anns_thread = ann.open_thread_id()

    ben.sign_in(new_identity("ben", team))
    expect(ben.thread_items()).to_have_count(0)
    expect(ben.messages()).to_have_count(0)
    ben.ask("hello", assistant_replies=1)
    expect(ben.thread_items()).to_have_count(1)
    assert ben.open_thread_id() != anns_thread

    ann.page.reload()
    ann.wait_ready()
    expect(ann.thread_items()).to_have_count(1)
    expect(ann.thread_items()).to_have_attribute("data-thread-id", anns_thread)

    # Signing out forgets the token: the form is back, and stays after a reload, with nothing of Ben's on show.
    ben.by("signout").click()
    expect(ben.by("signin-form")).to_be_visible()
    expect(ben.by("thread-list")).to_be_hidden()
    ben.page.reload()
    expect(ben.by("signin-form")).to_be_visible()
    expect(ben.body).not_to_have_attribute("data-ready", "true")


def test_signing_in_needs_the_link_kitrelay_up_printed(
    open_page: OpenPage, api: GatewayApi, shots: Screenshots
) -> None:
    """Anyone on the machine can open the page; only the owner of the data directory has the link `kitrelay up`
    printed to its terminal. Without it the page says where to find one and offers no form."""
    stranger = ChatPage(open_page(), api.sign_in_link)
    stranger.open()
    expect(stranger.by("signin-form")).to_be_visible()
    expect(stranger.page.locator("#signin-hint")).to_contain_text("kitrelay up")
    expect(stranger.by("signin-user")).to_be_hidden()
    expect(stranger.by("signin-submit")).to_be_hidden()
    shots.take(stranger.page, "no-link")

    link = api.sign_in_link()
    owner = open_page()
    owner.goto(link)
    expect(owner.get_by_test_id("signin-user")).to_be_visible()
    assert "sign-in=" not in owner.url, "the code is taken out of the address bar"
    # The link works once: another browser opening it is told so.
    other = open_page()
    other.goto(link)
    expect(other.locator("#signin-error")).to_contain_text("used already")
    expect(other.get_by_test_id("signin-user")).to_be_hidden()
    shots.take(other, "used-link")
