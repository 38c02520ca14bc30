"""A local OpenAI-compatible HTTP server for tests: the real openai client talks to it over a real socket.

It speaks both wire formats the Agents SDK uses:

- `POST .../responses`: the Responses API, streamed (SSE `event:`/`data:` frames of Responses events) or not;
- `POST .../chat/completions`: chat completions, streamed (`data: {chunk}` frames, tool calls as `tool_calls`
  deltas, then `data: [DONE]`) or not.

Any path prefix works (`/v1/responses`, `/v1beta/openai/chat/completions`), so it can stand in for OpenAI, Gemini's
compatibility endpoint or a vLLM server. Its "model" is kitrelay's offline policy (`offline_policy.decide`): the
request's messages and tools are turned back into the Responses-style items and SDK tools it reads, so the fake
calls the same tools and hands off to the same agents the offline model would. It checks requests the way the
real APIs do (the roles and content types each format allows, tool outputs answering earlier calls, the API key)
and answers 400/401 with OpenAI's error body otherwise. Every request is recorded for assertions, and every call it
answered with the tokens it would be billed (`answered`: the benchmark's model-cost figures count them).

Faults for outage tests: `fail_next` (an HTTP status, e.g. 429 or 500), `hang_next` (no answer at all),
`stall_next` (a stream that starts, then sends only keep-alive comments and never finishes).
"""

from __future__ import annotations

import asyncio
import collections
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import uvicorn
from agents import FunctionTool, Handoff, ModelSettings, ModelTracing, Tool
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from kitrelay.agents.offline_model import OfflineModel, split_tokens
from kitrelay.agents.offline_policy import Decision, TextAnswer, decide
from kitrelay.services.devservers import free_port
from kitrelay.shared.ids import new_id

Api = Literal["responses", "chat"]
# How kitrelay's title request begins (agents/titles.TITLE_PROMPT): such a request gets a title.
TITLE_PROMPT_START = "You name conversations"


@dataclass(frozen=True)
class RecordedRequest:
    api: Api
    path: str
    headers: Mapping[str, str]
    body: dict[str, Any]
    status: int = 200  # 0: the request was never answered (a `hang_next` fault)

    @property
    def model(self) -> str | None:
        return self.body.get("model")

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")

    def text(self) -> str:
        """Everything the request sent, as one string (for "the model saw X" assertions)."""
        return json.dumps(self.body.get("input") or self.body.get("messages"), ensure_ascii=False)


@dataclass(frozen=True)
class AnsweredCall:
    """One model call the fake answered, with the tokens a provider would bill for it: estimated at four
    characters a token (OpenAI's rule of thumb) over what the request sent (instructions, the conversation, the tool
    and handoff schemas) and over what the answer said (its text, or the call's name and arguments)."""

    model: str
    input_tokens: int
    output_tokens: int


def _tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4)


def bill(body: Mapping[str, Any], decision: Decision) -> tuple[int, int]:
    sent = {key: body.get(key) for key in ("instructions", "input", "messages", "tools")}
    said = decision.text if isinstance(decision, TextAnswer) else decision.name + decision.arguments
    return _tokens(json.dumps(sent, ensure_ascii=False)), _tokens(said)


@dataclass(frozen=True)
class Fault:
    kind: Literal["status", "hang", "stall"]
    status: int = 500
    # Sent as `retry-after-ms`, which the openai client honours: keeps retry tests fast.
    retry_after_ms: int | None = None
    code: str | None = None


class BadRequestError(Exception):
    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def _error(status: int, message: str, *, kind: str, code: str | None = None, param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)


# --- turning requests into what the offline policy reads -------------------------------------------------------


async def _never_called(*_: Any) -> Any:  # the fake only decides; the client runs the tools
    raise AssertionError("the fake server never runs tools")


def _offers(function_specs: Sequence[Mapping[str, Any]]) -> tuple[list[Tool], list[Handoff[Any, Any]]]:
    """SDK tool and handoff objects standing for the functions a request offers (`transfer_to_*` are handoffs)."""
    tools: list[Tool] = []
    handoffs: list[Handoff[Any, Any]] = []
    for spec in function_specs:
        name, schema = spec["name"], spec.get("parameters") or {}
        description = spec.get("description") or ""
        if name.startswith("transfer_to_"):
            handoffs.append(Handoff(name, description, schema, _never_called, name.removeprefix("transfer_to_")))
        else:
            tools.append(FunctionTool(name, description, schema, _never_called))
    return tools, handoffs


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def chat_to_items(messages: Sequence[Mapping[str, Any]]) -> list[Any]:
    """Chat messages as Responses-style input items (system prompts are left out: the policy ignores them)."""
    items: list[dict[str, Any]] = []
    for message in messages:
        role = message["role"]
        if role == "user":
            items.append({"role": "user", "content": message["content"]})
        elif role == "assistant":
            if message.get("content"):
                items.append({"role": "assistant", "content": _text_of(message["content"])})
            for call in message.get("tool_calls") or []:
                function = call["function"]
                items.append(
                    {
                        "type": "function_call",
                        "call_id": call["id"],
                        "name": function["name"],
                        "arguments": function["arguments"],
                    }
                )
        elif role == "tool":
            items.append(
                {"type": "function_call_output", "call_id": message["tool_call_id"], "output": message["content"]}
            )
    return items


# --- request checks, as the real APIs make them -----------------------------------------------------------------

_CHAT_ROLES = {"system", "developer", "user", "assistant", "tool"}
_CHAT_USER_PARTS = {"text", "image_url", "input_audio", "file"}
_CHAT_ASSISTANT_PARTS = {"text", "refusal"}
_RESPONSES_ROLES = {"system", "developer", "user", "assistant"}
_RESPONSES_USER_PARTS = {"input_text", "input_image", "input_file"}
_RESPONSES_ASSISTANT_PARTS = {"output_text", "refusal"}


def _check_parts(content: object, allowed: set[str], where: str) -> None:
    if isinstance(content, str) or content is None:
        return
    if not isinstance(content, list):
        raise BadRequestError(f"Invalid type for '{where}': expected a string or an array.", param=where)
    for n, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in allowed:
            raise BadRequestError(
                f"Invalid value: '{kind}'. Supported values are: {', '.join(sorted(allowed))}.",
                param=f"{where}[{n}].type",
            )


def _check_chat_message(n: int, message: Mapping[str, Any], awaiting: set[str]) -> None:
    """One message; `awaiting` holds the tool calls of the last assistant message not answered yet."""
    role = message.get("role")
    if role not in _CHAT_ROLES:
        raise BadRequestError(f"Invalid value: '{role}'.", param=f"messages[{n}].role")
    if awaiting and role != "tool":
        raise BadRequestError(
            "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
            f"'tool_call_id'. The following tool_call_ids did not have response messages: {sorted(awaiting)}",
            param=f"messages[{n}].role",
        )
    if role == "user":
        _check_parts(message.get("content"), _CHAT_USER_PARTS, f"messages[{n}].content")
    elif role == "assistant":
        _check_parts(message.get("content"), _CHAT_ASSISTANT_PARTS, f"messages[{n}].content")
        for call in message.get("tool_calls") or []:
            if not call.get("id") or not isinstance(call.get("function", {}).get("arguments"), str):
                raise BadRequestError("Invalid tool call.", param=f"messages[{n}].tool_calls")
            awaiting.add(call["id"])
    elif role == "tool":
        call_id = message.get("tool_call_id")
        if call_id not in awaiting:
            raise BadRequestError(
                "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with "
                "'tool_calls'.",
                param=f"messages[{n}].role",
            )
        awaiting.discard(call_id)


def check_chat(body: Mapping[str, Any]) -> None:
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise BadRequestError("you must provide a model parameter", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequestError("'messages' must be a non-empty array", param="messages")
    awaiting: set[str] = set()
    for n, message in enumerate(messages):
        _check_chat_message(n, message, awaiting)
    if awaiting:
        raise BadRequestError(f"tool_call_ids without response messages: {sorted(awaiting)}", param="messages")


def check_responses(body: Mapping[str, Any]) -> None:
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise BadRequestError("Missing required parameter: 'model'.", param="model")
    items = body.get("input")
    if isinstance(items, str):
        return
    if not isinstance(items, list):
        raise BadRequestError("Invalid type for 'input'.", param="input")
    calls: set[str] = set()
    for n, item in enumerate(items):
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in _RESPONSES_ROLES:
                raise BadRequestError(f"Invalid value: '{role}'.", param=f"input[{n}].role")
            allowed = _RESPONSES_ASSISTANT_PARTS if role == "assistant" else _RESPONSES_USER_PARTS
            _check_parts(item.get("content"), allowed, f"input[{n}].content")
        elif kind == "function_call":
            calls.add(item["call_id"])
        elif kind == "function_call_output":
            if item.get("call_id") not in calls:
                raise BadRequestError(
                    f"No tool call found for function call output with call_id {item.get('call_id')}.",
                    param=f"input[{n}]",
                )
        else:
            raise BadRequestError(f"Unsupported input item type '{kind}'.", param=f"input[{n}].type")


# --- answers ----------------------------------------------------------------------------------------------------


def _usage_chat(body: Mapping[str, Any], completion: int) -> dict[str, int]:
    prompt = max(1, len(json.dumps(body.get("messages"))) // 4)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _chat_chunks(decision: Decision, model: str) -> Iterator[dict[str, Any]]:
    base = {"id": new_id("chatcmpl"), "object": "chat.completion.chunk", "created": int(time.time()), "model": model}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    if isinstance(decision, TextAnswer):
        yield chunk({"role": "assistant", "content": ""})
        for token in split_tokens(decision.text):
            yield chunk({"content": token})
        yield chunk({}, "stop")
        return
    call = {"index": 0, "id": new_id("call"), "type": "function", "function": {"name": decision.name, "arguments": ""}}
    yield chunk({"role": "assistant", "content": None, "tool_calls": [call]})
    # Arguments arrive in pieces, as real servers send them.
    arguments = decision.arguments
    step = max(1, len(arguments) // 3)
    for start in range(0, len(arguments), step):
        yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments[start : start + step]}}]})
    yield chunk({}, "tool_calls")


def _chat_completion(decision: Decision, body: Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(decision, TextAnswer):
        message: dict[str, Any] = {"role": "assistant", "content": decision.text}
        finish, completion = "stop", len(split_tokens(decision.text))
    else:
        call = {
            "id": new_id("call"),
            "type": "function",
            "function": {"name": decision.name, "arguments": decision.arguments},
        }
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
        finish, completion = "tool_calls", max(1, len(decision.arguments) // 4)
    return {
        "id": new_id("chatcmpl"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body["model"],
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": _usage_chat(body, completion),
    }


def _response_created(body: Mapping[str, Any]) -> bytes:
    response = {
        "id": new_id("resp"),
        "object": "response",
        "created_at": time.time(),
        "model": body["model"],
        "status": "in_progress",
        "output": [],
        "parallel_tool_calls": False,
        "tool_choice": "auto",
        "tools": [],
    }
    return _sse({"type": "response.created", "sequence_number": 0, "response": response}, "response.created")


def _sse(data: Mapping[str, Any] | str, event: str | None = None) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return ((f"event: {event}\n" if event else "") + f"data: {payload}\n\n").encode()


# --- the server -------------------------------------------------------------------------------------------------


@dataclass
class FakeOpenAIServer:
    """Run it with `running_fake_openai()`; `base_url` is what a client's `base_url` should be."""

    api_key: str | None = "test-key"
    port: int = 0
    requests: list[RecordedRequest] = field(default_factory=list)
    # Requests for a conversation title, kept apart from the conversation's (see `_handle`).
    title_requests: list[RecordedRequest] = field(default_factory=list)
    # Every model call answered (not refused, not a fault), with its estimated tokens.
    answered: list[AnsweredCall] = field(default_factory=list)
    _faults: collections.deque[Fault] = field(default_factory=collections.deque)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    # -- faults ---------------------------------------------------------------------------------------------------

    def fail_next(
        self, count: int = 1, *, status: int = 500, retry_after_ms: int | None = 10, code: str | None = None
    ) -> None:
        with self._lock:
            self._faults.extend(Fault("status", status, retry_after_ms, code) for _ in range(count))

    def hang_next(self, count: int = 1) -> None:
        """The next requests get no answer at all (until the server stops)."""
        with self._lock:
            self._faults.extend(Fault("hang") for _ in range(count))

    def stall_next(self, count: int = 1) -> None:
        """The next requests get a stream that starts and then only sends keep-alive comments."""
        with self._lock:
            self._faults.extend(Fault("stall") for _ in range(count))

    def _next_fault(self) -> Fault | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    # -- requests -------------------------------------------------------------------------------------------------

    async def _idle_until_stopped(self) -> None:
        await asyncio.to_thread(self._stopping.wait)

    async def _stalled(self, first: bytes) -> AsyncIterator[bytes]:
        yield first
        while not self._stopping.is_set():
            await asyncio.sleep(0.05)
            yield b": keep-alive\n\n"

    async def _handle(self, request: Request, api: Api) -> Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        headers = {key.lower(): value for key, value in request.headers.items()}
        if not isinstance(body, dict):
            return _error(400, "We could not parse the JSON body of your request.", kind="invalid_request_error")
        if self.api_key is not None and headers.get("authorization") != f"Bearer {self.api_key}":
            self.requests.append(RecordedRequest(api, request.url.path, headers, body, 401))
            return _error(401, "Incorrect API key provided.", kind="invalid_request_error", code="invalid_api_key")
        # A title request (agents/titles.py) is answered beside the conversation: faults and `requests` are the
        # conversation's, and a title asked for in the same turn must not take a fault meant for it.
        if (titled := self._title_answer(api, body)) is not None:
            self.title_requests.append(RecordedRequest(api, request.url.path, headers, body))
            return titled
        fault = self._next_fault()
        if fault is not None and fault.kind == "status":
            self.requests.append(RecordedRequest(api, request.url.path, headers, body, fault.status))
            extra = {"retry-after-ms": str(fault.retry_after_ms)} if fault.retry_after_ms is not None else {}
            kind = "rate_limit_exceeded" if fault.status == 429 else "server_error"
            response = _error(fault.status, f"fake {fault.status}", kind=kind, code=fault.code)
            response.headers.update(extra)
            return response
        if fault is not None and fault.kind == "hang":
            self.requests.append(RecordedRequest(api, request.url.path, headers, body, 0))
            await self._idle_until_stopped()
            return _error(503, "stopped", kind="server_error")
        try:
            check_chat(body) if api == "chat" else check_responses(body)
        except BadRequestError as exc:
            self.requests.append(RecordedRequest(api, request.url.path, headers, body, 400))
            return _error(400, exc.message, kind="invalid_request_error", param=exc.param)
        self.requests.append(RecordedRequest(api, request.url.path, headers, body))
        if fault is not None and fault.kind == "stall":
            first = (
                _response_created(body)
                if api == "responses"
                else _sse(next(_chat_chunks(TextAnswer(""), body["model"])))
            )
            return StreamingResponse(self._stalled(first), media_type="text/event-stream")
        return await (self._chat(body) if api == "chat" else self._responses(body))

    def _title_answer(self, api: Api, body: dict[str, Any]) -> Response | None:
        """A request for a conversation's title (agents/titles.py) gets one, as a model asked for one would give: the
        user's message in a few capitalised words. None for any other request."""
        if api == "chat":
            messages = body.get("messages") or []
            system = next((_text_of(m.get("content")) for m in messages if m.get("role") == "system"), "")
            user = next((_text_of(m.get("content")) for m in messages if m.get("role") == "user"), "")
        else:
            system = str(body.get("instructions") or "")
            items = body.get("input")
            user = (
                items
                if isinstance(items, str)
                else next((_text_of(item.get("content")) for item in items or [] if item.get("role") == "user"), "")
            )
        if not system.startswith(TITLE_PROMPT_START):
            return None
        title = " ".join(word.capitalize() for word in user.split()[:4]) or "Untitled"
        if api == "chat":
            return JSONResponse(_chat_completion(TextAnswer(title), body))
        message = {
            "type": "message",
            "id": new_id("msg"),
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": f'"{title}."', "annotations": []}],
        }
        usage = {
            "input_tokens": 1,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 1,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 2,
        }
        return JSONResponse(
            {
                "id": new_id("resp"),
                "object": "response",
                "created_at": time.time(),
                "model": body["model"],
                "status": "completed",
                "output": [message],
                "parallel_tool_calls": False,
                "tool_choice": "auto",
                "tools": [],
                "usage": usage,
            }
        )

    async def _chat(self, body: dict[str, Any]) -> Response:
        specs = [t["function"] for t in body.get("tools") or [] if t.get("type") == "function"]
        tools, handoffs = _offers(specs)
        decision = decide(
            chat_to_items(body["messages"]), tools, handoffs, allow_calls=body.get("tool_choice") != "none"
        )
        self._answered(body, decision)
        if not body.get("stream"):
            return JSONResponse(_chat_completion(decision, body))

        async def frames() -> AsyncIterator[bytes]:
            completion = 0
            for chunk in _chat_chunks(decision, body["model"]):
                completion += 1
                yield _sse(chunk)
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {"id": new_id("chatcmpl"), "object": "chat.completion.chunk", "created": int(time.time())}
                yield _sse({**usage, "model": body["model"], "choices": [], "usage": _usage_chat(body, completion)})
            yield _sse("[DONE]")

        return StreamingResponse(frames(), media_type="text/event-stream")

    async def _responses(self, body: dict[str, Any]) -> Response:
        specs = [t for t in body.get("tools") or [] if t.get("type") == "function"]
        tools, handoffs = _offers(specs)
        model = OfflineModel(name=body["model"])
        settings = ModelSettings(tool_choice="none" if body.get("tool_choice") == "none" else None)
        # The model decides the same again (it is deterministic): this one is only for the bill.
        self._answered(body, decide(body["input"], tools, handoffs, allow_calls=settings.tool_choice != "none"))
        args = (body.get("instructions"), body["input"], settings, tools, None, handoffs, ModelTracing.DISABLED)
        if not body.get("stream"):
            answer = await model.get_response(*args)
            return JSONResponse(
                {
                    "id": answer.response_id,
                    "object": "response",
                    "created_at": time.time(),
                    "model": body["model"],
                    "status": "completed",
                    "output": [item.model_dump(mode="json") for item in answer.output],
                    "parallel_tool_calls": False,
                    "tool_choice": "auto",
                    "tools": [],
                    "usage": {
                        "input_tokens": answer.usage.input_tokens,
                        "input_tokens_details": {"cached_tokens": 0},
                        "output_tokens": answer.usage.output_tokens,
                        "output_tokens_details": {"reasoning_tokens": 0},
                        "total_tokens": answer.usage.total_tokens,
                    },
                }
            )

        async def frames() -> AsyncIterator[bytes]:
            # The offline model's events are openai's own types: on the wire, they are exactly what OpenAI sends.
            async for event in model.stream_response(*args):
                yield _sse(event.model_dump(mode="json"), event.type)

        return StreamingResponse(frames(), media_type="text/event-stream")

    def _answered(self, body: Mapping[str, Any], decision: Decision) -> None:
        input_tokens, output_tokens = bill(body, decision)
        with self._lock:
            self.answered.append(AnsweredCall(str(body["model"]), input_tokens, output_tokens))

    def app(self) -> Starlette:
        async def chat(request: Request) -> Response:
            return await self._handle(request, "chat")

        async def responses(request: Request) -> Response:
            return await self._handle(request, "responses")

        return Starlette(
            routes=[
                Route("/{prefix:path}/chat/completions", chat, methods=["POST"]),
                Route("/{prefix:path}/responses", responses, methods=["POST"]),
            ]
        )


@contextmanager
def running_fake_openai(*, api_key: str | None = "test-key") -> Iterator[FakeOpenAIServer]:
    """The fake on a free loopback port, served by uvicorn in a background thread until the block ends."""
    fake = FakeOpenAIServer(api_key=api_key, port=free_port())
    config = uvicorn.Config(
        fake.app(), host="127.0.0.1", port=fake.port, log_level="warning", lifespan="off", timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"fake-openai-{fake.port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the fake OpenAI server did not start")
        time.sleep(0.01)
    try:
        yield fake
    finally:
        fake._stopping.set()
        server.should_exit = True
        thread.join(timeout=10)


__all__ = [
    "AnsweredCall",
    "FakeOpenAIServer",
    "RecordedRequest",
    "chat_to_items",
    "check_chat",
    "check_responses",
    "running_fake_openai",
]
