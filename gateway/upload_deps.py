"""FastAPI dependencies of the attachment routes: what the lifespan put in the app state for uploads.

Kept apart from `deps.py` so the attachment feature is wired in one place; the lifespan state must hold
`blob_store`, `knowledge` and `attachment_store` (see `gateway/uploads.py`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from kitrelay.gateway.attachments import KitrelayAttachmentStore
from kitrelay.services.blobs import BlobStore
from kitrelay.services.knowledge import KnowledgeService


def get_blob_store(request: Request) -> BlobStore:
    blob_store: BlobStore = request.state.blob_store
    return blob_store


def get_knowledge(request: Request) -> KnowledgeService:
    knowledge: KnowledgeService = request.state.knowledge
    return knowledge


def get_attachment_store(request: Request) -> KitrelayAttachmentStore:
    attachment_store: KitrelayAttachmentStore = request.state.attachment_store
    return attachment_store


BlobStoreDep = Annotated[BlobStore, Depends(get_blob_store)]
KnowledgeDep = Annotated[KnowledgeService, Depends(get_knowledge)]
AttachmentStoreDep = Annotated[KitrelayAttachmentStore, Depends(get_attachment_store)]
