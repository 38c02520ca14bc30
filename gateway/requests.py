"""Validates a ChatKit request before the SDK sees it, so bad input gets a clean 4xx instead of a stream that
the SDK would cut after its 200 has already gone out.

In order: the body is read with a size cap (`read_body`, 413), parsed (`parse_request`, 400), held to the size
limits of its parts (`check_limits`: message length 413, titles, lists), checked for what this server offers
(`check_supported`), and finally checked against the caller's data (`check_access`): every thread, item and
attachment it names must be the caller's, or the answer is the same 404 as for one that does not exist; and the
state a streaming request needs (a pending tool call, a pending question, a user message to retry, a widget to act
on) must be there, so the SDK never fails half-way through a stream. Nothing is written before all of this passes.
"""

from __future__ import annotations

import base64
import binascii

from chatkit.server import ChatKitServer
from chatkit.store import NotFoundError
from chatkit.types import (
    AttachmentsCreateReq,
    AttachmentsDeleteReq,
    ChatKitReq,
    ClientToolCallItem,
    InputTranscribeReq,
    ItemsFeedbackReq,
    StructuredInputItem,
    ThreadItem,
    ThreadsAddClientToolOutputReq,
    ThreadsAddStructuredInputReq,
    ThreadsAddUserMessageReq,
    ThreadsCreateReq,
    ThreadsCustomActionReq,
    ThreadsRetryAfterItemReq,
    ThreadsSyncCustomActionReq,
    ThreadsUpdateReq,
    UserMessageInput,
    UserMessageItem,
)
from fastapi import Request
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import select

from kitrelay.gateway.context import RequestContext
from kitrelay.gateway.errors import ApiError
from kitrelay.shared.messages import Identity
from kitrelay.shared.store.chatkit_store import SqlStore
from kitrelay.shared.store.engine import read_session
from kitrelay.shared.store.models import ID_LENGTH, AttachmentRow

_request_adapter: TypeAdapter[ChatKitReq] = TypeAdapter(ChatKitReq)

# Bounds on the parts of a request; the body size bounds everything else.
MAX_ATTACHMENTS_PER_MESSAGE = 10
MAX_FEEDBACK_ITEMS = 100
MAX_TITLE_CHARS = 500
MAX_FILENAME_CHARS = 255

_NOT_FOUND = ("not_found", "Not found.")


def _not_found() -> ApiError:
    return ApiError(404, *_NOT_FOUND)


# -- the body -------------------------------------------------------------------------------------------------------


def body_too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"The request body is larger than the limit of {human_size(limit)}.")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to pass `limit` bytes (announced or received)."""
    header = request.headers.get("content-length")
    if header is not None:
        try:
            announced = int(header)
        except ValueError:
            raise ApiError(400, "invalid_request", "The Content-Length header is not a number.") from None
        if announced > limit:
            raise body_too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise body_too_large(limit)
    return bytes(body)


def require_json(request: Request) -> None:
    """415 unless the body is declared JSON. Besides saying what is wrong, this makes every cross-site browser
    request a CORS preflight, so a page on another origin cannot post to a gateway without an allow-list entry
    (which matters most for a dev-mode gateway on localhost, which has no token to check)."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";", 1)[0].strip().lower() != "application/json":
        raise ApiError(
            415, "unsupported_media_type", "Send the request as JSON, with the header 'Content-Type: application/json'."
        )


# -- parsing --------------------------------------------------------------------------------------------------------


def _field(loc: tuple[int | str, ...]) -> str:
    # The first element of a location is the request type (the union's tag); the client cares about the rest.
    return ".".join(str(part) for part in loc[1:]) or "request"


def parse_request(body: bytes) -> ChatKitReq:
    if not body.strip():
        raise ApiError(400, "invalid_request", "The request body is empty: send a ChatKit request as JSON.")
    try:
        return _request_adapter.validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        first = errors[0]
        kind = first["type"]
        if kind == "json_invalid":
            raise ApiError(400, "malformed_json", f"The request body is not valid JSON ({first['msg']}).") from None
        if kind in ("dict_type", "model_attributes_type", "model_type"):
            raise ApiError(400, "invalid_request", "The request body must be a JSON object.") from None
        if kind == "union_tag_not_found":
            raise ApiError(400, "invalid_request", "The request has no 'type' field.") from None
        if kind == "union_tag_invalid":
            tag = first.get("ctx", {}).get("tag", "?")
            raise ApiError(400, "unknown_request_type", f"Unknown request type '{tag}'.") from None
        details = [{"field": _field(e["loc"]), "message": e["msg"]} for e in errors]
        message = f"Invalid '{first['loc'][0]}' request: {_field(first['loc'])}: {first['msg']}."
        raise ApiError(400, "invalid_request", message, details) from None


# -- size limits ----------------------------------------------------------------------------------------------------


def message_chars(message: UserMessageInput) -> int:
    """The length of what the user wrote: text and tag parts, and the quoted text."""
    return sum(len(part.text) for part in message.content) + len(message.quoted_text or "")


def check_limits(request: ChatKitReq, *, max_message_chars: int) -> None:
    match request:
        case ThreadsCreateReq() | ThreadsAddUserMessageReq():
            _check_message(request.params.input, max_message_chars)
        case ThreadsUpdateReq():
            if len(request.params.title) > MAX_TITLE_CHARS:
                raise ApiError(
                    400, "title_too_long", f"A thread title can be at most {MAX_TITLE_CHARS:,} characters long."
                )
        case ItemsFeedbackReq():
            if not request.params.item_ids:
                raise ApiError(400, "invalid_request", "Feedback needs at least one item id.")
            if len(request.params.item_ids) > MAX_FEEDBACK_ITEMS:
                raise ApiError(400, "invalid_request", f"Feedback can name at most {MAX_FEEDBACK_ITEMS} items.")
        case AttachmentsCreateReq():
            name = request.params.name
            if not name.strip() or len(name) > MAX_FILENAME_CHARS or not name.isprintable():
                raise ApiError(
                    400,
                    "invalid_request",
                    f"An attachment's name must be 1 to {MAX_FILENAME_CHARS} printable characters.",
                )
        case _:
            pass


def _check_message(message: UserMessageInput, max_chars: int) -> None:
    chars = message_chars(message)
    if chars > max_chars:
        raise ApiError(
            413,
            "message_too_long",
            f"The message is {chars:,} characters long; the limit is {max_chars:,}. Shorten it or attach it as a file.",
        )
    if len(message.attachments) > MAX_ATTACHMENTS_PER_MESSAGE:
        raise ApiError(
            400, "too_many_attachments", f"A message can carry at most {MAX_ATTACHMENTS_PER_MESSAGE} attachments."
        )
    has_text = any(part.text.strip() for part in message.content)
    if not has_text and not message.attachments:
        raise ApiError(400, "empty_message", "The message is empty: write something or attach a file.")


# -- what this server offers ----------------------------------------------------------------------------------------


def _overrides(server: ChatKitServer[RequestContext], method: str) -> bool:
    return getattr(type(server), method) is not getattr(ChatKitServer, method)


def check_supported(request: ChatKitReq, server: ChatKitServer[RequestContext]) -> None:
    """400 for a request type whose hook this server leaves to the SDK's default (which raises)."""
    unsupported = False
    match request:
        case InputTranscribeReq():
            unsupported = not _overrides(server, "transcribe")
            if not unsupported:
                try:
                    base64.b64decode(request.params.audio_base64, validate=True)
                except binascii.Error:
                    raise ApiError(400, "invalid_request", "params.audio_base64 is not valid base64.") from None
        case ThreadsSyncCustomActionReq():
            unsupported = not _overrides(server, "sync_action")
        case AttachmentsCreateReq() | AttachmentsDeleteReq():
            unsupported = server.attachment_store is None
        case _:
            pass
    if unsupported:
        raise ApiError(400, "unsupported_request", f"This server does not support '{request.type}' requests.")


# -- access ---------------------------------------------------------------------------------------------------------


def _plausible_id(value: str) -> bool:
    return 0 < len(value) <= ID_LENGTH and value.isprintable()


def require_plausible_id(value: str) -> None:
    """404 for an id no store could hold (empty, too long, control characters), before any query sees it."""
    if not _plausible_id(value):
        raise _not_found()


def _named_ids(request: ChatKitReq) -> list[str]:
    params = getattr(request, "params", None)
    ids: list[str] = []
    for name in ("thread_id", "item_id", "attachment_id", "after"):
        value = getattr(params, name, None)
        if isinstance(value, str):
            ids.append(value)
    ids.extend(getattr(params, "item_ids", None) or [])
    message = getattr(params, "input", None)
    if isinstance(message, UserMessageInput):
        ids.extend(message.attachments)
    return ids


async def owns_attachment(store: SqlStore[RequestContext], attachment_id: str, identity: Identity) -> bool:
    """True if `identity` uploaded the attachment. The store scopes attachments by team (a team shares what its
    members upload); attaching one to a message, uploading its bytes or deleting it is for its uploader only, so
    one user can never re-point or remove another's file."""
    # The store has no query for an attachment's uploader, so this reads its table through the store's sessions.
    async with read_session(store._sessions) as session:
        query = select(AttachmentRow.id).where(
            AttachmentRow.id == attachment_id,
            AttachmentRow.team_id == identity.team_id,
            AttachmentRow.user_id == identity.user_id,
        )
        return (await session.execute(query)).first() is not None


async def require_own_attachment(store: SqlStore[RequestContext], attachment_id: str, context: RequestContext) -> None:
    if not _plausible_id(attachment_id) or not await owns_attachment(store, attachment_id, context.identity):
        raise NotFoundError("Attachment not found")


async def check_access(request: ChatKitReq, store: SqlStore[RequestContext], context: RequestContext) -> None:
    """404 for a thread, item or attachment the caller cannot see (or that cannot exist), and 400/409 when the
    thread is not in the state the request needs, all before any response starts."""
    if not all(_plausible_id(value) for value in _named_ids(request)):
        raise _not_found()
    params = getattr(request, "params", None)
    if isinstance(request, AttachmentsDeleteReq):
        await require_own_attachment(store, request.params.attachment_id, context)
    message = getattr(params, "input", None)
    if isinstance(message, UserMessageInput):
        for attachment_id in message.attachments:
            await require_own_attachment(store, attachment_id, context)
    thread_id = getattr(params, "thread_id", None)
    if thread_id is None:
        return
    await store.load_thread(thread_id, context=context)
    if isinstance(request, ThreadsCustomActionReq | ThreadsSyncCustomActionReq):
        # The most frequent check; the SDK's load of the sender right after gets what it read.
        await _require_widget(store, thread_id, request.params.item_id, context)
        return
    item_ids: list[str] = []
    if (item_id := getattr(params, "item_id", None)) is not None:
        item_ids.append(item_id)
    item_ids.extend(getattr(params, "item_ids", None) or [])
    items: dict[str, ThreadItem] = {}
    for item_id in item_ids:
        try:
            items[item_id] = await store.load_item(thread_id, item_id, context=context)
        except NotFoundError:
            raise _not_found() from None
    await _check_thread_state(request, store, context, items)


async def _check_thread_state(
    request: ChatKitReq, store: SqlStore[RequestContext], context: RequestContext, items: dict[str, ThreadItem]
) -> None:
    """What the SDK would otherwise find out only after the stream has started (and then cut it)."""
    match request:
        case ThreadsAddClientToolOutputReq():
            newest = await store.load_thread_items(request.params.thread_id, None, 1, "desc", context)
            if not any(isinstance(item, ClientToolCallItem) and item.status == "pending" for item in newest.data):
                raise ApiError(409, "conflict", "The thread is not waiting for a client tool's output.")
        case ThreadsAddStructuredInputReq():
            item = items[request.params.item_id]
            if not isinstance(item, StructuredInputItem):
                raise ApiError(400, "invalid_request", "That item is not a question to answer.")
            if item.status != "pending":
                raise ApiError(409, "conflict", "That question has already been answered.")
        case ThreadsRetryAfterItemReq():
            if not isinstance(items[request.params.item_id], UserMessageItem):
                raise ApiError(400, "invalid_request", "Only a user message can be retried.")
        case _:
            pass


async def _require_widget(
    store: SqlStore[RequestContext], thread_id: str, item_id: str | None, context: RequestContext
) -> None:
    if item_id is None:
        return
    try:
        sender = await store.load_widget_sender(thread_id, item_id, context=context)
    except NotFoundError:
        raise _not_found() from None
    if sender is None:
        raise ApiError(400, "invalid_request", "Actions come from widgets: that item is not one.")
    context.widget_senders[item_id] = sender


def human_size(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    if size < 1024 * 1024:
        return f"{round(size / 1024, 1):g} KiB"
    return f"{round(size / (1024 * 1024), 1):g} MiB"
