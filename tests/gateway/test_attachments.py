"""ChatKit attachments end to end inside one process: `attachments.create` / `attachments.delete` through the
ChatKit SDK with KitrelayAttachmentStore, and the upload/download routes over HTTP, on a migrated SQLite file.

The app is assembled here (upload router, error handlers, lifespan state) rather than taken from create_app, so
these tests need no NATS or Redis. Who is calling comes from two test headers, so one test can play two users of
two teams.
"""

from __future__ import annotations

import asyncio
import io
import zlib
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from chatkit.server import ChatKitServer, NonStreamingResult
from chatkit.store import NotFoundError
from chatkit.types import AttachmentCreateParams, ThreadMetadata, ThreadStreamEvent, UserMessageItem
from fastapi import FastAPI, Request
from pypdf import PdfWriter
from sqlalchemy import func, select

from kitrelay.gateway import uploads
from kitrelay.gateway.attachments import KitrelayAttachmentStore
from kitrelay.gateway.context import RequestContext
from kitrelay.gateway.deps import get_identity
from kitrelay.gateway.errors import ApiError, install_error_handlers
from kitrelay.gateway.store import GatewayStore
from kitrelay.services.blobs import LocalDiskBlobStore, attachment_key
from kitrelay.services.knowledge import KnowledgeService
from kitrelay.shared.messages import Identity
from kitrelay.shared.settings import Settings
from kitrelay.shared.store.engine import make_engine, make_sessionmaker, migrate
from kitrelay.shared.store.models import AttachmentRow, DocumentRow
from tests.databases import new_identity, sqlite_url

MAX_BYTES = 4096
BASE_URL = "http://kitrelay.test"
MARKDOWN = b"# Onboarding handbook\n\nNew colleagues get a laptop and a zebrafish on their first day.\n"

ScopeState = MutableMapping[str, Any]


class _NoAgentServer(ChatKitServer[RequestContext]):
    """Just the SDK's request handling; these tests never start a turn."""

    async def respond(  # type: ignore[override]
        self, thread: ThreadMetadata, input_user_message: UserMessageItem | None, context: RequestContext
    ) -> AsyncIterator[ThreadStreamEvent]:
        raise NotImplementedError


@dataclass
class Gateway:
    http: httpx.AsyncClient
    server: _NoAgentServer
    store: GatewayStore
    blobs: LocalDiskBlobStore
    knowledge: KnowledgeService

    async def chatkit(self, who: Identity, request: dict[str, Any]) -> Any:
        """A JSON ChatKit request, processed by the SDK as the gateway's /chatkit route would."""
        result = await self.server.process(_json(request), RequestContext(identity=who))
        assert isinstance(result, NonStreamingResult)
        return httpx.Response(200, content=result.json).json()

    async def create(self, who: Identity, name: str, mime_type: str, size: int) -> dict[str, Any]:
        params = {"name": name, "size": size, "mime_type": mime_type}
        created: dict[str, Any] = await self.chatkit(who, {"type": "attachments.create", "params": params})
        return created

    async def upload(self, who: Identity, attachment_id: str, content: bytes, **kwargs: Any) -> httpx.Response:
        return await self.http.post(
            f"/attachments/{attachment_id}/upload", content=content, headers=_as(who, kwargs.pop("headers", {}))
        )

    async def upload_form(
        self, who: Identity, attachment_id: str, content: bytes, filename: str, content_type: str
    ) -> httpx.Response:
        return await self.http.post(
            f"/attachments/{attachment_id}/upload",
            files={"file": (filename, content, content_type)},
            headers=_as(who, {}),
        )

    async def download(self, who: Identity, attachment_id: str) -> httpx.Response:
        return await self.http.get(f"/attachments/{attachment_id}", headers=_as(who, {}))

    async def stored(self, who: Identity, attachment_id: str) -> tuple[bool, int, int]:
        """(blob exists, attachment rows, knowledge documents) for an attachment."""
        blob = await self.blobs.exists(attachment_key(who.team_id, attachment_id))
        async with self.store._sessions() as session:
            rows = (await session.execute(select(func.count()).where(AttachmentRow.id == attachment_id))).scalar_one()
            documents = (
                await session.execute(select(func.count()).where(DocumentRow.attachment_id == attachment_id))
            ).scalar_one()
        return blob, rows, documents


def _json(request: dict[str, Any]) -> bytes:
    return httpx.Request("POST", "http://x", json=request).content


def _as(who: Identity, headers: dict[str, str]) -> dict[str, str]:
    return {**headers, "x-test-user": who.user_id, "x-test-team": who.team_id}


def _identity_from_headers(request: Request) -> Identity:
    return Identity(user_id=request.headers["x-test-user"], team_id=request.headers["x-test-team"])


@pytest.fixture(scope="module")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = sqlite_url(tmp_path_factory.mktemp("attachments") / "kitrelay.db")
    migrate(url)
    return url


@pytest.fixture
async def gateway(database_url: str, tmp_path: Path) -> AsyncIterator[Gateway]:
    settings = Settings(
        DATABASE_URL=database_url,
        PUBLIC_BASE_URL=BASE_URL + "/",
        ATTACHMENTS_DIR=str(tmp_path / "attachments"),
        MAX_UPLOAD_BYTES=MAX_BYTES,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Any]]:
        engine = make_engine(settings.DATABASE_URL)
        sessions = make_sessionmaker(engine)
        store = GatewayStore(sessions)
        blob_store = LocalDiskBlobStore(settings.ATTACHMENTS_DIR)
        knowledge = KnowledgeService(sessions)
        attachment_store = KitrelayAttachmentStore(
            store=store, blobs=blob_store, knowledge=knowledge, settings=settings
        )
        try:
            yield {
                "settings": settings,
                "store": store,
                "blob_store": blob_store,
                "knowledge": knowledge,
                "attachment_store": attachment_store,
            }
        finally:
            await engine.dispose()

    app = FastAPI(lifespan=lifespan)
    app.include_router(uploads.router)
    install_error_handlers(app)
    app.dependency_overrides[get_identity] = _identity_from_headers

    async with lifespan(app) as state:

        async def with_state(scope: ScopeState, receive: Any, send: Any) -> None:
            # What an ASGI server does with a lifespan's state: each request gets a shallow copy.
            scope["state"] = dict(state)
            await app(scope, receive, send)

        # Like a real server, the transport answers an unhandled error with the app's 500 instead of raising it.
        transport = httpx.ASGITransport(app=with_state, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as http:
            server = _NoAgentServer(state["store"], attachment_store=state["attachment_store"])
            yield Gateway(
                http=http,
                server=server,
                store=state["store"],
                blobs=state["blob_store"],
                knowledge=state["knowledge"],
            )


def pdf(text: str | None) -> bytes:
    """A one-page PDF showing `text` in Helvetica, or a blank page (no text to extract) for None."""
    if text is None:
        writer = PdfWriter()
        writer.add_blank_page(width=200, height=200)
        buffer = io.BytesIO()
        writer.write(buffer)
        return buffer.getvalue()
    content = zlib.compress(f"BT /F1 12 Tf 40 700 Td ({text}) Tj ET".encode())
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 5 0 R >> >> "
        b"/Contents 4 0 R >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(content) + content + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


# -- attachments.create -------------------------------------------------------------------------------------------


async def test_create_hands_out_an_upload_url_and_saves_a_pending_attachment(gateway: Gateway) -> None:
    me = new_identity()

    created = await gateway.create(me, "notes.md", "text/markdown", len(MARKDOWN))

    assert created["id"].startswith("atc_") and len(created["id"]) > 12
    assert (created["type"], created["name"], created["mime_type"]) == ("file", "notes.md", "text/markdown")
    assert created["upload_descriptor"] == {
        "url": f"{BASE_URL}/attachments/{created['id']}/upload",
        "method": "POST",
        "headers": {},
    }
    loaded = await gateway.store.load_attachment(created["id"], RequestContext(identity=me))
    assert loaded.upload_descriptor is not None
    assert await gateway.stored(me, created["id"]) == (False, 1, 0)


async def test_create_normalises_the_declared_type(gateway: Gateway) -> None:
    me = new_identity()
    # Browsers often call a Markdown file text/plain or give no useful type at all.
    assert (await gateway.create(me, "a.md", "text/plain", 3))["mime_type"] == "text/markdown"
    assert (await gateway.create(me, "b.pdf", "application/octet-stream", 3))["mime_type"] == "application/pdf"
    assert (await gateway.create(me, "c.txt", "text/plain; charset=utf-8", 3))["mime_type"] == "text/plain"


@pytest.mark.parametrize(
    ("name", "mime_type", "size", "status", "code"),
    [
        ("photo.png", "image/png", 10, 415, "unsupported_media_type"),
        ("tool.exe", "application/octet-stream", 10, 415, "unsupported_media_type"),
        ("big.md", "text/markdown", MAX_BYTES + 1, 413, "payload_too_large"),
        ("odd.md", "text/markdown", -1, 400, "invalid_request"),
    ],
)
async def test_create_refuses_what_cannot_be_uploaded(
    gateway: Gateway, name: str, mime_type: str, size: int, status: int, code: str
) -> None:
    me = new_identity()
    with pytest.raises(ApiError) as refused:
        await gateway.create(me, name, mime_type, size)
    assert (refused.value.status_code, refused.value.code) == (status, code)
    async with gateway.store._sessions() as session:
        rows = (await session.execute(select(func.count()).where(AttachmentRow.team_id == me.team_id))).scalar_one()
    assert rows == 0


async def test_create_at_exactly_the_limit_is_fine(gateway: Gateway) -> None:
    created = await gateway.create(new_identity(), "full.md", "text/markdown", MAX_BYTES)
    assert created["upload_descriptor"]["method"] == "POST"


# -- upload -------------------------------------------------------------------------------------------------------


async def test_uploading_markdown_adds_it_to_the_team_knowledge_base(gateway: Gateway) -> None:
    me = new_identity()
    colleague = new_identity(team_id=me.team_id)
    created = await gateway.create(me, "handbook.md", "text/markdown", len(MARKDOWN))

    response = await gateway.upload(me, created["id"], MARKDOWN, headers={"content-type": "text/markdown"})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body == {
        "id": created["id"],
        "name": "handbook.md",
        "mime_type": "text/markdown",
        "size": len(MARKDOWN),
        "document_id": body["document_id"],
        "title": "Onboarding handbook",
    }
    assert body["document_id"]
    hits = await gateway.knowledge.search(me.team_id, "zebrafish")
    assert body["document_id"] in [hit.document_id for hit in hits]
    assert await gateway.knowledge.search(new_identity().team_id, "zebrafish") == []
    # The attachment is no longer pending, for anyone in the team.
    loaded = await gateway.store.load_attachment(created["id"], RequestContext(identity=colleague))
    assert loaded.upload_descriptor is None
    assert loaded.metadata == {"size": len(MARKDOWN), "document_id": body["document_id"]}
    assert await gateway.stored(me, created["id"]) == (True, 1, 1)


async def test_upload_as_a_multipart_form(gateway: Gateway) -> None:
    me = new_identity()
    created = await gateway.create(me, "manual.pdf", "application/pdf", 2000)
    document = pdf("The blue lever opens the hangar door")

    response = await gateway.upload_form(me, created["id"], document, "manual.pdf", "application/pdf")

    assert response.status_code == 200, response.text
    assert (response.json()["size"], response.json()["title"]) == (len(document), "manual")
    hits = await gateway.knowledge.search(me.team_id, "hangar lever")
    assert [hit.document_id for hit in hits] == [response.json()["document_id"]]
    assert (await gateway.download(me, created["id"])).content == document


async def test_a_generic_or_text_content_type_is_accepted_for_markdown(gateway: Gateway) -> None:
    me = new_identity()
    for content_type in (None, "application/octet-stream", "text/plain; charset=utf-8", "text/x-markdown"):
        created = await gateway.create(me, "n.md", "text/markdown", len(MARKDOWN))
        headers = {} if content_type is None else {"content-type": content_type}
        response = await gateway.upload(me, created["id"], MARKDOWN, headers=headers)
        assert response.status_code == 200, (content_type, response.text)


@pytest.mark.parametrize("content_type", ["application/pdf", "image/png", "text/html"])
async def test_a_content_type_that_contradicts_the_declared_one_is_415(gateway: Gateway, content_type: str) -> None:
    me = new_identity()
    created = await gateway.create(me, "n.md", "text/markdown", len(MARKDOWN))

    response = await gateway.upload(me, created["id"], MARKDOWN, headers={"content-type": content_type})

    assert response.status_code == 415
    assert response.json()["error"] == "unsupported_media_type"
    assert await gateway.stored(me, created["id"]) == (False, 1, 0)
    # Still pending: the right file can follow.
    assert (await gateway.upload(me, created["id"], MARKDOWN)).status_code == 200


async def test_a_multipart_file_with_a_contradicting_type_is_415(gateway: Gateway) -> None:
    me = new_identity()
    created = await gateway.create(me, "n.pdf", "application/pdf", 100)
    response = await gateway.upload_form(me, created["id"], b"<html></html>", "n.pdf", "text/html")
    assert response.status_code == 415
    assert await gateway.stored(me, created["id"]) == (False, 1, 0)


async def test_upload_at_exactly_the_limit_is_fine(gateway: Gateway) -> None:
    me = new_identity()
    created = await gateway.create(me, "full.txt", "text/plain", MAX_BYTES)
    response = await gateway.upload(me, created["id"], b"a" * MAX_BYTES)
    assert response.status_code == 200, response.text
    assert response.json()["size"] == MAX_BYTES


async def test_upload_over_the_limit_is_413_with_content_length(gateway: Gateway) -> None:
    me = new_identity()
    created = await gateway.create(me, "big.txt", "text/plain", 10)

    response = await gateway.upload(me, created["id"], b"a" * (MAX_BYTES + 1))

    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"
    assert await gateway.stored(me, created["id"]) == (False, 1, 0)


async def test_upload_over_the_limit_is_413_without_content_length_and_stops_reading(gateway: Gateway) -> None:
    me = new_identity()
    created = await gateway.create(me, "big.txt", "text/plain", 10)
    sent: list[int] = []

    async def endless() -> AsyncIterator[bytes]:
        # A chunked body with no end: the server must give up on it by itself.
        while True:
            sent.append(1024)
            yield b"a" * 1024

    response = await gateway.http.post(f"/attachments/{created['id']}/upload", content=endless(), headers=_as(me, {}))

    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"
    assert "content-length" not in response.request.headers
    assert sum(sent) <= MAX_BYTES + 2 * 1024
    assert await gateway.stored(me, created["id"]) == (False, 1, 0)


async def test_a_multipart_file_over_the_limit_is_413(gateway: Gateway) -> None:
    me = new_identity()
    created = await gateway.create(me, "big.txt", "text/plain", 10)
    response = await gateway.upload_form(me, created["id"], b"a" * (MAX_BYTES + 1), "big.txt", "text/plain")
    assert response.status_code == 413
    assert await gateway.stored(me, created["id"]) == (False, 1, 0)


async def test_a_form_without_the_file_field_is_400(gateway: Gateway) -> None:
    me = new_identity()
    created = await gateway.create(me, "a.txt", "text/plain", 10)
    response = await gateway.http.post(
        f"/attachments/{created['id']}/upload",
        files={"document": ("a.txt", b"hello", "text/plain")},
        headers=_as(me, {}),
    )
    assert response.status_code == 400
    assert "'file'" in response.json()["message"]


async def test_an_empty_upload_is_refused(gateway: Gateway) -> None:
    me = new_identity()
    created = await gateway.create(me, "a.txt", "text/plain", 6)
    assert (await gateway.upload(me, created["id"], b"")).status_code == 400
    assert (await gateway.upload(me, created["id"], b"  \n\t ")).status_code == 422
    assert await gateway.stored(me, created["id"]) == (False, 1, 0)


async def test_another_teams_attachment_is_404_like_an_unknown_one(gateway: Gateway) -> None:
    me = new_identity()
    stranger = new_identity()
    created = await gateway.create(me, "n.md", "text/markdown", len(MARKDOWN))

    for attempt in (
        await gateway.upload(stranger, created["id"], MARKDOWN),
        await gateway.upload(me, "atc_unknown", MARKDOWN),
        await gateway.download(stranger, created["id"]),
        await gateway.download(me, "atc_unknown"),
    ):
        assert attempt.status_code == 404
        assert attempt.json() == {"error": "not_found", "message": "Not found."}
    assert await gateway.stored(me, created["id"]) == (False, 1, 0)

    assert (await gateway.upload(me, created["id"], MARKDOWN)).status_code == 200
    assert (await gateway.download(stranger, created["id"])).status_code == 404
    # What /chatkit answers with 404.
    with pytest.raises(NotFoundError):
        await gateway.chatkit(stranger, {"type": "attachments.delete", "params": {"attachment_id": created["id"]}})
    assert await gateway.stored(me, created["id"]) == (True, 1, 1)


async def test_uploading_twice_is_409_and_keeps_the_first_upload(gateway: Gateway) -> None:
    me = new_identity()
    created = await gateway.create(me, "n.md", "text/markdown", len(MARKDOWN))
    first = await gateway.upload(me, created["id"], MARKDOWN)

    second = await gateway.upload(me, created["id"], b"# Something else entirely\n")

    assert second.status_code == 409
    assert second.json()["error"] == "already_uploaded"
    assert (await gateway.download(me, created["id"])).content == MARKDOWN
    assert [hit.document_id for hit in await gateway.knowledge.search(me.team_id, "zebrafish")] == [
        first.json()["document_id"]
    ]
    assert await gateway.stored(me, created["id"]) == (True, 1, 1)


async def test_a_pdf_without_text_is_422_and_nothing_is_stored(gateway: Gateway) -> None:
    me = new_identity()
    blank = pdf(None)
    created = await gateway.create(me, "scan.pdf", "application/pdf", len(blank))

    response = await gateway.upload(me, created["id"], blank, headers={"content-type": "application/pdf"})

    assert response.status_code == 422
    assert response.json()["error"] == "unreadable_document"
    assert "scan.pdf" in response.json()["message"]
    assert await gateway.stored(me, created["id"]) == (False, 1, 0)
    assert (await gateway.download(me, created["id"])).status_code == 404


async def test_a_broken_pdf_is_422(gateway: Gateway) -> None:
    me = new_identity()
    created = await gateway.create(me, "x.pdf", "application/pdf", 20)
    response = await gateway.upload(me, created["id"], b"%PDF-1.4 not really")
    assert response.status_code == 422
    assert await gateway.stored(me, created["id"]) == (False, 1, 0)


async def test_a_failure_after_the_bytes_are_stored_removes_them(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    me = new_identity()
    created = await gateway.create(me, "n.md", "text/markdown", len(MARKDOWN))

    async def broken_save(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("database went away")

    monkeypatch.setattr(gateway.store, "save_attachment", broken_save)
    response = await gateway.upload(me, created["id"], MARKDOWN)
    monkeypatch.undo()

    assert response.status_code == 500
    assert response.json() == {"error": "internal_error", "message": "Something went wrong on our side."}
    assert await gateway.stored(me, created["id"]) == (False, 1, 0)
    assert (await gateway.upload(me, created["id"], MARKDOWN)).status_code == 200


async def test_concurrent_uploads_of_one_attachment_store_it_once(gateway: Gateway) -> None:
    me = new_identity()
    created = await gateway.create(me, "n.md", "text/markdown", len(MARKDOWN))

    responses = await asyncio.gather(*(gateway.upload(me, created["id"], MARKDOWN) for _ in range(4)))

    assert sorted(r.status_code for r in responses) == [200, 409, 409, 409]
    assert await gateway.stored(me, created["id"]) == (True, 1, 1)


async def test_an_allowed_type_that_is_no_document_is_stored_without_one(gateway: Gateway, tmp_path: Path) -> None:
    me = new_identity()
    context = RequestContext(identity=me)
    settings = Settings(
        PUBLIC_BASE_URL=BASE_URL, MAX_UPLOAD_BYTES=MAX_BYTES, ALLOWED_UPLOAD_TYPES=["image/png", "text/x-markdown"]
    )
    images = KitrelayAttachmentStore(
        store=gateway.store, blobs=gateway.blobs, knowledge=gateway.knowledge, settings=settings
    )
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32

    created = await images.create_attachment(
        AttachmentCreateParams(name="p.png", size=40, mime_type="image/png"), context
    )
    uploaded = await images.upload(created.id, png, context, content_type="image/png")

    assert (uploaded.mime_type, uploaded.size, uploaded.document_id, uploaded.title) == ("image/png", 40, None, None)
    assert await images.download(created.id, context) == (await gateway.store.load_attachment(created.id, context), png)
    assert await gateway.stored(me, created.id) == (True, 1, 0)
    # An alias in the settings allows the canonical type.
    markdown = AttachmentCreateParams(name="m.md", size=3, mime_type="text/markdown")
    assert (await images.create_attachment(markdown, context)).mime_type == "text/markdown"


# -- download and delete ------------------------------------------------------------------------------------------


async def test_download_returns_the_same_bytes_to_anyone_in_the_team(gateway: Gateway) -> None:
    me = new_identity()
    colleague = new_identity(team_id=me.team_id)
    content = "Grüße aus Köln\r\nline two\n".encode()
    created = await gateway.create(me, "Grüße.txt", "text/plain", len(content))
    assert (await gateway.download(me, created["id"])).status_code == 404  # nothing uploaded yet
    await gateway.upload(me, created["id"], content)

    response = await gateway.download(colleague, created["id"])

    assert response.status_code == 200
    assert response.content == content
    assert response.headers["content-type"].startswith("text/plain")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "filename*=UTF-8''Gr%C3%BC%C3%9Fe.txt" in response.headers["content-disposition"]


async def test_delete_removes_bytes_metadata_and_documents(gateway: Gateway) -> None:
    me = new_identity()
    created = await gateway.create(me, "n.md", "text/markdown", len(MARKDOWN))
    await gateway.upload(me, created["id"], MARKDOWN)
    other = b"# Other\n\nAlso about a zebrafish.\n"
    kept = await gateway.create(me, "other.md", "text/markdown", len(other))
    await gateway.upload(me, kept["id"], other)
    assert len(await gateway.knowledge.search(me.team_id, "zebrafish")) == 2

    answer = await gateway.chatkit(me, {"type": "attachments.delete", "params": {"attachment_id": created["id"]}})

    assert answer == {}
    assert await gateway.stored(me, created["id"]) == (False, 0, 0)
    assert (await gateway.download(me, created["id"])).status_code == 404
    assert [hit.title for hit in await gateway.knowledge.search(me.team_id, "zebrafish")] == ["Other"]
    assert await gateway.stored(me, kept["id"]) == (True, 1, 1)


async def test_delete_of_a_pending_attachment_and_purge(gateway: Gateway) -> None:
    me = new_identity()
    pending = await gateway.create(me, "n.md", "text/markdown", 10)
    assert await gateway.chatkit(me, {"type": "attachments.delete", "params": {"attachment_id": pending["id"]}}) == {}
    assert await gateway.stored(me, pending["id"]) == (False, 0, 0)

    uploaded = await gateway.create(me, "m.md", "text/markdown", len(MARKDOWN))
    await gateway.upload(me, uploaded["id"], MARKDOWN)
    assert gateway.server.attachment_store is not None
    attachments = gateway.server.attachment_store
    assert isinstance(attachments, KitrelayAttachmentStore)
    await attachments.purge(uploaded["id"], RequestContext(identity=me))
    assert await gateway.stored(me, uploaded["id"]) == (False, 0, 0)
