"""The phrase rules of the offline model, as tables: message in, intent kind and slots out."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from kitrelay.agents.intents import TASK_INTENTS, Intent, IntentKind, parse_intent, resolve_date, split_due_date

# A Wednesday, so that weekday phrases can land before, on and after "today".
TODAY = date(2026, 11, 25)

K = IntentKind


def _slots(intent: Intent) -> dict[str, Any]:
    names = ("title", "task_id", "new_title", "assignee", "status", "due_date", "query")
    return {name: value for name in names if (value := getattr(intent, name)) is not None}


@pytest.mark.parametrize(
    ("message", "kind", "slots"),
    [
        # add task
        ("add task buy milk", K.ADD_TASK, {"title": "buy milk"}),
        ("Add a task: call Bob", K.ADD_TASK, {"title": "call Bob"}),
        ("add buy milk to my list", K.ADD_TASK, {"title": "buy milk"}),
        ("add task buy milk to my list", K.ADD_TASK, {"title": "buy milk"}),
        ("put eggs on the shopping list", K.ADD_TASK, {"title": "eggs"}),
        ("remind me to call Bob", K.ADD_TASK, {"title": "call Bob"}),
        ("new task Write the report", K.ADD_TASK, {"title": "Write the report"}),
        ("new task: water plants", K.ADD_TASK, {"title": "water plants"}),
        ("create a task to water plants", K.ADD_TASK, {"title": "water plants"}),
        ("create a new task called deploy v2", K.ADD_TASK, {"title": "deploy v2"}),
        ("Please add task buy milk.", K.ADD_TASK, {"title": "buy milk"}),
        ("add task buy milk please", K.ADD_TASK, {"title": "buy milk"}),
        ("can you add a task to buy milk?", K.ADD_TASK, {"title": "buy milk"}),
        ("could you please add task 'renew passport'", K.ADD_TASK, {"title": "renew passport"}),
        ("todo: fix the sink", K.ADD_TASK, {"title": "fix the sink"}),
        ("I need to book flights", K.ADD_TASK, {"title": "book flights"}),
        ("add task write thank you notes", K.ADD_TASK, {"title": "write thank you notes"}),
        ("add task fix bug, thanks!", K.ADD_TASK, {"title": "fix bug"}),
        ("hi, add task buy bread", K.ADD_TASK, {"title": "buy bread"}),
        ("ADD TASK Buy Milk", K.ADD_TASK, {"title": "Buy Milk"}),
        ("add   task\tbuy   milk", K.ADD_TASK, {"title": "buy milk"}),
        # list tasks
        ("list my tasks", K.LIST_TASKS, {"status": "all"}),
        ("show tasks", K.LIST_TASKS, {"status": "all"}),
        ("show me all my tasks", K.LIST_TASKS, {"status": "all"}),
        ("what's on my list", K.LIST_TASKS, {"status": "all"}),
        ("what's on my list?", K.LIST_TASKS, {"status": "all"}),
        ("What\u2019s on my to-do list?", K.LIST_TASKS, {"status": "all"}),
        ("what do I have to do", K.LIST_TASKS, {"status": "all"}),
        ("What do I need to do today?", K.LIST_TASKS, {"status": "all"}),
        ("my tasks", K.LIST_TASKS, {"status": "all"}),
        ("Can you list my tasks?", K.LIST_TASKS, {"status": "all"}),
        ("what tasks do I have", K.LIST_TASKS, {"status": "all"}),
        ("show open tasks", K.LIST_TASKS, {"status": "open"}),
        ("list pending tasks", K.LIST_TASKS, {"status": "open"}),
        ("what's left", K.LIST_TASKS, {"status": "open"}),
        ("show completed tasks", K.LIST_TASKS, {"status": "done"}),
        ("list done tasks", K.LIST_TASKS, {"status": "done"}),
        ("show tasks that are finished", K.LIST_TASKS, {"status": "done"}),
        ("tasks assigned to @bob", K.LIST_TASKS, {"status": "all", "assignee": "bob"}),
        ("show open tasks assigned to alice", K.LIST_TASKS, {"status": "open", "assignee": "alice"}),
        ("what's assigned to @bob?", K.LIST_TASKS, {"status": "all", "assignee": "bob"}),
        # complete
        ("complete task 3", K.COMPLETE_TASK, {"task_id": 3}),
        ("mark task #3 as done", K.COMPLETE_TASK, {"task_id": 3}),
        ("mark task 3 done", K.COMPLETE_TASK, {"task_id": 3}),
        ("done with task 3", K.COMPLETE_TASK, {"task_id": 3}),
        ("I'm done with task 3", K.COMPLETE_TASK, {"task_id": 3}),
        ("finish task 3", K.COMPLETE_TASK, {"task_id": 3}),
        ("check off 3", K.COMPLETE_TASK, {"task_id": 3}),
        ("tick task 7 off", K.COMPLETE_TASK, {"task_id": 7}),
        ("task 12 is done!", K.COMPLETE_TASK, {"task_id": 12}),
        ("Please complete task #12.", K.COMPLETE_TASK, {"task_id": 12}),
        # reopen
        ("reopen task 3", K.REOPEN_TASK, {"task_id": 3}),
        ("re-open #3", K.REOPEN_TASK, {"task_id": 3}),
        ("mark task 3 as not done", K.REOPEN_TASK, {"task_id": 3}),
        ("mark task 3 as open", K.REOPEN_TASK, {"task_id": 3}),
        ("uncheck task 4", K.REOPEN_TASK, {"task_id": 4}),
        # delete
        ("delete task 3", K.DELETE_TASK, {"task_id": 3}),
        ("remove task #3", K.DELETE_TASK, {"task_id": 3}),
        ("remove task 3 from my list", K.DELETE_TASK, {"task_id": 3}),
        ("get rid of task 9", K.DELETE_TASK, {"task_id": 9}),
        # rename
        ("rename task 3 to buy oat milk", K.RENAME_TASK, {"task_id": 3, "new_title": "buy oat milk"}),
        ("Rename #3 to Buy Oat Milk.", K.RENAME_TASK, {"task_id": 3, "new_title": "Buy Oat Milk"}),
        ("change the title of task 3 to call Alice", K.RENAME_TASK, {"task_id": 3, "new_title": "call Alice"}),
        ("rename task 3 to done", K.RENAME_TASK, {"task_id": 3, "new_title": "done"}),
        # assign
        ("assign task 3 to @bob", K.ASSIGN_TASK, {"task_id": 3, "assignee": "bob"}),
        ("assign #3 to alice", K.ASSIGN_TASK, {"task_id": 3, "assignee": "alice"}),
        ("give task 5 to @carol.smith", K.ASSIGN_TASK, {"task_id": 5, "assignee": "carol.smith"}),
        # social
        ("hi", K.GREETING, {}),
        ("Hello!", K.GREETING, {}),
        ("hey there", K.GREETING, {}),
        ("good morning", K.GREETING, {}),
        ("hello, how are you?", K.GREETING, {}),
        ("help", K.HELP, {}),
        ("what can you do?", K.HELP, {}),
        ("can you help me?", K.HELP, {}),
        ("thanks", K.THANKS, {}),
        ("Thank you so much!", K.THANKS, {}),
        ("ok thanks", K.THANKS, {}),
        # questions
        ("What is ChatKit?", K.QUESTION, {"query": "What is ChatKit"}),
        ("how does NATS work", K.QUESTION, {"query": "how does NATS work"}),
        ("why is the sky blue", K.QUESTION, {"query": "why is the sky blue"}),
        ("Is it raining?", K.QUESTION, {"query": "Is it raining"}),
        ("the weather in Paris?", K.QUESTION, {"query": "the weather in Paris"}),
        ("can you tell me about Redis streams", K.QUESTION, {"query": "tell me about Redis streams"}),
        # unknown
        ("tell me a joke", K.UNKNOWN, {}),
        ("asdf", K.UNKNOWN, {}),
        ("", K.UNKNOWN, {}),
        ("   ", K.UNKNOWN, {}),
        ("add task", K.UNKNOWN, {}),
        ("complete task", K.UNKNOWN, {}),
    ],
)
def test_parse_intent(message: str, kind: IntentKind, slots: dict[str, Any]) -> None:
    intent = parse_intent(message, today=TODAY)

    assert intent.kind is kind
    assert _slots(intent) == slots


@pytest.mark.parametrize(
    ("message", "title", "due"),
    [
        ("add task buy milk by tomorrow", "buy milk", date(2026, 11, 26)),
        ("add task buy milk due tomorrow", "buy milk", date(2026, 11, 26)),
        ("remind me to call Bob tomorrow", "call Bob", date(2026, 11, 26)),
        ("add task pay rent due 2026-12-01", "pay rent", date(2026, 12, 1)),
        ("add task pay rent, due: 2026-12-01", "pay rent", date(2026, 12, 1)),
        ("add task send invoice due friday", "send invoice", date(2026, 11, 27)),
        ("add task send invoice by Monday", "send invoice", date(2026, 11, 30)),
        ("add task standup notes due wednesday", "standup notes", TODAY),
        ("add task standup notes due next wednesday", "standup notes", date(2026, 12, 2)),
        ("add task water plants today", "water plants", TODAY),
        ("add task go shopping in 3 days", "go shopping", date(2026, 11, 28)),
        ("add task plan trip in two weeks", "plan trip", date(2026, 12, 9)),
        ("add task review PR next week", "review PR", date(2026, 12, 2)),
        ("remind me to call Bob the day after tomorrow", "call Bob", date(2026, 11, 27)),
        # Not a date, or a date with nothing left for the title: keep the words in the title.
        ("add task pay rent due 2026-02-30", "pay rent due 2026-02-30", None),
        ("add task tomorrow", "tomorrow", None),
        # A bare weekday may be part of a title ("Friday drinks"), so only a preposition makes it a date.
        ("add task plan friday", "plan friday", None),
        ("add task buy milk", "buy milk", None),
    ],
)
def test_due_dates_are_split_off_the_title(message: str, title: str, due: date | None) -> None:
    intent = parse_intent(message, today=TODAY)

    assert intent.kind is IntentKind.ADD_TASK
    assert (intent.title, intent.due_date) == (title, due)


@pytest.mark.parametrize(
    ("phrase", "expected"),
    [
        ("today", TODAY),
        ("Tomorrow", date(2026, 11, 26)),
        ("2026-12-01", date(2026, 12, 1)),
        ("2026-13-01", None),
        ("wednesday", TODAY),
        ("next wednesday", date(2026, 12, 2)),
        ("tuesday", date(2026, 12, 1)),
        ("next tuesday", date(2026, 12, 1)),
        ("in 1 day", date(2026, 11, 26)),
        ("in a week", date(2026, 12, 2)),
        ("someday", None),
        ("", None),
    ],
)
def test_resolve_date(phrase: str, expected: date | None) -> None:
    assert resolve_date(phrase, TODAY) == expected


def test_split_due_date_leaves_plain_titles_alone() -> None:
    assert split_due_date("call Bob", TODAY) == ("call Bob", None)


def test_relative_dates_default_to_the_utc_date() -> None:
    before = datetime.now(UTC).date()
    intent = parse_intent("add task buy milk by tomorrow")
    after = datetime.now(UTC).date()

    # Two readings of the clock, so a run across midnight UTC cannot fail the test.
    assert intent.due_date in {before + timedelta(days=1), after + timedelta(days=1)}


def test_question_keeps_the_original_text() -> None:
    intent = parse_intent("  Can you tell me   what ChatKit is? ")

    assert intent.kind is IntentKind.QUESTION
    assert intent.text == "Can you tell me what ChatKit is?"
    assert intent.query == "tell me what ChatKit is"


def test_parsing_is_deterministic() -> None:
    messages = ["add task buy milk by friday", "show open tasks", "what is NATS?", "hi", "blah"]

    assert [parse_intent(m, today=TODAY) for m in messages] == [parse_intent(m, today=TODAY) for m in messages]


def test_task_intents_are_exactly_the_task_kinds() -> None:
    assert {
        K.ADD_TASK,
        K.LIST_TASKS,
        K.COMPLETE_TASK,
        K.REOPEN_TASK,
        K.DELETE_TASK,
        K.RENAME_TASK,
        K.ASSIGN_TASK,
    } == TASK_INTENTS
    assert parse_intent("delete task 3").is_task
    assert not parse_intent("hello").is_task
    assert not parse_intent("What is ChatKit?").is_task
