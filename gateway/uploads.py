"""Phase two of ChatKit's two-phase upload: the file's bytes, POSTed to the URL `attachments.create` handed out,
and their download.

The body is either the raw file or a multipart form with the file in field `file`. It is read as it streams in
and refused with 413 the moment it passes the limit, so an oversized upload never sits in memory whole.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request, Response
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from kitrelay.gateway.attachments import UploadedAttachment, larger_than_declared, payload_too_large
from kitrelay.gateway.auth import UPLOAD_ROUTE_NAME, UPLOAD_TOKEN_HEADER, Authenticator
from kitrelay.gateway.deps import AttachmentStoreDep, ContextDep, StoreDep, enforce_rate_limit
from kitrelay.gateway.errors import ERROR_RESPONSES, ApiError
from kitrelay.gateway.requests import require_own_attachment, require_plausible_id
from kitrelay.shared.messages import Identity

router = APIRouter()

# Room for a multipart body's boundaries and part headers on top of the file itself.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
# Form fields besides the file that a client may send along (and that are ignored).
MAX_FORM_FIELDS = 16
FILE_FIELD = "file"


@router.post(
    "/attachments/{attachment_id}/upload",
    name=UPLOAD_ROUTE_NAME,
    summary="Upload an attachment's bytes",
    dependencies=[Depends(enforce_rate_limit)],
    responses=ERROR_RESPONSES,
)
async def upload_attachment(
    attachment_id: str, request: Request, attachments: AttachmentStoreDep, store: StoreDep, context: ContextDep
) -> UploadedAttachment:
    """Stores the file and adds its text to the team's knowledge base. Authenticated by the caller's bearer token,
    or by the upload token `attachments.create` put in the upload descriptor's headers (UPLOAD_TOKEN_HEADER)."""
    # 404 / 409 / 415 before a byte of the body is read. Only the attachment's creator may fill it.
    await require_own_attachment(store, attachment_id, context)
    pending = await attachments.pending_upload(attachment_id, context)
    # No more than its creator declared (and MAX_UPLOAD_BYTES): the rest is never read.
    limit = attachments.upload_limit(pending)
    too_large = larger_than_declared if limit < attachments.max_upload_bytes else payload_too_large
    data, content_type = await read_upload(request, limit, too_large)
    return await attachments.upload(attachment_id, data, context, content_type=content_type)


@router.get(
    "/attachments/{attachment_id}",
    summary="Download an attachment (any member of its team may)",
    dependencies=[Depends(enforce_rate_limit)],
    responses=ERROR_RESPONSES,
)
async def download_attachment(attachment_id: str, attachments: AttachmentStoreDep, context: ContextDep) -> Response:
    require_plausible_id(attachment_id)
    attachment, data = await attachments.download(attachment_id, context)
    return Response(
        content=data,
        media_type=attachment.mime_type,
        headers={
            "Content-Disposition": _content_disposition(attachment.name),
            # Served as what it was declared, never sniffed into something a browser would run.
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "private, no-store",
        },
    )


TooLarge = Callable[[int], ApiError]


async def read_upload(
    request: Request, limit: int, too_large: TooLarge = payload_too_large
) -> tuple[bytes, str | None]:
    """The uploaded file's bytes and the Content-Type its sender gave it (None if none); `too_large(limit)` as
    soon as the file is known to pass `limit` bytes."""
    content_type = request.headers.get("content-type")
    if (content_type or "").split(";", 1)[0].strip().lower() == "multipart/form-data":
        return await _read_form_file(request, limit, too_large)
    _check_content_length(request, limit, limit, too_large)
    body = bytearray()
    async for chunk in _limited(request.stream(), limit, limit, too_large):
        body.extend(chunk)
    return bytes(body), content_type


async def _read_form_file(request: Request, limit: int, too_large: TooLarge) -> tuple[bytes, str | None]:
    body_limit = limit + MULTIPART_OVERHEAD_BYTES
    _check_content_length(request, body_limit, limit, too_large)
    parser = MultiPartParser(
        request.headers,
        _limited(request.stream(), body_limit, limit, too_large),
        max_files=1,
        max_fields=MAX_FORM_FIELDS,
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise ApiError(400, "invalid_request", f"The multipart body is malformed: {exc.message}") from None
    try:
        file = form.get(FILE_FIELD)
        if not isinstance(file, UploadFile):
            raise ApiError(400, "invalid_request", f"The form has no file in the field '{FILE_FIELD}'.")
        if file.size is not None and file.size > limit:
            raise too_large(limit)
        return await file.read(), file.content_type
    finally:
        await form.close()


async def _limited(
    chunks: AsyncIterator[bytes], max_body: int, limit: int, too_large: TooLarge
) -> AsyncGenerator[bytes, None]:
    """The body's chunks, stopping with 413 as soon as more than `max_body` bytes have come in (`limit` is the
    file limit the message names)."""
    received = 0
    async for chunk in chunks:
        received += len(chunk)
        if received > max_body:
            raise too_large(limit)
        yield chunk


def _check_content_length(request: Request, max_body: int, limit: int, too_large: TooLarge) -> None:
    """413 straight away when the sender announces more than `max_body` bytes."""
    header = request.headers.get("content-length")
    if header is None:
        return
    try:
        length = int(header)
    except ValueError:
        raise ApiError(400, "invalid_request", "The Content-Length header is not a number.") from None
    if length > max_body:
        raise too_large(limit)


def _content_disposition(filename: str) -> str:
    # An ASCII fallback for old clients, the exact name (RFC 5987) for the rest.
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def add_upload_token(attachment_json: bytes, authenticator: Authenticator, identity: Identity) -> bytes:
    """The `attachments.create` answer with an upload token in its upload descriptor's headers.

    ChatKit's client sends the file to `upload_descriptor.url` with `upload_descriptor.headers` and nothing else, so
    under JWT authentication the descriptor must carry the credential. The token is good for this one attachment's
    upload, for its creator, for UPLOAD_TOKEN_TTL_S. It is added to the answer only: the stored attachment never
    holds it."""
    if authenticator.mode != "jwt":
        return attachment_json
    attachment = json.loads(attachment_json)
    descriptor = attachment.get("upload_descriptor")
    if not isinstance(descriptor, dict):
        return attachment_json
    token = authenticator.mint_upload_token(str(attachment["id"]), identity)
    descriptor["headers"] = {**(descriptor.get("headers") or {}), UPLOAD_TOKEN_HEADER: token}
    return json.dumps(attachment, separators=(",", ":")).encode()
