"""A team's knowledge base: documents cut into chunks, and ranked full-text search over them.

Documents belong to a team; another team's document does not exist as far as the caller can tell
(`DocumentNotFoundError`, exactly as for an unknown id), and search never returns it.

Search runs on whatever full-text machinery the database has (the 0002 migration creates it):

* PostgreSQL: the generated `document_chunks.search_vector` (GIN-indexed), ranked by `ts_rank_cd`, snippets by
  `ts_headline`;
* SQLite: the FTS5 table `document_chunks_fts`, ranked by `bm25()` (headings weigh double), snippets by
  `snippet()`.

Neither ever sees the user's text as query syntax: a question becomes its meaningful words, each quoted (FTS5) or
bound as a parameter of `plainto_tsquery` (PostgreSQL), OR-ed together.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict
from sqlalchemy import ColumnElement, delete, func, insert, select
from sqlalchemy import text as sql_text
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kitrelay.services.documents import chunk_document, normalize_mime
from kitrelay.shared.ids import new_id
from kitrelay.shared.store.engine import read_session
from kitrelay.shared.store.models import TITLE_MAX_LENGTH, DocumentChunkRow, DocumentRow

DocumentSource = Literal["upload", "admin"]
SOURCES: tuple[str, ...] = get_args(DocumentSource)

DOCUMENT_ID_PREFIX = "doc"
SNIPPET_MAX_CHARS = 240
# A question longer than this many meaningful words is cut: more terms only slow the OR query down.
MAX_QUERY_TERMS = 32

# Words that carry no meaning in a question to a knowledge base. Both full-text engines have their own lists too,
# but FTS5's porter tokenizer keeps every word, and an OR of "what" and "the" would match everything. (A block of
# words reads better than 130 quoted strings.)
STOPWORDS = frozenset(
    """
    a about above after again all also am an and any are as at be been being both but by can could did do does
    doing done for from get got had has have having he her here hers him his how i if in into is it its just know
    let me more most my no nor not of off on once only or other our ours out over own please say says said she
    should show so some such tell than that the their theirs them then there these they this those through to too
    under until up us very was we were what when where which while who whom why will with would you your yours
    """.split()  # noqa: SIM905
)
_WORD = re.compile(r"\w+")

# What every listing hands back, in DocumentRecord's field order (chunk_count is added per query).
_DOCUMENT_COLUMNS = (
    DocumentRow.id,
    DocumentRow.team_id,
    DocumentRow.title,
    DocumentRow.source,
    DocumentRow.mime_type,
    DocumentRow.attachment_id,
    DocumentRow.created_by,
    DocumentRow.created_at,
    DocumentRow.byte_size,
)

# One row per document (its best chunk), best first. The window runs over plain columns of the CTE, so the FTS5
# auxiliary functions (bm25, snippet) are only ever called in the query that does the MATCH. `{only_document}` is
# empty or a condition on a bound parameter.
_SQLITE_SEARCH = """
    WITH matches AS (
        SELECT c.document_id, c.heading, c.text, c.position,
               -bm25(document_chunks_fts, 2.0, 1.0) AS score,
               snippet(document_chunks_fts, 1, '', '', '…', 40) AS snippet
        FROM document_chunks_fts JOIN document_chunks AS c ON c.id = document_chunks_fts.rowid
        WHERE document_chunks_fts MATCH :query AND c.team_id = :team_id {only_document}
    ),
    best AS (
        SELECT *, row_number() OVER (PARTITION BY document_id ORDER BY score DESC, position) AS nth FROM matches
    )
    SELECT best.document_id, d.title, best.heading, best.text, best.position, best.snippet, best.score
    FROM best JOIN documents AS d ON d.id = best.document_id
    WHERE best.nth = 1
    ORDER BY best.score DESC, best.document_id
    LIMIT :limit
"""

# `{query}` is a tsquery expression made of bound parameters only (see _postgres_search). ts_headline is costly,
# so it runs on the final rows only.
_POSTGRES_SEARCH = """
    WITH q AS (SELECT {query} AS query),
    matches AS (
        SELECT c.document_id, c.heading, c.text, c.position, ts_rank_cd(c.search_vector, q.query) AS score
        FROM document_chunks AS c, q
        WHERE c.team_id = :team_id AND c.search_vector @@ q.query {only_document}
    ),
    best AS (
        SELECT *, row_number() OVER (PARTITION BY document_id ORDER BY score DESC, position) AS nth FROM matches
    )
    SELECT best.document_id, d.title, best.heading, best.text, best.position, best.score,
           ts_headline('english', best.text, q.query,
                       'StartSel="", StopSel="", MinWords=15, MaxWords=35, MaxFragments=2, FragmentDelimiter=" … "')
               AS snippet
    FROM best JOIN documents AS d ON d.id = best.document_id, q
    WHERE best.nth = 1
    ORDER BY best.score DESC, best.document_id
    LIMIT :limit
"""
_ONLY_DOCUMENT = "AND c.document_id = :document_id"


class DocumentRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    team_id: str
    title: str
    source: DocumentSource
    mime_type: str
    attachment_id: str | None
    created_by: str | None
    created_at: datetime
    byte_size: int
    chunk_count: int


class SearchHit(BaseModel):
    """A document's best chunk for a query. `score` is higher for better hits; it compares hits of one search
    only (the scales of the two databases differ)."""

    model_config = ConfigDict(frozen=True)

    document_id: str
    title: str
    heading: str | None
    snippet: str
    text: str
    score: float
    # Which chunk of the document the passage is (its position, from 0): where a reader opens the document.
    position: int = 0


class Passage(BaseModel):
    """A chunk of a document, as a reader of the document is shown it."""

    position: int
    heading: str | None
    text: str


class DocumentNotFoundError(LookupError):
    """No document with this id in the caller's team."""


class KnowledgeService:
    """Add, list, delete and search a team's documents. Each call is one short transaction."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def add_document(
        self,
        team_id: str,
        *,
        title: str,
        text: str,
        source: DocumentSource,
        mime_type: str,
        created_by: str | None = None,
        attachment_id: str | None = None,
        byte_size: int | None = None,
    ) -> DocumentRecord:
        """Store a document and index its chunks, all or nothing.

        `byte_size` is the size of the file it came from; it defaults to the size of `text` in UTF-8.
        """
        if source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}, not {source!r}")
        # PostgreSQL text cannot hold NUL characters.
        text = text.replace("\x00", "")
        if not text.strip():
            raise ValueError("a document needs some text")
        kind = normalize_mime(mime_type, "")
        chunks = chunk_document(text, mime_type=kind)
        if not chunks:
            raise ValueError("the document has no text to search, only headings")
        values: dict[str, Any] = {
            "id": new_id(DOCUMENT_ID_PREFIX),
            "team_id": team_id,
            "title": _clean_title(title),
            "source": source,
            "mime_type": kind,
            "attachment_id": attachment_id,
            "created_by": created_by,
            "created_at": datetime.now(UTC),
            "byte_size": len(text.encode("utf-8")) if byte_size is None else byte_size,
            "text": text,
        }
        chunk_values = [
            {
                "document_id": values["id"],
                "team_id": team_id,
                "position": chunk.position,
                "heading": chunk.heading,
                "text": chunk.text,
            }
            for chunk in chunks
        ]
        async with self._sessions() as session, session.begin():
            row = (await session.execute(insert(DocumentRow).values(values).returning(*_DOCUMENT_COLUMNS))).one()
            # The chunks' full-text index follows by itself: a generated column (PostgreSQL) or triggers (SQLite).
            await session.execute(insert(DocumentChunkRow), chunk_values)
        return _record(row._mapping, chunk_count=len(chunks))

    async def list_documents(self, team_id: str) -> list[DocumentRecord]:
        """The team's documents, newest first."""
        return await self._documents(team_id)

    async def get_document(self, team_id: str, document_id: str) -> DocumentRecord:
        """One of the team's documents (without its text)."""
        for record in await self._documents(team_id, DocumentRow.id == document_id):
            return record
        raise DocumentNotFoundError(document_id)

    async def document_passages(self, team_id: str, document_id: str) -> list[Passage]:
        """One of the team's documents as its readers see it: its chunks in order (a citation names one of them)."""
        await self.get_document(team_id, document_id)
        query = (
            select(DocumentChunkRow.position, DocumentChunkRow.heading, DocumentChunkRow.text)
            .where(DocumentChunkRow.document_id == document_id, DocumentChunkRow.team_id == team_id)
            .order_by(DocumentChunkRow.position)
        )
        async with read_session(self._sessions) as session:
            rows = (await session.execute(query)).all()
        return [Passage(position=row.position, heading=row.heading, text=row.text) for row in rows]

    async def delete_document(self, team_id: str, document_id: str) -> None:
        """Delete a document; its chunks and their index entries go with it (ON DELETE CASCADE)."""
        stmt = (
            delete(DocumentRow)
            .where(DocumentRow.id == document_id, DocumentRow.team_id == team_id)
            .returning(DocumentRow.id)
        )
        async with self._sessions() as session, session.begin():
            deleted = (await session.execute(stmt)).first()
        if deleted is None:
            raise DocumentNotFoundError(document_id)

    async def delete_by_attachment(self, team_id: str, attachment_id: str) -> int:
        """Delete the team's documents made from this attachment (its file was deleted); how many there were."""
        stmt = (
            delete(DocumentRow)
            .where(DocumentRow.team_id == team_id, DocumentRow.attachment_id == attachment_id)
            .returning(DocumentRow.id)
        )
        async with self._sessions() as session, session.begin():
            return len((await session.execute(stmt)).all())

    async def search(self, team_id: str, query: str, *, limit: int = 5) -> list[SearchHit]:
        """The team's documents that match the meaningful words of `query`, best first, each with its best chunk.

        Any word may match (OR); documents matching more of them, and more densely, rank higher. A query with no
        meaningful words matches nothing.

        Words of a document's title pick the document, not a passage in it: "what does the onboarding guide say
        about VPN access?" should quote the guide's VPN section, not its introduction (whose heading is the
        title). So when the question names a hit's title, its chunk is chosen again by the other words alone.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        terms = search_terms(query)
        if not terms:
            return []
        async with read_session(self._sessions) as session:
            search = _Search(session, team_id)
            hits = await search.best_chunks(terms, limit=limit)
            for index, hit in enumerate(hits):
                passage_terms = _without_title_words(terms, hit.title)
                if passage_terms and passage_terms != terms:
                    better = await search.best_chunks(passage_terms, limit=1, document_id=hit.document_id)
                    if better:
                        # The document keeps the rank the whole question gave it.
                        hits[index] = better[0].model_copy(update={"score": hit.score})
        return hits

    async def _documents(self, team_id: str, *where: ColumnElement[bool]) -> list[DocumentRecord]:
        chunk_count = (
            select(func.count())
            .where(DocumentChunkRow.document_id == DocumentRow.id)
            .correlate(DocumentRow)
            .scalar_subquery()
            .label("chunk_count")
        )
        query = (
            select(*_DOCUMENT_COLUMNS, chunk_count)
            .where(DocumentRow.team_id == team_id, *where)
            .order_by(DocumentRow.created_at.desc(), DocumentRow.id.desc())
        )
        async with read_session(self._sessions) as session:
            rows = (await session.execute(query)).all()
        return [_record(row._mapping) for row in rows]


def search_terms(query: str) -> list[str]:
    """The meaningful words of a question: lowercased, without punctuation, stopwords, single letters or repeats."""
    terms: list[str] = []
    for match in _WORD.findall(query.lower()):
        word = match.strip("_")
        if len(word) > 1 and word not in STOPWORDS and word not in terms:
            terms.append(word)
    return terms[:MAX_QUERY_TERMS]


def fts5_query(terms: list[str]) -> str:
    """An FTS5 MATCH expression matching any of `terms`. Each is a quoted string, so no term is ever read as an
    operator (NEAR, AND, NOT), a column filter (`heading:`), a prefix (`*`) or a group."""
    return " OR ".join('"' + term.replace('"', '""') + '"' for term in terms)


class _Search:
    """Ranked full-text queries on one session, in its database's dialect."""

    def __init__(self, session: AsyncSession, team_id: str) -> None:
        self._session = session
        self._team_id = team_id
        self._dialect = session.get_bind().dialect.name
        if self._dialect not in ("sqlite", "postgresql"):
            raise NotImplementedError(f"no full-text search on {self._dialect}")

    async def best_chunks(self, terms: list[str], *, limit: int, document_id: str | None = None) -> list[SearchHit]:
        """The best chunk of each document matching any of `terms`, best first."""
        only_document = "" if document_id is None else _ONLY_DOCUMENT
        params: dict[str, Any] = {"team_id": self._team_id, "limit": limit}
        if document_id is not None:
            params["document_id"] = document_id
        if self._dialect == "sqlite":
            sql = _SQLITE_SEARCH.format(only_document=only_document)
            params["query"] = fts5_query(terms)
        else:
            # Each term is a bound parameter of its own plainto_tsquery, so no user text reaches tsquery syntax;
            # `||` ORs the queries. The SQL itself is assembled from parameter names only.
            names = [f"term_{index}" for index in range(len(terms))]
            tsquery = " || ".join(f"plainto_tsquery('english', :{name})" for name in names)
            sql = _POSTGRES_SEARCH.format(query=tsquery, only_document=only_document)
            params.update(zip(names, terms, strict=True))
        rows = (await self._session.execute(sql_text(sql), params)).all()
        return [
            SearchHit(
                document_id=row.document_id,
                title=row.title,
                heading=row.heading,
                snippet=clip(row.snippet or row.text),
                text=row.text,
                score=float(row.score),
                position=row.position,
            )
            for row in rows
        ]


def _without_title_words(terms: list[str], title: str) -> list[str]:
    # Crudely plural-blind ("guides" names the "Guide"), since neither stemmer is at hand here.
    title_words = {_singular(word) for word in search_terms(title)}
    return [term for term in terms if _singular(term) not in title_words]


def _singular(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def clip(snippet: str, max_chars: int = SNIPPET_MAX_CHARS) -> str:
    """A snippet on one line, at most `max_chars` long, cut between words."""
    flat = " ".join(snippet.split())
    if len(flat) <= max_chars:
        return flat
    cut = flat[: max_chars - 1]
    if " " in cut:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" .,;:…") + "…"


def _clean_title(title: str) -> str:
    cleaned = " ".join(title.split())
    if not cleaned:
        raise ValueError("a document needs a title")
    if len(cleaned) > TITLE_MAX_LENGTH:
        raise ValueError(f"a document title has at most {TITLE_MAX_LENGTH} characters")
    return cleaned


def _record(row: RowMapping, **extra: Any) -> DocumentRecord:
    return DocumentRecord.model_validate({**row, **extra})
