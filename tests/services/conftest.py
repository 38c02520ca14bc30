"""Fixtures for the service tests: one migrated database per dialect (see tests/databases.py)."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kitrelay.services.knowledge import KnowledgeService
from kitrelay.services.tasks import TaskService
from tests.databases import db_engine, db_sessions, migrated_db_url, postgres_database_url, sqlite_database_url

__all__ = [
    "db_engine",
    "db_sessions",
    "knowledge",
    "make_pdf",
    "migrated_db_url",
    "postgres_database_url",
    "sqlite_database_url",
    "task_service",
]


@pytest.fixture
def task_service(db_sessions: async_sessionmaker[AsyncSession]) -> TaskService:
    return TaskService(db_sessions)


@pytest.fixture
def knowledge(db_sessions: async_sessionmaker[AsyncSession]) -> KnowledgeService:
    return KnowledgeService(db_sessions)


def make_pdf(*pages: list[str]) -> bytes:
    """A real, minimal PDF: one page per argument, each line drawn in standard Helvetica (no fonts to embed).

    Written out by hand, cross-reference table and all, so the tests need nothing beyond pypdf to read it back.
    A page given no lines has no content stream at all, like a page of a scan.
    """
    page_count = len(pages)
    # Objects: 1 catalog, 2 page tree, 3 font, then a page and its content stream for each page.
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [{}] /Count {} >>".format(
            " ".join(f"{4 + 2 * index} 0 R" for index in range(page_count)), page_count
        ),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    ]
    for index, lines in enumerate(pages):
        resources = "/Resources << /Font << /F1 3 0 R >> >>"
        contents = f" /Contents {5 + 2 * index} 0 R" if lines else ""
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] {resources}{contents} >>")
        shown = " ".join(f"({_pdf_string(line)}) Tj T*" for line in lines)
        stream = f"BT /F1 12 Tf 14 TL 72 720 Td {shown} ET"
        objects.append(f"<< /Length {len(stream.encode('latin-1'))} >>\nstream\n{stream}\nendstream")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{offset:010d} 00000 n \n" for offset in offsets).encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def _pdf_string(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
