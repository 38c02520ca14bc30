"""The task agent's tools through the offline model, on a real store: every phrase a user would type."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import date, timedelta
from pathlib import Path

import pytest

from kitrelay.agents.offline_model import OfflineModelProvider
from kitrelay.agents.registry import build_agent
from kitrelay.agents.widgets import MAX_TASK_ROWS
from kitrelay.services.turn_runner import run_turn
from kitrelay.shared.ids import new_id
from kitrelay.shared.messages import ChatKitEntry, Identity, TurnRequest
from tests.services.worker_env import ALICE, WorkerEnv, worker_env
from tests.turn_streams import turn_entries

BOB_TEAMMATE = Identity(user_id="bob", team_id=ALICE.team_id)
OUTSIDER = Identity(user_id="eve", team_id="other-team")


@pytest.fixture
async def env(nats_url: str, redis_url: str, unique_namespace: str, tmp_path: Path) -> AsyncIterator[WorkerEnv]:
    async with worker_env(nats_url, redis_url, unique_namespace, tmp_path) as built:
        yield built


async def say(env: WorkerEnv, text: str, *, identity: Identity = ALICE) -> tuple[str, list[dict]]:
    """One message to the task agent in a new thread: the reply text and the widgets it showed."""
    thread_id, item_id = await env.new_thread(text, identity=identity)
    request = TurnRequest(
        turn_id=new_id("turn"), thread_id=thread_id, identity=identity, agent="task", user_item_id=item_id
    )
    await run_turn(request, attempt=1, agent=build_agent("task"), deps=env.deps(OfflineModelProvider()))
    events = [
        e.body.event
        for _, e in await turn_entries(env.redis, env.namespace, request.turn_id)
        if isinstance(e.body, ChatKitEntry)
    ]
    done = [e.item for e in events if e.type == "thread.item.done"]
    text_reply = " ".join(i.content[0].text for i in done if i.type == "assistant_message")
    widgets = [i.widget.model_dump(exclude_none=True) for i in done if i.type == "widget"]
    return text_reply, widgets


async def test_add_shows_a_card_and_understands_due_dates(env: WorkerEnv) -> None:
    reply, [card] = await say(env, "add task file taxes due tomorrow")
    tomorrow = (date.today() + timedelta(days=1)).isoformat()
    assert reply == f'Added task #1 "file taxes" (due {tomorrow}).'
    assert card["type"] == "Card" and "file taxes" in json.dumps(card) and "Mark done" in json.dumps(card)
    [task] = await env.tasks.list(ALICE)
    assert (task.title, task.due_date, task.owner_id) == ("file taxes", date.today() + timedelta(days=1), "alice")


async def test_complete_reopen_rename_delete(env: WorkerEnv) -> None:
    await say(env, "add task buy milk")
    assert await say(env, "complete task 1") == ('Completed task #1 "buy milk".', [])
    assert (await env.tasks.get(ALICE, 1)).done
    assert await say(env, "reopen task 1") == ('Reopened task #1 "buy milk".', [])
    assert not (await env.tasks.get(ALICE, 1)).done
    assert await say(env, "rename task 1 to buy oat milk") == ('Renamed task #1 to "buy oat milk".', [])
    assert await say(env, "delete task 1") == ('Deleted task #1 "buy oat milk".', [])
    assert await env.tasks.list(ALICE) == []
    assert await say(env, "complete task 1") == ("There is no task #1.", [])


async def test_assign_and_list_by_assignee_and_status(env: WorkerEnv) -> None:
    await say(env, "add task write report")
    await say(env, "add task book flights")
    reply, _ = await say(env, "assign task 2 to @bob")
    assert reply == 'Assigned task #2 "book flights" (assigned to @bob).'

    _, [bobs] = await say(env, "show tasks assigned to @bob")
    assert bobs["status"]["text"] == "Tasks for @bob (1)"
    assert "book flights" in json.dumps(bobs) and "write report" not in json.dumps(bobs)

    await say(env, "complete task 1")
    _, [open_list] = await say(env, "show open tasks")
    assert open_list["status"]["text"] == "Open tasks (1)" and "write report" not in json.dumps(open_list)
    _, [done_list] = await say(env, "show completed tasks")
    assert done_list["status"]["text"] == "Done tasks (1)" and "write report" in json.dumps(done_list)


async def test_the_list_is_capped_with_a_footer(env: WorkerEnv) -> None:
    for n in range(MAX_TASK_ROWS + 5):
        await env.tasks.add(ALICE, title=f"chore {n}")
    reply, [widget] = await say(env, "what's on my list?")
    assert reply == "Here are your tasks."
    rows = widget["children"]
    assert len(rows) == MAX_TASK_ROWS + 1
    assert "5 more not shown" in json.dumps(rows[-1])
    assert widget["status"]["text"] == f"Tasks ({MAX_TASK_ROWS + 5})"


async def test_tasks_are_shared_in_the_team_and_invisible_outside(env: WorkerEnv) -> None:
    await say(env, "add task team chore")
    _, [teammates_view] = await say(env, "list my tasks", identity=BOB_TEAMMATE)
    assert "team chore" in json.dumps(teammates_view)
    _, [outsiders_view] = await say(env, "list my tasks", identity=OUTSIDER)
    assert "team chore" not in json.dumps(outsiders_view)
    assert await say(env, "delete task 1", identity=OUTSIDER) == ("There is no task #1.", [])
    assert [t.title for t in await env.tasks.list(ALICE)] == ["team chore"]
