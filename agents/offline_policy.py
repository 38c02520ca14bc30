"""What the offline model says or calls, decided from the conversation and the tools and handoffs on offer.

Pure functions: the newest user message is classified by `intents.parse_intent`; the decision is at most one call
of an offered tool or handoff (with arguments filled from its JSON schema), or a plain-text answer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Final

from agents import FunctionTool, Handoff, Tool
from agents.items import TResponseInputItem

from kitrelay.agents.intents import Intent, IntentKind, parse_intent

DEFAULT_MODEL_NAME: Final = "kitrelay-offline"

# What the chat page's empty state offers too (gateway/static): the team's tasks and its knowledge base.
GREETING_TEXT: Final = (
    "Hi! I manage your team's tasks and answer questions from its knowledge base. "
    'Try "add task buy milk" or "what does the guide say about VPN access?".'
)
HELP_TEXT: Final = (
    'Here is what you can say: "add task buy milk by tomorrow", "list my tasks", "show open tasks", '
    '"complete task 3", "reopen task 3", "rename task 3 to buy oat milk", "assign task 3 to @bob", "delete task 3"; '
    'or ask the knowledge base: "what does the guide say about VPN access?".'
)
THANKS_TEXT: Final = "You're welcome!"
FALLBACK_TEXT: Final = 'Sorry, I didn\'t understand that. Try "add task buy milk" or "list my tasks".'
# A tool that returns nothing still did its job; an empty assistant message would look like a failure.
EMPTY_TOOL_OUTPUT_TEXT: Final = "Done."

# The one tool each intent may call, by the tool's name.
TOOL_FOR_INTENT: Final[Mapping[IntentKind, str]] = {
    IntentKind.ADD_TASK: "add_task",
    IntentKind.LIST_TASKS: "list_tasks",
    IntentKind.COMPLETE_TASK: "complete_task",
    IntentKind.REOPEN_TASK: "reopen_task",
    IntentKind.DELETE_TASK: "delete_task",
    IntentKind.RENAME_TASK: "rename_task",
    IntentKind.ASSIGN_TASK: "assign_task",
    IntentKind.QUESTION: "search_knowledge",
}

# Other spellings of the intent's slots that a tool's parameters may use (parameter name -> slot name).
_PARAMETER_ALIASES: Final[Mapping[str, str]] = {
    "id": "task_id",
    "task_number": "task_id",
    "number": "task_id",
    "name": "title",
    "task_title": "title",
    "task_name": "title",
    "new_name": "new_title",
    "user": "assignee",
    "username": "assignee",
    "assign_to": "assignee",
    "assigned_to": "assignee",
    "due": "due_date",
    "due_on": "due_date",
    "deadline": "due_date",
    "filter": "status",
    "state": "status",
    "q": "query",
    "question": "query",
    "search_query": "query",
}
# Status words a tool's enum may use instead of ours.
_STATUS_SYNONYMS: Final[Mapping[str, tuple[str, ...]]] = {
    "all": ("all", "any"),
    "open": ("open", "pending", "todo", "incomplete", "active", "not_done"),
    "done": ("done", "completed", "complete", "closed", "finished"),
}


@dataclass(frozen=True, slots=True)
class TextAnswer:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    name: str
    arguments: str  # JSON, exactly as a real model sends it


Decision = TextAnswer | ToolCall


# --- reading the input ------------------------------------------------------------------------------------------


def as_items(input: str | Sequence[TResponseInputItem]) -> list[Mapping[str, Any]]:
    if isinstance(input, str):
        return [{"role": "user", "content": input}]
    items: list[Mapping[str, Any]] = []
    for item in input:
        # The runner sends plain dicts, but a pydantic item is cheap to accept too.
        dump = getattr(item, "model_dump", None)
        items.append(dump(exclude_none=True) if callable(dump) else item)
    return items


def _parts_text(content: object, part_types: frozenset[str]) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, Sequence):
        return ""
    texts = [
        str(part.get("text", "")) for part in content if isinstance(part, Mapping) and part.get("type") in part_types
    ]
    return "".join(texts)


_USER_TEXT_PARTS: Final = frozenset({"input_text", "text"})
_TOOL_TEXT_PARTS: Final = frozenset({"input_text", "output_text", "text"})


def latest_user_text(items: Sequence[Mapping[str, Any]]) -> str | None:
    """The newest user message. An empty one is still the newest: falling back to an older message would
    repeat a command the user already gave."""
    for item in reversed(items):
        if item.get("role") == "user" and item.get("type", "message") == "message":
            return _parts_text(item.get("content"), _USER_TEXT_PARTS)
    return None


def _called_tool_name(items: Sequence[Mapping[str, Any]], call_id: object) -> str | None:
    for item in reversed(items):
        if item.get("type") == "function_call" and item.get("call_id") == call_id:
            name = item.get("name")
            return name if isinstance(name, str) else None
    return None


def _is_handoff_output(tool_name: str | None, output: str) -> bool:
    if tool_name is not None and tool_name.startswith("transfer_to_"):
        return True
    # The SDK's transfer message is `{"assistant": "<agent name>"}`; trust its shape if the call is out of view.
    try:
        data = json.loads(output)
    except ValueError:
        return False
    return isinstance(data, dict) and set(data) == {"assistant"}


def answer_from_tool_output(output: str) -> str:
    """Tools here return a sentence for the user; JSON tools put it under "message"."""
    text = output.strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("message"), str) and data["message"].strip():
        text = data["message"].strip()
    return text or EMPTY_TOOL_OUTPUT_TEXT


# --- filling a tool's parameters --------------------------------------------------------------------------------

_MISSING: Final = object()


def _variants(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The alternatives a value may match, with `$ref`s resolved (pydantic puts enums under `$defs`)."""
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        target = defs.get(ref.removeprefix("#/$defs/"))
        return _variants(target, defs) if isinstance(target, Mapping) else []
    alternatives = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(alternatives, list):
        return [v for alt in alternatives if isinstance(alt, Mapping) for v in _variants(alt, defs)]
    return [schema]


def _types(variant: Mapping[str, Any]) -> list[str]:
    declared = variant.get("type")
    if isinstance(declared, str):
        return [declared]
    return [t for t in declared if isinstance(t, str)] if isinstance(declared, list) else []


def _allows_null(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> bool:
    return any("null" in _types(v) or v.get("const", _MISSING) is None for v in _variants(schema, defs))


def _fit(value: object, schema: Mapping[str, Any], defs: Mapping[str, Any]) -> object:
    """Convert a slot value into something the parameter's schema accepts, or return `_MISSING`."""
    for variant in _variants(schema, defs):
        enum = variant.get("enum")
        if isinstance(enum, list):
            candidates = _STATUS_SYNONYMS.get(str(value), (str(value),))
            chosen = next((c for c in candidates if c in enum), _MISSING)
            if chosen is not _MISSING:
                return chosen
            continue
        for kind in _types(variant):
            if kind == "integer" and isinstance(value, int) and not isinstance(value, bool):
                return value
            if kind == "integer" and isinstance(value, str) and value.isdigit():
                return int(value)
            if kind == "number" and isinstance(value, int | float) and not isinstance(value, bool):
                return value
            if kind == "string" and isinstance(value, str | int) and not isinstance(value, bool):
                return str(value)
    return _MISSING


def fill_arguments(schema: Mapping[str, Any], values: Mapping[str, object]) -> dict[str, Any] | None:
    """Arguments valid for a JSON schema, taken from the intent's slots by parameter name.

    Strict tools make every parameter required, so a parameter with no slot value gets null when the schema
    allows it, else its default. Returns None when a required parameter can be filled neither way: the model
    then answers in text rather than send arguments the tool would reject."""
    properties = schema.get("properties")
    if not isinstance(properties, Mapping):
        return {}
    required = set(schema.get("required") or ())
    defs = schema.get("$defs") or {}
    arguments: dict[str, Any] = {}
    for name, prop in properties.items():
        if not isinstance(prop, Mapping):
            return None
        value = values.get(_PARAMETER_ALIASES.get(name, name))
        fitted = _MISSING if value is None else _fit(value, prop, defs)
        if fitted is _MISSING:
            if name not in required:
                continue
            if _allows_null(prop, defs):
                fitted = None
            elif "default" in prop:
                fitted = prop["default"]
            else:
                return None
        arguments[name] = fitted
    return arguments


def _slot_values(intent: Intent) -> dict[str, object]:
    values: dict[str, object] = {
        "title": intent.new_title if intent.kind is IntentKind.RENAME_TASK else intent.title,
        "task_id": intent.task_id,
        "new_title": intent.new_title,
        "assignee": intent.assignee,
        "status": intent.status,
        "due_date": intent.due_date.isoformat() if intent.due_date else None,
        "query": intent.query,
    }
    return {name: value for name, value in values.items() if value is not None}


# --- deciding ---------------------------------------------------------------------------------------------------


def _tool_call(intent: Intent, tools: Sequence[Tool]) -> ToolCall | None:
    wanted = TOOL_FOR_INTENT.get(intent.kind)
    for tool in tools:
        if isinstance(tool, FunctionTool) and tool.name == wanted:
            arguments = fill_arguments(tool.params_json_schema, _slot_values(intent))
            if arguments is not None:
                return ToolCall(tool.name, json.dumps(arguments, ensure_ascii=False))
    return None


def _handoff_call(intent: Intent, handoffs: Sequence[Handoff[Any, Any]]) -> ToolCall | None:
    if intent.is_task:
        keyword = "task"
    elif intent.kind is IntentKind.QUESTION:
        keyword = "research"
    else:
        # Small talk, help and what nobody understands belong to the front desk: a specialist that a thread stayed
        # with hands them back to triage (which is offered no handoff to itself, so it answers them).
        keyword = "triage"
    for handoff in handoffs:
        if keyword in handoff.tool_name.lower():
            arguments = fill_arguments(handoff.input_json_schema, _slot_values(intent))
            if arguments is not None:
                return ToolCall(handoff.tool_name, json.dumps(arguments, ensure_ascii=False))
    return None


def _reply_text(intent: Intent) -> str:
    if intent.kind is IntentKind.GREETING:
        return GREETING_TEXT
    if intent.kind is IntentKind.HELP:
        return HELP_TEXT
    if intent.kind is IntentKind.THANKS:
        return THANKS_TEXT
    return FALLBACK_TEXT


def decide(
    input: str | Sequence[TResponseInputItem],
    tools: Sequence[Tool],
    handoffs: Sequence[Handoff[Any, Any]],
    *,
    allow_calls: bool = True,
    today: date | None = None,
) -> Decision:
    """The model's whole behaviour: the same input and offers always give the same decision."""
    items = as_items(input)
    after_handoff = False
    if items and items[-1].get("type") == "function_call_output":
        output = _parts_text(items[-1].get("output"), _TOOL_TEXT_PARTS)
        if not _is_handoff_output(_called_tool_name(items, items[-1].get("call_id")), output):
            # A tool has answered: report it and stop, so the run can never loop on tool calls.
            return TextAnswer(answer_from_tool_output(output))
        # A handoff only switched agents; the new agent handles the user's message afresh.
        after_handoff = True
    user_text = latest_user_text(items)
    if user_text is None:
        return TextAnswer(FALLBACK_TEXT)
    intent = parse_intent(user_text, today=today)
    if allow_calls:
        if call := _tool_call(intent, tools):
            return call
        # No second handoff straight after one, so two agents can never pass a message back and forth.
        if not after_handoff and (call := _handoff_call(intent, handoffs)):
            return call
    return TextAnswer(_reply_text(intent))
