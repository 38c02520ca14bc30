"""The plain API, for bots and scripts that do not speak ChatKit: a message in, the reply out, and a thread's
history as plain JSON.

It is a translation layer, nothing more: each message becomes a ChatKit `threads.create` or
`threads.add_user_message` request that goes through the same checks and the same ChatKit server as `/chatkit`
(`run_chatkit_request`), so it lands in the same threads, runs on the same workers and shows up in a ChatKit UI.
The ChatKit events are then translated into a small vocabulary (docs/plain-api.md): as SSE when the client asks
for `text/event-stream`, else as one JSON answer once the reply is complete.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from datetime import datetime
from typing import Annotated, Any, Literal

from chatkit.server import StreamingResult
from chatkit.types import (
    AssistantMessageItem,
    ThreadItem,
    UserMessageItem,
    WidgetItem,
)
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from sse_starlette import ServerSentEvent

from kitrelay.gateway.client import user_input
from kitrelay.gateway.context import RequestContext
from kitrelay.gateway.deps import ContextDep, LimiterDep, ServerDep, SettingsDep, StoreDep, enforce_rate_limit
from kitrelay.gateway.errors import ERROR_RESPONSES, ApiError, ErrorBody
from kitrelay.gateway.limits import TurnSlot
from kitrelay.gateway.requests import parse_request, read_body, require_json, require_plausible_id
from kitrelay.gateway.routes import run_chatkit_request
from kitrelay.gateway.server import TURN_EFFECT
from kitrelay.gateway.sse import sse_events, sse_response
from kitrelay.shared.store.models import ID_LENGTH, as_utc

router = APIRouter(tags=["plain"], dependencies=[Depends(enforce_rate_limit)])

MAX_HISTORY_PAGE = 100
_item_adapter: TypeAdapter[ThreadItem] = TypeAdapter(ThreadItem)
_TEXT_DELTA = "assistant_message.content_part.text_delta"


# -- the models (they are the OpenAPI schema) ------------------------------------------------------------------------


class ChatRequest(BaseModel):
    """A message to send; without `thread_id` it starts a new thread."""

    model_config = ConfigDict(extra="forbid")

    # The real bound is MAX_MESSAGE_CHARS, checked with the ChatKit request (one rule for both APIs).
    message: str = Field(min_length=1, description="What the user says.")
    thread_id: str | None = Field(default=None, max_length=ID_LENGTH, description="Continue this thread.")


# ISO 8601 with the offset, always UTC: chatkit stamps the items of a stream with naive local time (datetime.now()).
UtcTime = Annotated[datetime, AfterValidator(as_utc)]


class PlainWidget(BaseModel):
    item_id: str
    widget: dict[str, Any] = Field(description="The ChatKit widget tree, as a ChatKit UI gets it.")
    copy_text: str | None = None


class PlainMessage(BaseModel):
    """One thread item as plain JSON: a user or assistant message, or a widget (with its copy text as `text`)."""

    id: str
    role: Literal["user", "assistant", "widget"]
    text: str
    created_at: UtcTime
    widget: dict[str, Any] | None = None


class PlainError(BaseModel):
    message: str
    retryable: bool


class Reply(BaseModel):
    text: str = Field(description="The assistant's messages, joined by blank lines.")
    widgets: list[PlainWidget]
    sources: list[dict[str, Any]] = Field(description="What the text cites (ChatKit annotation sources).")
    error: PlainError | None = Field(default=None, description="Set when the turn ended in an error.")


class ChatReply(BaseModel):
    thread_id: str
    turn_id: str | None
    reply: Reply
    items: list[PlainMessage] = Field(description="The items this turn added, the user's message first.")


class HistoryPage(BaseModel):
    thread_id: str
    data: list[PlainMessage]
    has_more: bool
    after: str | None = Field(description="Pass as `after` for the next page.")


class ThreadSummary(BaseModel):
    id: str
    title: str | None
    created_at: UtcTime


class ThreadsPage(BaseModel):
    data: list[ThreadSummary]
    has_more: bool
    after: str | None


def _request_schema() -> dict[str, Any]:
    schema = ChatRequest.model_json_schema()
    schema.pop("title", None)
    return schema


_CHAT_OPENAPI: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": _request_schema()}}},
    "responses": {
        "200": {
            "description": "The whole reply as JSON; or, with `Accept: text/event-stream`, the reply as it is "
            "written (events thread, delta, widget, progress, notice, removed, error, done).",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
    },
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    403: {"model": ErrorBody, "description": "The user id in the path is not the caller's"},
}


# -- translation ----------------------------------------------------------------------------------------------------


def message_text(item: AssistantMessageItem | UserMessageItem) -> str:
    return "".join(part.text for part in item.content if hasattr(part, "text"))


def plain_item(item: ThreadItem) -> PlainMessage | None:
    """The plain form of an item; None for what a plain client has no use for (hidden context, tool calls)."""
    if isinstance(item, UserMessageItem):
        return PlainMessage(id=item.id, role="user", text=message_text(item), created_at=item.created_at)
    if isinstance(item, AssistantMessageItem):
        return PlainMessage(id=item.id, role="assistant", text=message_text(item), created_at=item.created_at)
    if isinstance(item, WidgetItem):
        widget = item.widget.model_dump(mode="json", by_alias=True, exclude_none=True)
        return PlainMessage(
            id=item.id, role="widget", text=item.copy_text or "", created_at=item.created_at, widget=widget
        )
    return None


class Translation:
    """Follows one ChatKit event stream and says what a plain client sees: events as they come, the reply at the
    end. Items are kept by id, so a replaced item shows its new version and a withdrawn one (a redelivered turn's
    dead attempt) disappears."""

    def __init__(self, thread_id: str | None) -> None:
        self.thread_id = thread_id
        self.turn_id: str | None = None
        self.items: dict[str, dict[str, Any]] = {}
        self.error: PlainError | None = None

    def events(self, data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """The plain events for one ChatKit event (often none)."""
        match data.get("type"):
            case "thread.created":
                self.thread_id = data["thread"]["id"]
            case "client_effect" if data.get("name") == TURN_EFFECT:
                self.turn_id = data["data"]["turn_id"]
                return [("thread", {"thread_id": self.thread_id, "turn_id": self.turn_id})]
            case "thread.item.updated" if data["update"].get("type") == _TEXT_DELTA:
                return [("delta", {"item_id": data["item_id"], "text": data["update"]["delta"]})]
            case "thread.item.done" | "thread.item.replaced":
                item = data["item"]
                self.items[item["id"]] = item
                if item.get("type") == "widget":
                    widget = {"item_id": item["id"], "widget": item["widget"], "copy_text": item.get("copy_text")}
                    return [("widget", widget)]
            case "thread.item.removed":
                if self.items.pop(data["item_id"], None) is not None:
                    return [("removed", {"item_id": data["item_id"]})]
            case "progress_update":
                return [("progress", {"text": data.get("text", "")})]
            case "notice":
                notice = {"level": data.get("level"), "title": data.get("title"), "message": data.get("message")}
                return [("notice", notice)]
            case "error":
                message = data.get("message") or "The reply could not be completed. Try again."
                self.error = PlainError(message=message, retryable=bool(data.get("allow_retry")))
                return [("error", self.error.model_dump())]
            case _:
                pass
        return []

    def reply(self) -> ChatReply:
        texts: list[str] = []
        widgets: list[PlainWidget] = []
        sources: list[dict[str, Any]] = []
        plain: list[PlainMessage] = []
        for data in self.items.values():
            item = _item_adapter_validate(data)
            if item is None:
                continue
            if (shown := plain_item(item)) is not None:
                plain.append(shown)
            if isinstance(item, AssistantMessageItem):
                texts.append(message_text(item))
                for part in item.content:
                    for annotation in part.annotations:
                        source = annotation.source.model_dump(mode="json", by_alias=True, exclude_none=True)
                        if source not in sources:
                            sources.append(source)
            elif isinstance(item, WidgetItem):
                widgets.append(
                    PlainWidget(
                        item_id=item.id,
                        widget=item.widget.model_dump(mode="json", by_alias=True, exclude_none=True),
                        copy_text=item.copy_text,
                    )
                )
        reply = Reply(
            text="\n\n".join(text for text in texts if text), widgets=widgets, sources=sources, error=self.error
        )
        return ChatReply(thread_id=self.thread_id or "", turn_id=self.turn_id, reply=reply, items=plain)


def _item_adapter_validate(data: dict[str, Any]) -> ThreadItem | None:
    try:
        return _item_adapter.validate_python(data)
    except ValidationError:
        return None


# -- routes ---------------------------------------------------------------------------------------------------------


UserIdPath = Annotated[str, Path(description="Your own user id (the token's `sub`; in dev mode DEV_USER_ID).")]


def _require_self(user_id: str, context: RequestContext) -> None:
    # The caller knows its own id, so saying "not yours" reveals nothing; a 404 would only confuse.
    if user_id != context.identity.user_id:
        raise ApiError(403, "forbidden", "The user id in the path must be your own (the token's user).")


def _parse_chat_request(body: bytes) -> ChatRequest:
    if not body.strip():
        raise ApiError(400, "invalid_request", 'The request body is empty: send {"message": "..."}.')
    try:
        return ChatRequest.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        if errors[0]["type"] == "json_invalid":
            raise ApiError(400, "malformed_json", f"The request body is not valid JSON ({errors[0]['msg']}).") from None
        details = [
            {"field": ".".join(str(part) for part in error["loc"]) or "body", "message": error["msg"]}
            for error in errors
        ]
        first = details[0]
        raise ApiError(
            400, "invalid_request", f"Invalid request: {first['field']}: {first['message']}.", details
        ) from None


def _chatkit_body(chat: ChatRequest) -> bytes:
    """The ChatKit request a ChatKit UI would send for this message."""
    message = user_input(chat.message)
    if chat.thread_id is None:
        request: dict[str, Any] = {"type": "threads.create", "params": {"input": message}}
    else:
        request = {"type": "threads.add_user_message", "params": {"thread_id": chat.thread_id, "input": message}}
    return json.dumps(request).encode()


def _wants_sse(request: Request) -> bool:
    return "text/event-stream" in request.headers.get("accept", "").lower()


def _frame(event: str, data: dict[str, Any], entry_id: str | None = None) -> bytes:
    return ServerSentEvent(event=event, data=json.dumps(data), id=entry_id, sep="\n").encode()


async def _plain_sse(translation: Translation, events: AsyncGenerator[ServerSentEvent, None]) -> AsyncIterator[bytes]:
    """The plain events as SSE bytes, the reply's `done` last."""
    # Closed with this stream, not when collected: its own finally closes the turn's bookkeeping.
    async with aclosing(events):
        async for sse in events:
            for name, data in translation.events(json.loads(str(sse.data))):
                # The relayed entry id travels along: a client can re-attach with GET /turns/{turn_id}/events.
                yield _frame(name, data, sse.id)
    final = translation.reply()
    done = {
        "thread_id": final.thread_id,
        "turn_id": final.turn_id,
        "text": final.reply.text,
        "widgets": [widget.model_dump(mode="json") for widget in final.reply.widgets],
        "sources": final.reply.sources,
        "error": final.reply.error.model_dump() if final.reply.error else None,
    }
    yield _frame("done", done)


async def _whole_reply(
    translation: Translation, events: AsyncIterator[ServerSentEvent], slot: TurnSlot | None
) -> ChatReply:
    try:
        async for sse in events:
            translation.events(json.loads(str(sse.data)))
            if slot is not None:
                await slot.keep_alive()
    finally:
        if slot is not None:
            await slot.release()
    return translation.reply()


@router.post(
    "/chat/{user_id}",
    summary="Send a message, get the reply (plain JSON or SSE)",
    response_model=ChatReply,
    responses=_RESPONSES,
    openapi_extra=_CHAT_OPENAPI,
)
async def chat(
    user_id: UserIdPath,
    request: Request,
    *,
    server: ServerDep,
    store: StoreDep,
    context: ContextDep,
    settings: SettingsDep,
    limiter: LimiterDep,
) -> Response:
    """A message in, the reply out, through the same checks, threads and workers as /chatkit. Without
    `thread_id` a new thread is started. JSON waits for the whole reply; `Accept: text/event-stream` streams it."""
    _require_self(user_id, context)
    require_json(request)
    chat_request = _parse_chat_request(await read_body(request, settings.MAX_BODY_BYTES))
    body = _chatkit_body(chat_request)
    result, slot = await run_chatkit_request(
        parse_request(body),
        server=server,
        store=store,
        context=context,
        settings=settings,
        limiter=limiter,
    )
    # Both request types stream; this only narrows the type.
    assert isinstance(result, StreamingResult)
    translation = Translation(chat_request.thread_id)
    events = sse_events(result, context)
    if _wants_sse(request):
        return sse_response(_plain_sse(translation, events), settings, lease=slot)
    reply = await _whole_reply(translation, events, slot)
    return JSONResponse(reply.model_dump(mode="json"))


@router.get(
    "/chat/{user_id}/history",
    summary="A thread's messages, or the user's threads",
    response_model=HistoryPage | ThreadsPage,
    responses=_RESPONSES,
)
async def history(
    user_id: UserIdPath,
    *,
    context: ContextDep,
    store: StoreDep,
    thread_id: Annotated[str | None, Query(max_length=ID_LENGTH, description="The thread to read.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_HISTORY_PAGE, description="Items (or threads) per page.")] = 20,
    after: Annotated[str | None, Query(max_length=ID_LENGTH, description="The `after` of the previous page.")] = None,
) -> HistoryPage | ThreadsPage:
    """With `thread_id`: its messages and widgets, oldest first. Without: the user's threads, newest first."""
    _require_self(user_id, context)
    if after is not None:
        require_plausible_id(after)
    if thread_id is None:
        threads = await store.load_threads(limit, after, "desc", context)
        return ThreadsPage(
            data=[ThreadSummary(id=t.id, title=t.title, created_at=t.created_at) for t in threads.data],
            has_more=threads.has_more,
            after=threads.after,
        )
    require_plausible_id(thread_id)
    page = await store.load_thread_items(thread_id, after, limit, "asc", context)
    # Hidden items are left out after paging, as ChatKit's items.list does: a page may come back short.
    shown = [plain for item in page.data if (plain := plain_item(item)) is not None]
    return HistoryPage(thread_id=thread_id, data=shown, has_more=page.has_more, after=page.after)
