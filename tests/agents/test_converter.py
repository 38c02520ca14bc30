"""Thread items to model input: valid on both wire formats, tool results kept, and a history that fits its budget."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import pytest
from agents.exceptions import UserError
from agents.models.chatcmpl_converter import Converter
from chatkit.agents import ThreadItemConverter
from chatkit.types import (
    AssistantMessageContent,
    AssistantMessageItem,
    HiddenContextItem,
    InferenceOptions,
    SDKHiddenContextItem,
    ThreadItem,
    UserMessageItem,
    UserMessageTextContent,
    WidgetItem,
)

from kitrelay.agents.converter import KitrelayConverter, estimate_tokens
from kitrelay.agents.tool_memory import KIND, ToolResult
from kitrelay.agents.widgets import task_card_widget, task_copy_text
from tests.fakes.openai_server import check_chat, check_responses
from tests.items import task_record

T0 = datetime(2025, 1, 1, 12, 0)


class Items:
    """Thread items in order, a second apart."""

    def __init__(self) -> None:
        self.n = 0

    def _base(self) -> dict[str, Any]:
        self.n += 1
        return {"id": f"item_{self.n}", "thread_id": "thr_1", "created_at": T0 + timedelta(seconds=self.n)}

    def user(self, text: str) -> UserMessageItem:
        return UserMessageItem(
            **self._base(),
            content=[UserMessageTextContent(text=text)],
            attachments=[],
            inference_options=InferenceOptions(),
        )

    def assistant(self, text: str) -> AssistantMessageItem:
        return AssistantMessageItem(**self._base(), content=[AssistantMessageContent(text=text)])

    def widget(self, *, copy_text: bool = True) -> WidgetItem:
        task = task_record(1, "buy milk", created_at=T0)
        return WidgetItem(
            **self._base(), widget=task_card_widget(task), copy_text=task_copy_text(task) if copy_text else None
        )

    def tool_result(self, output: str) -> HiddenContextItem:
        result = ToolResult(tool="add_task", arguments='{"title": "buy milk"}', output=output)
        return HiddenContextItem(**self._base(), content=result.to_content())


def a_conversation() -> list[ThreadItem]:
    items = Items()
    return [
        items.user("add task buy milk"),
        items.widget(),
        items.tool_result('Added task #1 "buy milk".'),
        items.assistant('Added task #1 "buy milk".'),
        items.user("list my tasks"),
    ]


async def test_the_default_converter_breaks_chat_completions_from_the_second_turn() -> None:
    # The SDK bug this converter exists for: still there? Then the fix below still matters.
    default = await ThreadItemConverter().to_agent_input(
        [i for i in a_conversation() if not isinstance(i, HiddenContextItem | WidgetItem)]
    )
    with pytest.raises(UserError, match="Unknown content"):
        Converter.items_to_messages(default)


async def test_history_is_valid_on_both_wire_formats() -> None:
    converted = await KitrelayConverter().to_agent_input(a_conversation())

    messages = Converter.items_to_messages(converted)
    check_chat({"model": "m", "messages": messages})
    check_responses({"model": "m", "input": converted})
    assert messages[3] == {"role": "assistant", "content": 'Added task #1 "buy milk".'}
    assert [m["role"] for m in messages] == ["user", "user", "user", "assistant", "user"]


async def test_a_widget_is_described_by_its_copy_text() -> None:
    items = Items()
    [message] = await KitrelayConverter().to_agent_input([items.widget()])
    assert message == {
        "type": "message",
        "role": "user",
        "content": "A Card widget was displayed to the user:\n#1 [ ] buy milk",
    }
    # Without copy text, ChatKit's JSON description is all there is.
    [fallback] = await KitrelayConverter().to_agent_input([items.widget(copy_text=False)])
    text = fallback["content"][0]["text"]  # type: ignore[index,typeddict-item]
    assert "was displayed to the user" in text and '"type":"Card"' in text


async def test_a_tool_result_comes_back_as_a_note_of_what_the_tool_did() -> None:
    [message] = await KitrelayConverter().to_agent_input([Items().tool_result('Added task #1 "buy milk".')])
    assert message["role"] == "user"  # type: ignore[typeddict-item]
    text = message["content"]  # type: ignore[typeddict-item]
    assert "Not shown to the user" in text and "add_task" in text and '{"title": "buy milk"}' in text
    assert 'returned: Added task #1 "buy milk".' in text


async def test_other_hidden_context_keeps_chatkits_conversion() -> None:
    items = Items()
    note = SDKHiddenContextItem(**items._base(), content="The user stopped the previous reply.")
    plain = HiddenContextItem(**items._base(), content="remember: the user prefers metric units")
    converted = await KitrelayConverter().to_agent_input([note, plain])
    assert "The user stopped the previous reply." in json.dumps(converted)
    assert "metric units" in json.dumps(converted)


@pytest.mark.parametrize(
    "content",
    [
        None,
        "text",
        {"kind": "other"},
        {"kind": KIND, "tool": "t", "arguments": "{}"},
        {"kind": KIND, "tool": 1, "arguments": "{}", "output": "x"},
    ],
)
def test_only_well_formed_tool_results_are_read_as_such(content: object) -> None:
    assert ToolResult.from_content(content) is None


# --- the token budget -------------------------------------------------------------------------------------------


def long_conversation(turns: int) -> list[ThreadItem]:
    items = Items()
    out: list[ThreadItem] = []
    for n in range(turns):
        out += [items.user(f"question {n} " + "x" * 400), items.assistant(f"answer {n} " + "y" * 400)]
    return out


async def test_the_whole_history_is_sent_when_it_fits() -> None:
    history = long_conversation(5)
    assert len(await KitrelayConverter(token_budget=100_000).to_agent_input(history)) == 10


async def test_the_oldest_items_go_first_to_fit_the_budget() -> None:
    history = [*long_conversation(20), Items().user("the newest question")]
    budget = 1000

    converted = await KitrelayConverter(token_budget=budget).to_agent_input(history)

    assert estimate_tokens(converted) <= budget
    assert converted[-1]["content"][0]["text"] == "the newest question"  # type: ignore[index,typeddict-item]
    kept_texts = json.dumps(converted)
    assert "answer 19" in kept_texts and "question 0 " not in kept_texts
    # A suffix of the history: nothing in the middle is skipped.
    assert len(converted) < len(history)
    expected = await KitrelayConverter(token_budget=10**9).to_agent_input(history[-len(converted) :])
    assert converted == expected


async def test_the_newest_user_message_is_kept_whatever_the_budget() -> None:
    items = Items()
    huge = items.user("z" * 10_000)
    after = items.tool_result("what the tool said")
    history = [*long_conversation(3), huge, after]

    converted = await KitrelayConverter(token_budget=10).to_agent_input(history)

    assert len(converted) == 2 and "z" * 100 in json.dumps(converted) and "what the tool said" in json.dumps(converted)


async def test_without_a_user_message_only_the_newest_item_is_sure_to_stay() -> None:
    items = Items()
    history = [items.assistant("a" * 4000), items.assistant("b" * 4000), items.assistant("the newest")]
    converted = await KitrelayConverter(token_budget=10).to_agent_input(history)
    assert converted == [{"type": "message", "role": "assistant", "content": "the newest"}]
    assert await KitrelayConverter().to_agent_input([]) == []


def test_the_budget_must_be_positive() -> None:
    with pytest.raises(ValueError):
        KitrelayConverter(token_budget=0)
