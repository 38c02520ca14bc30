"""ChatKit file attachments: two-phase upload into a BlobStore, and the team's knowledge base fed from them.

ChatKit's client first asks for an attachment (`attachments.create`, answered by `create_attachment` with an
upload URL), then POSTs the file there (`gateway/uploads.py` → `upload`). An uploaded document's text goes into the
team's knowledge base, so agents can search what the team shared. Attachments belong to a team: one of another team
is answered exactly like one that does not exist.
"""

from __future__ import annotations

import logging
from typing import Any

from chatkit.store import AttachmentStore, NotFoundError
from chatkit.types import Attachment, AttachmentCreateParams, AttachmentUploadDescriptor, FileAttachment
from pydantic import BaseModel, ConfigDict

from kitrelay.gateway.context import RequestContext
from kitrelay.gateway.errors import ApiError
from kitrelay.services.blobs import BlobNotFoundError, BlobStore, attachment_key
from kitrelay.services.documents import (
    MARKDOWN,
    PLAIN_TEXT,
    SUPPORTED_TYPES,
    DocumentTooLargeError,
    UnsupportedDocumentError,
    normalize_mime,
    title_from,
)
from kitrelay.services.extraction import ExtractionLimits, ExtractionTimeoutError, Extractor
from kitrelay.services.knowledge import DocumentRecord, KnowledgeService
from kitrelay.shared.ids import new_id
from kitrelay.shared.settings import Settings
from kitrelay.shared.store.chatkit_store import SqlStore

log = logging.getLogger(__name__)

# What a sender's Content-Type may say without claiming anything about the file: no disagreement possible.
_NON_COMMITTAL_TYPES = frozenset(
    {"", "application/octet-stream", "binary/octet-stream", "application/x-www-form-urlencoded"}
)
_PLAIN_TEXTS = frozenset({PLAIN_TEXT, MARKDOWN})
# Where a pending attachment keeps the size its creator declared: the upload may not be bigger.
DECLARED_SIZE = "declared_size"


class UploadedAttachment(BaseModel):
    """What an upload answers with. `document_id` and `title` are None for an allowed type that is stored but
    not readable as a document (one an operator added to ALLOWED_UPLOAD_TYPES beyond what extract_text knows)."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    mime_type: str
    size: int
    document_id: str | None
    title: str | None


class KitrelayAttachmentStore(AttachmentStore[RequestContext]):
    """Attachment metadata in the SQL store, bytes in a BlobStore, extracted text in the knowledge base.

    An attachment is *pending* from `create_attachment` until its bytes arrive; then its `upload_descriptor`
    is cleared (as ChatKit asks) and its metadata records the size and the knowledge document.
    """

    def __init__(
        self, *, store: SqlStore[RequestContext], blobs: BlobStore, knowledge: KnowledgeService, settings: Settings
    ) -> None:
        self._store = store
        self._blobs = blobs
        self._knowledge = knowledge
        self._base_url = settings.PUBLIC_BASE_URL.rstrip("/")
        self._max_bytes = settings.MAX_UPLOAD_BYTES
        # Normalised like the declared types they are compared with ("text/x-markdown" means text/markdown).
        self._allowed = frozenset(normalize_mime(mime, "") for mime in settings.ALLOWED_UPLOAD_TYPES)
        # Attachments whose bytes this process is storing right now: a second upload of one is refused at once.
        self._uploading: set[str] = set()
        # Text comes out of documents in a child process, within page, character and time limits.
        self._extractor = Extractor(ExtractionLimits.from_settings(settings))

    @property
    def max_upload_bytes(self) -> int:
        return self._max_bytes

    def upload_limit(self, attachment: Attachment) -> int:
        """The most bytes this attachment's upload may carry: what its creator declared, within MAX_UPLOAD_BYTES
        (attachments created before sizes were kept get MAX_UPLOAD_BYTES)."""
        declared = (attachment.metadata or {}).get(DECLARED_SIZE)
        return min(declared, self._max_bytes) if isinstance(declared, int) and declared >= 0 else self._max_bytes

    def generate_attachment_id(self, mime_type: str, context: RequestContext) -> str:
        # chatkit's default has 32 random bits; a ULID has 80.
        return new_id("atc")

    # -- the ChatKit hooks ----------------------------------------------------------------------------------------

    async def create_attachment(self, input: AttachmentCreateParams, context: RequestContext) -> Attachment:
        """Phase one: check what the client says it will send, and hand it the URL to send it to."""
        mime_type = self._allowed_type(input.mime_type, input.name)
        if input.size < 0:
            raise ApiError(400, "invalid_request", "An attachment's size cannot be negative.")
        if input.size > self._max_bytes:
            raise payload_too_large(self._max_bytes)
        attachment_id = self.generate_attachment_id(mime_type, context)
        attachment = FileAttachment(
            id=attachment_id,
            name=input.name,
            mime_type=mime_type,
            upload_descriptor=AttachmentUploadDescriptor(
                url=f"{self._base_url}/attachments/{attachment_id}/upload",
                method="POST",
                headers={},
            ),
            # Never shown to clients (ChatKit leaves metadata out of its answers); the upload is held to it.
            metadata={DECLARED_SIZE: input.size},
        )
        # ChatKitServer saves it again after this returns; saving here too makes the store usable on its own.
        await self._store.save_attachment(attachment, context)
        log.info("attachment %s created for team %s (%s)", attachment_id, context.identity.team_id, mime_type)
        return attachment

    async def delete_attachment(self, attachment_id: str, context: RequestContext) -> None:
        """Delete the bytes and the knowledge documents made from them.

        The metadata row is left to the caller: ChatKitServer calls `Store.delete_attachment` right after this
        hook (a row already gone is no error there). Code outside the ChatKit protocol that wants everything
        removed calls `purge`."""
        attachment = await self._store.load_attachment(attachment_id, context)
        team_id = context.identity.team_id
        removed = await self._knowledge.delete_by_attachment(team_id, attachment.id)
        await self._blobs.delete(attachment_key(team_id, attachment.id))
        log.info("attachment %s of team %s deleted (%d documents)", attachment.id, team_id, removed)

    async def purge(self, attachment_id: str, context: RequestContext) -> None:
        """Delete an attachment completely: bytes, knowledge documents and metadata."""
        await self.delete_attachment(attachment_id, context)
        await self._store.delete_attachment(attachment_id, context)

    # -- phase two: the bytes -------------------------------------------------------------------------------------

    async def pending_upload(self, attachment_id: str, context: RequestContext) -> Attachment:
        """The attachment, if it may receive its bytes now: 404 for an unknown id (or another team's), 409 once
        uploaded, 415 if its type is not allowed (any more). Cheap; the upload route asks before reading a body."""
        attachment = await self._store.load_attachment(attachment_id, context)
        if attachment.upload_descriptor is None:
            raise _already_uploaded()
        self._allowed_type(attachment.mime_type, attachment.name)
        return attachment

    async def upload(
        self, attachment_id: str, data: bytes, context: RequestContext, *, content_type: str | None = None
    ) -> UploadedAttachment:
        """Phase two: store the bytes and add the document's text to the team's knowledge base.

        Everything is checked (and the text extracted) before anything is written; a failure after the first
        write removes what was written, so a failed upload leaves neither bytes nor a document behind, and the
        attachment stays pending for another try."""
        attachment = await self.pending_upload(attachment_id, context)
        if attachment.id in self._uploading:
            raise _already_uploaded()
        self._uploading.add(attachment.id)
        try:
            return await self._store_upload(attachment, data, context, content_type=content_type)
        finally:
            self._uploading.discard(attachment.id)

    async def _store_upload(
        self, attachment: Attachment, data: bytes, context: RequestContext, *, content_type: str | None
    ) -> UploadedAttachment:
        mime_type = attachment.mime_type
        if not _agrees(content_type, mime_type, attachment.name):
            raise ApiError(
                415,
                "unsupported_media_type",
                f"The uploaded file is {_base_type(content_type)!r}, but the attachment was declared as {mime_type!r}.",
            )
        if len(data) > self._max_bytes:
            raise payload_too_large(self._max_bytes)
        if len(data) > (limit := self.upload_limit(attachment)):
            raise larger_than_declared(limit)
        if not data:
            raise ApiError(400, "invalid_request", "The upload is empty.")
        text = await self._extract(attachment, data)

        team_id = context.identity.team_id
        key = attachment_key(team_id, attachment.id)
        if await self._blobs.exists(key):
            # Another gateway process is storing the same attachment right now.
            raise _already_uploaded()
        await self._blobs.put(key, data)
        try:
            document = None if text is None else await self._add_document(attachment, text, len(data), context)
            document_id = None if document is None else document.id
            kept = {name: value for name, value in (attachment.metadata or {}).items() if name != DECLARED_SIZE}
            metadata: dict[str, Any] = {**kept, "size": len(data), "document_id": document_id}
            await self._store.save_attachment(
                attachment.model_copy(update={"upload_descriptor": None, "metadata": metadata}), context
            )
        except BaseException:
            await self._discard(team_id, attachment.id, key)
            raise
        log.info(
            "attachment %s of team %s uploaded: %d bytes, document %s", attachment.id, team_id, len(data), document_id
        )
        return UploadedAttachment(
            id=attachment.id,
            name=attachment.name,
            mime_type=mime_type,
            size=len(data),
            document_id=document_id,
            title=None if document is None else document.title,
        )

    async def _extract(self, attachment: Attachment, data: bytes) -> str | None:
        """The document's text; None for an allowed type that is no document extract_text can read."""
        if attachment.mime_type not in SUPPORTED_TYPES:
            return None
        try:
            text = await self._extractor.extract(data, mime_type=attachment.mime_type, filename=attachment.name)
        except DocumentTooLargeError as exc:
            raise ApiError(413, "document_too_large", f"{exc}. Split it into smaller documents.") from None
        except ExtractionTimeoutError as exc:
            raise ApiError(422, "unreadable_document", f"{exc}. Split it into smaller documents.") from None
        except UnsupportedDocumentError as exc:
            raise ApiError(422, "unreadable_document", str(exc)) from None
        if not text.strip():
            raise ApiError(422, "unreadable_document", f"{attachment.name} has no text.")
        return text

    async def _add_document(
        self, attachment: Attachment, text: str, size: int, context: RequestContext
    ) -> DocumentRecord:
        try:
            return await self._knowledge.add_document(
                context.identity.team_id,
                title=title_from(text, attachment.name),
                text=text,
                source="upload",
                mime_type=attachment.mime_type,
                created_by=context.identity.user_id,
                attachment_id=attachment.id,
                byte_size=size,
            )
        except ValueError as exc:
            # The knowledge base refuses text it cannot index (e.g. Markdown that is nothing but headings).
            raise ApiError(422, "unreadable_document", f"{attachment.name} cannot be searched: {exc}.") from None

    async def download(self, attachment_id: str, context: RequestContext) -> tuple[Attachment, bytes]:
        """The attachment and its bytes. NotFoundError for an unknown id, another team's, or one not uploaded."""
        attachment = await self._store.load_attachment(attachment_id, context)
        try:
            data = await self._blobs.get(attachment_key(context.identity.team_id, attachment.id))
        except BlobNotFoundError:
            raise NotFoundError(f"Attachment {attachment_id} has no content") from None
        return attachment, data

    # -- helpers --------------------------------------------------------------------------------------------------

    def _allowed_type(self, mime_type: str, filename: str) -> str:
        normalized = normalize_mime(mime_type, filename)
        if normalized not in self._allowed:
            allowed = _human_list([_KIND_NAMES.get(mime, mime) for mime in sorted(self._allowed, key=_kind_order)])
            raise ApiError(
                415,
                "unsupported_media_type",
                f"{filename} cannot be attached: it is {_kind_of(normalized, filename)}. Attach {allowed} files.",
            )
        return normalized

    async def _discard(self, team_id: str, attachment_id: str, key: str) -> None:
        # Best effort: the original error is what the caller must see.
        try:
            await self._knowledge.delete_by_attachment(team_id, attachment_id)
            await self._blobs.delete(key)
        except Exception:
            log.exception("could not clean up after the failed upload of attachment %s", attachment_id)


def _base_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _agrees(content_type: str | None, declared: str, filename: str) -> bool:
    """False if what the sender labels the file clearly contradicts the declared type. No label or a generic one
    says nothing, and plain text and Markdown pass for each other (browsers call a Markdown file text/plain,
    text/markdown or text/x-markdown, and a .txt file may well be Markdown)."""
    sent = _base_type(content_type)
    if sent in _NON_COMMITTAL_TYPES:
        return True
    normalized = normalize_mime(sent, filename)
    if normalized == declared:
        return True
    return normalized in _PLAIN_TEXTS and declared in _PLAIN_TEXTS


def payload_too_large(limit: int) -> ApiError:
    """The 413 for anything over the upload limit: a declared size, a Content-Length, or the bytes received."""
    return ApiError(413, "payload_too_large", f"The file is larger than the upload limit of {_human_size(limit)}.")


def larger_than_declared(declared: int) -> ApiError:
    return ApiError(
        413,
        "payload_too_large",
        f"The file is larger than the {declared:,} bytes declared when the attachment was created.",
    )


def _already_uploaded() -> ApiError:
    return ApiError(409, "already_uploaded", "This attachment has already been uploaded.")


def _human_size(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    if size < 1024 * 1024:
        return f"{round(size / 1024, 1):g} KiB"
    return f"{round(size / (1024 * 1024), 1):g} MiB"


# What people call the types an upload may have, in the order they are named.
_KIND_NAMES = {"text/plain": "text (.txt)", "text/markdown": "Markdown (.md)", "application/pdf": "PDF"}


def _kind_order(mime: str) -> tuple[int, str]:
    return (list(_KIND_NAMES).index(mime) if mime in _KIND_NAMES else len(_KIND_NAMES), mime)


def _kind_of(mime: str, filename: str) -> str:
    """What a file is, in words: "a PNG image", "a ZIP file"."""
    major, _, minor = mime.partition("/")
    extension = filename.rpartition(".")[2].upper() if "." in filename else ""
    name = extension or minor.upper().removeprefix("X-") or "unknown"
    article = "an" if name[:1] in "AEFHILMNORSX" else "a"
    return f"{article} {name} {major}" if major in ("image", "audio", "video") else f"{article} {name} file"


def _human_list(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
