"""KnowledgeService, on SQLite (FTS5) and PostgreSQL (tsvector): the `knowledge` fixture runs both."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kitrelay.services.documents import chunk_document, extract_text
from kitrelay.services.knowledge import (
    DocumentNotFoundError,
    DocumentRecord,
    KnowledgeService,
    SearchHit,
    fts5_query,
    search_terms,
)
from kitrelay.shared.store.models import DocumentChunkRow, DocumentRow
from tests.databases import new_identity
from tests.services.conftest import make_pdf

ONBOARDING = """# Onboarding guide

Welcome to Acme! This guide walks you through your first week at the company.

## VPN access

Request VPN access from the IT helpdesk on your first day. Install the WireGuard client and import the
profile IT sends you. The VPN is required for the wiki and the build servers.

## Laptop

Pick up your laptop at reception. It comes with the standard developer image.

## Lunch

The canteen opens at noon.
"""

EXPENSES = """# Expense policy

Submit receipts within 30 days. Managers approve expenses weekly; finance pays them with the next salary.
Access to the expense portal is granted automatically.
"""

HOLIDAYS = "Public holidays\n\nThe office is closed on New Year's Day and on the national holiday in October."

QUESTION = "what does the onboarding guide say about VPN access?"


def new_team() -> str:
    return new_identity().team_id


async def add_markdown(
    knowledge: KnowledgeService, team_id: str, title: str, body: str, *, attachment_id: str | None = None
) -> DocumentRecord:
    return await knowledge.add_document(
        team_id, title=title, text=body, source="admin", mime_type="text/markdown", attachment_id=attachment_id
    )


async def add_library(knowledge: KnowledgeService, team_id: str) -> dict[str, DocumentRecord]:
    return {
        "onboarding": await add_markdown(knowledge, team_id, "Onboarding guide", ONBOARDING),
        "expenses": await add_markdown(knowledge, team_id, "Expense policy", EXPENSES),
        "holidays": await knowledge.add_document(
            team_id, title="Public holidays", text=HOLIDAYS, source="upload", mime_type="text/plain"
        ),
    }


async def chunk_rows(sessions: async_sessionmaker[AsyncSession], document_id: str) -> list[DocumentChunkRow]:
    async with sessions() as session:
        query = select(DocumentChunkRow).where(DocumentChunkRow.document_id == document_id)
        return list((await session.execute(query.order_by(DocumentChunkRow.position))).scalars())


async def dialect_of(sessions: async_sessionmaker[AsyncSession]) -> str:
    async with sessions() as session:
        return session.get_bind().dialect.name


async def fts_rowids(sessions: async_sessionmaker[AsyncSession], word: str) -> list[int]:
    """SQLite only: what the FTS5 index itself returns for a word, bypassing the service."""
    async with sessions() as session:
        query = text("SELECT rowid FROM document_chunks_fts WHERE document_chunks_fts MATCH :q")
        return list((await session.execute(query, {"q": fts5_query([word])})).scalars())


async def check_fts_integrity(sessions: async_sessionmaker[AsyncSession]) -> None:
    """SQLite only: FTS5 compares its index with the content table and raises if they disagree."""
    async with sessions() as session, session.begin():
        await session.execute(text("INSERT INTO document_chunks_fts (document_chunks_fts) VALUES ('integrity-check')"))


def assert_plain_snippet(hit: SearchHit) -> None:
    """A snippet is at most ~240 characters of the chunk's own text: no markup, no highlight markers."""
    assert 0 < len(hit.snippet) <= 241
    flat = " ".join(hit.text.split())
    for fragment in hit.snippet.split("…"):
        assert fragment.strip() in flat


# -- adding and listing ------------------------------------------------------------------------------------------


async def test_add_document_stores_it_with_its_chunks(
    knowledge: KnowledgeService, db_sessions: async_sessionmaker[AsyncSession]
) -> None:
    team = new_team()
    before = datetime.now(UTC)
    record = await knowledge.add_document(
        team,
        title="  Onboarding   guide ",
        text=ONBOARDING,
        source="upload",
        mime_type="text/markdown; charset=utf-8",
        created_by="user_ann",
        attachment_id="atc_1",
    )
    after = datetime.now(UTC)

    assert record.id.startswith("doc_")
    assert (record.team_id, record.title, record.source) == (team, "Onboarding guide", "upload")
    assert (record.mime_type, record.created_by, record.attachment_id) == ("text/markdown", "user_ann", "atc_1")
    assert record.byte_size == len(ONBOARDING.encode())
    assert record.created_at.utcoffset() == timedelta(0)
    assert before - timedelta(milliseconds=1) <= record.created_at <= after + timedelta(milliseconds=1)

    expected = chunk_document(ONBOARDING, mime_type="text/markdown")
    assert record.chunk_count == len(expected) == 4
    rows = await chunk_rows(db_sessions, record.id)
    assert [(r.position, r.heading, r.text, r.team_id) for r in rows] == [
        (c.position, c.heading, c.text, team) for c in expected
    ]
    async with db_sessions() as session:
        stored = (await session.execute(select(DocumentRow.text).where(DocumentRow.id == record.id))).scalar_one()
    assert stored == ONBOARDING

    assert await knowledge.list_documents(team) == [record]
    assert await knowledge.get_document(team, record.id) == record


async def test_list_documents_is_newest_first_with_chunk_counts(knowledge: KnowledgeService) -> None:
    team = new_team()
    library = await add_library(knowledge, team)
    listed = await knowledge.list_documents(team)
    assert [d.id for d in listed] == [library[name].id for name in ("holidays", "expenses", "onboarding")]
    assert [d.chunk_count for d in listed] == [1, 1, 4]
    assert await knowledge.list_documents(new_team()) == []


async def test_byte_size_is_the_files_when_given_else_the_texts(knowledge: KnowledgeService) -> None:
    team = new_team()
    default = await knowledge.add_document(team, title="t", text="café", source="admin", mime_type="text/plain")
    assert default.byte_size == 5
    given = await knowledge.add_document(
        team, title="t", text="café", source="admin", mime_type="application/pdf", byte_size=12345
    )
    assert given.byte_size == 12345


async def test_a_pdf_document_is_searchable(knowledge: KnowledgeService) -> None:
    team = new_team()
    data = make_pdf(["Security handbook"], ["Rotate your passwords every ninety days."])
    body = extract_text(data, mime_type="application/pdf", filename="handbook.pdf")
    record = await knowledge.add_document(
        team, title="handbook", text=body, source="admin", mime_type="application/pdf", byte_size=len(data)
    )
    assert (record.mime_type, record.byte_size, record.chunk_count) == ("application/pdf", len(data), 1)

    [hit] = await knowledge.search(team, "how often should I rotate my password?")
    assert (hit.document_id, hit.title, hit.heading) == (record.id, "handbook", None)
    assert "passwords" in hit.snippet
    assert_plain_snippet(hit)


async def test_nul_characters_are_dropped(knowledge: KnowledgeService) -> None:
    team = new_team()
    await knowledge.add_document(team, title="t", text="null\x00byte", source="admin", mime_type="text/plain")
    [hit] = await knowledge.search(team, "nullbyte")
    assert hit.text == "nullbyte"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"text": ""}, "needs some text"),
        ({"text": " \n\t "}, "needs some text"),
        ({"text": "\x00"}, "needs some text"),
        ({"text": "# Only\n\n## headings", "mime_type": "text/markdown"}, "only headings"),
        ({"title": "   "}, "title"),
        ({"title": "x" * 501}, "title"),
        ({"source": "robot"}, "source"),
    ],
)
async def test_add_document_rejects_bad_input(knowledge: KnowledgeService, kwargs: dict, message: str) -> None:
    team = new_team()
    arguments = {"title": "t", "text": "some text", "source": "admin", "mime_type": "text/plain", **kwargs}
    with pytest.raises(ValueError, match=message):
        await knowledge.add_document(team, **arguments)
    assert await knowledge.list_documents(team) == []


# -- search ------------------------------------------------------------------------------------------------------


async def test_search_ranks_the_relevant_document_first_with_its_best_chunk(knowledge: KnowledgeService) -> None:
    team = new_team()
    library = await add_library(knowledge, team)

    hits = await knowledge.search(team, QUESTION)

    assert hits[0].document_id == library["onboarding"].id
    assert hits[0].title == "Onboarding guide"
    # The guide's introduction (under the title heading) matches "onboarding guide"; the VPN section is the answer.
    assert hits[0].heading == "VPN access"
    assert "VPN" in hits[0].snippet
    assert "WireGuard" in hits[0].text
    assert_plain_snippet(hits[0])
    # The expense policy mentions "access" too, so it may follow, but never before; the holidays never match.
    assert [h.document_id for h in hits[1:]] in ([], [library["expenses"].id])
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert all(h.score > 0 for h in hits)


async def test_search_finds_words_in_any_form(knowledge: KnowledgeService) -> None:
    team = new_team()
    library = await add_library(knowledge, team)
    [hit] = await knowledge.search(team, "Who approves EXPENSE receipts?")
    assert hit.document_id == library["expenses"].id
    assert "approve" in hit.snippet
    [laptop] = await knowledge.search(team, "laptops")
    assert (laptop.document_id, laptop.heading) == (library["onboarding"].id, "Laptop")


async def test_search_returns_one_hit_per_document_its_best_chunk(knowledge: KnowledgeService) -> None:
    team = new_team()
    sections = "\n\n".join(
        f"## Section {n}\n\n" + ("The kettle is in the kitchen. " if n == 3 else "Nothing about it here. ") * 3
        for n in range(6)
    )
    many = await add_markdown(knowledge, team, "Office", "# Office\n\n" + sections.replace("here", "kettle here"))
    other = await add_markdown(knowledge, team, "Other", "A kettle.")

    hits = await knowledge.search(team, "kettle kitchen")
    assert sorted(h.document_id for h in hits) == sorted([many.id, other.id])
    best = next(h for h in hits if h.document_id == many.id)
    assert best.heading == "Section 3"
    assert hits[0].document_id == many.id


async def test_search_limit(knowledge: KnowledgeService) -> None:
    team = new_team()
    for n in range(4):
        await add_markdown(knowledge, team, f"Doc {n}", f"Shared topic, and word{n}.")
    assert len(await knowledge.search(team, "shared topic")) == 4
    assert len(await knowledge.search(team, "shared topic", limit=2)) == 2
    with pytest.raises(ValueError, match="limit"):
        await knowledge.search(team, "shared", limit=0)


async def test_snippets_are_short_and_plain(knowledge: KnowledgeService) -> None:
    team = new_team()
    filler = "Lorem ipsum dolor sit amet consectetur adipiscing elit. " * 6
    body = filler + "The quarterly zeppelin review happens on Fridays. " + filler
    await knowledge.add_document(team, title="Long", text=body, source="admin", mime_type="text/plain")
    [hit] = await knowledge.search(team, "zeppelin")
    assert len(hit.text) > 500
    assert "zeppelin" in hit.snippet
    assert_plain_snippet(hit)


async def test_a_match_in_the_heading_alone_still_has_a_snippet(knowledge: KnowledgeService) -> None:
    team = new_team()
    await add_markdown(knowledge, team, "Zoo", "## Zebra crossings\n\nStripes everywhere; cars stop for people.")
    [hit] = await knowledge.search(team, "zebras")
    assert hit.heading == "Zebra crossings"
    assert hit.snippet == "Stripes everywhere; cars stop for people."


async def test_search_is_scoped_to_the_team(knowledge: KnowledgeService) -> None:
    team_a, team_b = new_team(), new_team()
    library = await add_library(knowledge, team_a)

    assert await knowledge.search(team_b, QUESTION) == []
    assert await knowledge.search(team_b, "expenses holidays laptop") == []
    assert await knowledge.list_documents(team_b) == []
    with pytest.raises(DocumentNotFoundError):
        await knowledge.get_document(team_b, library["onboarding"].id)

    own = await add_markdown(knowledge, team_b, "B's VPN notes", "Our VPN access is via the office router.")
    assert [h.document_id for h in await knowledge.search(team_b, QUESTION)] == [own.id]
    assert own.id not in [h.document_id for h in await knowledge.search(team_a, QUESTION)]


@pytest.mark.parametrize(
    "query",
    [
        "what is the airspeed of an unladen swallow",
        "",
        "   ",
        "what does the say about?",
        "?!.,;: -- ''",
        "a i",
    ],
)
async def test_questions_that_match_nothing_return_nothing(knowledge: KnowledgeService, query: str) -> None:
    team = new_team()
    await add_library(knowledge, team)
    assert await knowledge.search(team, query) == []


@pytest.mark.parametrize(
    "query",
    [
        '"VPN',
        'VPN"',
        '""',
        "VPN*",
        "*",
        "(VPN",
        "VPN)",
        "NEAR(VPN access)",
        "NEAR",
        "VPN NOT access",
        "VPN AND OR",
        "-VPN",
        "VPN -access",
        "heading:VPN",
        "text: VPN",
        "{heading text}: VPN",
        "^VPN",
        "VPN + access",
        "VPN & access | !laptop <-> lunch",
        "VPN:*",
        "'VPN'",
        "VPN'); DROP TABLE documents; --",
        "\\VPN\\",
        "VPN%_",
    ],
)
async def test_query_syntax_in_questions_is_just_text(knowledge: KnowledgeService, query: str) -> None:
    team = new_team()
    library = await add_library(knowledge, team)
    hits = await knowledge.search(team, query)
    if "vpn" in query.lower():
        assert hits[0].document_id == library["onboarding"].id
        assert hits[0].heading == "VPN access"
    else:
        assert hits == []
    assert len(await knowledge.list_documents(team)) == 3


def test_search_terms_are_the_meaningful_words() -> None:
    assert search_terms(QUESTION) == ["onboarding", "guide", "vpn", "access"]
    assert search_terms("VPN? vpn! VPN-access, e-mail_") == ["vpn", "access", "mail"]
    assert search_terms("NEAR(x* y) AND z") == ["near"]
    assert search_terms("Ünïcödé straße") == ["ünïcödé", "straße"]
    assert len(search_terms(" ".join(f"word{n}" for n in range(100)))) == 32


def test_fts5_query_quotes_every_term() -> None:
    assert fts5_query(["vpn", "near"]) == '"vpn" OR "near"'
    assert fts5_query(['a"b']) == '"a""b"'


# -- updates and deletes -----------------------------------------------------------------------------------------


async def test_changed_chunks_are_reindexed(
    knowledge: KnowledgeService, db_sessions: async_sessionmaker[AsyncSession]
) -> None:
    team = new_team()
    record = await add_markdown(knowledge, team, "Notes", "## Old heading\n\nThe aardvark sleeps.")
    async with db_sessions() as session, session.begin():
        await session.execute(
            update(DocumentChunkRow)
            .where(DocumentChunkRow.document_id == record.id)
            .values(heading="New heading", text="The platypus swims.")
        )
    assert await knowledge.search(team, "aardvark") == []
    [hit] = await knowledge.search(team, "platypus")
    assert (hit.document_id, hit.heading) == (record.id, "New heading")
    if await dialect_of(db_sessions) == "sqlite":
        await check_fts_integrity(db_sessions)


async def test_delete_document_removes_its_chunks_and_their_index(
    knowledge: KnowledgeService, db_sessions: async_sessionmaker[AsyncSession]
) -> None:
    team = new_team()
    library = await add_library(knowledge, team)
    doomed = library["onboarding"]
    sqlite = await dialect_of(db_sessions) == "sqlite"
    chunk_ids = [row.id for row in await chunk_rows(db_sessions, doomed.id)]
    if sqlite:
        assert set(await fts_rowids(db_sessions, "wireguard")) & set(chunk_ids)

    await knowledge.delete_document(team, doomed.id)

    assert await chunk_rows(db_sessions, doomed.id) == []
    async with db_sessions() as session:
        left = select(func.count()).select_from(DocumentChunkRow).where(DocumentChunkRow.id.in_(chunk_ids))
        assert (await session.execute(left)).scalar_one() == 0
    assert await knowledge.search(team, "wireguard laptop canteen") == []
    assert [h.document_id for h in await knowledge.search(team, QUESTION)] == [library["expenses"].id]
    assert [d.id for d in await knowledge.list_documents(team)] == [library["holidays"].id, library["expenses"].id]
    if sqlite:
        assert not set(await fts_rowids(db_sessions, "wireguard")) & set(chunk_ids)
        await check_fts_integrity(db_sessions)

    with pytest.raises(DocumentNotFoundError):
        await knowledge.delete_document(team, doomed.id)
    with pytest.raises(DocumentNotFoundError):
        await knowledge.get_document(team, doomed.id)


async def test_deleting_the_document_row_cascades_in_the_database(
    knowledge: KnowledgeService, db_sessions: async_sessionmaker[AsyncSession]
) -> None:
    """ON DELETE CASCADE itself, not the service: whoever deletes a document row takes its chunks along."""
    team = new_team()
    record = await add_markdown(knowledge, team, "Doomed", "## Gone\n\nThe quokka smiles.\n\n## Also\n\nQuokkas.")
    async with db_sessions() as session, session.begin():
        await session.execute(text("DELETE FROM documents WHERE id = :id"), {"id": record.id})
    assert await chunk_rows(db_sessions, record.id) == []
    assert await knowledge.search(team, "quokka") == []
    if await dialect_of(db_sessions) == "sqlite":
        assert await fts_rowids(db_sessions, "quokka") == []
        await check_fts_integrity(db_sessions)


async def test_another_teams_document_cannot_be_deleted(knowledge: KnowledgeService) -> None:
    owner, outsider = new_team(), new_team()
    record = await add_markdown(knowledge, owner, "Private", "Secret plans.", attachment_id="atc_shared")
    with pytest.raises(DocumentNotFoundError):
        await knowledge.delete_document(outsider, record.id)
    with pytest.raises(DocumentNotFoundError):
        await knowledge.delete_document(owner, "doc_does_not_exist")
    assert await knowledge.delete_by_attachment(outsider, "atc_shared") == 0
    assert await knowledge.list_documents(owner) == [record]
    assert issubclass(DocumentNotFoundError, LookupError)


async def test_delete_by_attachment(knowledge: KnowledgeService) -> None:
    team = new_team()
    first = await add_markdown(knowledge, team, "One", "Walrus facts.", attachment_id="atc_a")
    second = await add_markdown(knowledge, team, "Two", "More walrus facts.", attachment_id="atc_a")
    keep = await add_markdown(knowledge, team, "Three", "Walrus trivia.", attachment_id="atc_b")
    admin = await add_markdown(knowledge, team, "Four", "Walrus lore.")

    assert await knowledge.delete_by_attachment(team, "atc_a") == 2
    assert await knowledge.delete_by_attachment(team, "atc_a") == 0
    assert {d.id for d in await knowledge.list_documents(team)} == {keep.id, admin.id}
    assert {h.document_id for h in await knowledge.search(team, "walrus")} == {keep.id, admin.id}
    assert first.id != second.id
