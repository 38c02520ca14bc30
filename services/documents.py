"""From uploaded bytes to searchable pieces: text extraction and chunking, as pure functions.

The knowledge base indexes chunks, not whole documents: a hit should point at the few paragraphs that answer a
question, under the heading that gives them context, small enough to quote back to a model.
"""

from __future__ import annotations

import codecs
import io
import logging
import re
from dataclasses import dataclass
from pathlib import PurePath, PureWindowsPath

from pypdf import PdfReader

PLAIN_TEXT = "text/plain"
MARKDOWN = "text/markdown"
PDF = "application/pdf"
SUPPORTED_TYPES: frozenset[str] = frozenset({PLAIN_TEXT, MARKDOWN, PDF})

DEFAULT_MAX_CHARS = 800
TITLE_MAX_CHARS = 500

# What browsers and tools send for these formats besides the canonical names.
_ALIASES = {
    "text/x-markdown": MARKDOWN,
    "text/md": MARKDOWN,
    "text/x-md": MARKDOWN,
    "application/markdown": MARKDOWN,
    "application/x-pdf": PDF,
    "text/x-plain": PLAIN_TEXT,
}
# Types that say nothing more than "some bytes" or "some text": the file name decides.
_GENERIC_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream", "application/unknown", PLAIN_TEXT})
_EXTENSIONS = {
    ".md": MARKDOWN,
    ".markdown": MARKDOWN,
    ".mdown": MARKDOWN,
    ".mkd": MARKDOWN,
    ".txt": PLAIN_TEXT,
    ".text": PLAIN_TEXT,
    ".pdf": PDF,
}

# An ATX heading: one to six '#', a space, the text, optionally closing '#'s.
_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_BLANK_LINES = re.compile(r"\n[ \t]*\n")
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")

log = logging.getLogger(__name__)


class UnsupportedDocumentError(ValueError):
    """The bytes are not a document we can read text from: an unsupported type, a broken file, or no text."""


class DocumentTooLargeError(ValueError):
    """The document is readable but past a limit: too many pages, or too much text. A few kilobytes of PDF can
    expand to millions of characters (pages that share one compressed content stream), so the limits are on what
    comes out, not on the file's size."""


@dataclass(frozen=True)
class Chunk:
    """A piece of a document: its place in the document, the nearest heading above it, and its text."""

    position: int
    heading: str | None
    text: str


def normalize_mime(mime_type: str, filename: str) -> str:
    """The canonical type of a file, from what the client claimed and the file's name.

    Parameters (`; charset=utf-8`) go; known aliases map to their canonical name; and a generic claim
    (`application/octet-stream`, or `text/plain` for a `.md` file) gives way to what the extension says.
    The result may still be unsupported: `extract_text` decides that.
    """
    base = mime_type.split(";", 1)[0].strip().lower()
    base = _ALIASES.get(base, base)
    if base in _GENERIC_TYPES:
        # Browsers send Windows paths sometimes; only the last part's extension counts.
        suffix = PurePath(PureWindowsPath(filename).name).suffix.lower()
        by_name = _EXTENSIONS.get(suffix)
        if by_name is not None and (base != PLAIN_TEXT or by_name == MARKDOWN):
            return by_name
    return base or "application/octet-stream"


def extract_text(
    data: bytes, *, mime_type: str, filename: str, max_pages: int | None = None, max_chars: int | None = None
) -> str:
    """The text of a plain-text, Markdown or PDF file. Raises `UnsupportedDocumentError` for anything else, and
    `DocumentTooLargeError` for a PDF of more than `max_pages` pages or a text of more than `max_chars`
    characters (a PDF stops being read as soon as it passes)."""
    kind = normalize_mime(mime_type, filename)
    if kind in (PLAIN_TEXT, MARKDOWN):
        text = _clean(_decode(data))
        _check_chars(len(text), max_chars, filename)
        return text
    if kind == PDF:
        return _pdf_text(data, filename, max_pages=max_pages, max_chars=max_chars)
    supported = ", ".join(sorted(SUPPORTED_TYPES))
    raise UnsupportedDocumentError(f"{filename or 'the file'} is {kind}; only {supported} can be read")


def _decode(data: bytes) -> str:
    # A byte-order mark says which encoding it is; without one, UTF-8, and bytes that are not become U+FFFD.
    if data.startswith(codecs.BOM_UTF8):
        return data[len(codecs.BOM_UTF8) :].decode("utf-8", errors="replace")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16", errors="replace")
    return data.decode("utf-8", errors="replace")


def _clean(text: str) -> str:
    # PostgreSQL text cannot hold NUL; Windows and old Mac line ends become '\n' so paragraphs split the same.
    return text.replace("\x00", "").replace("\r\n", "\n").replace("\r", "\n")


def _check_chars(chars: int, max_chars: int | None, filename: str) -> None:
    if max_chars is not None and chars > max_chars:
        raise DocumentTooLargeError(
            f"{filename or 'the document'} has more than {max_chars:,} characters of text, the limit for one document"
        )


def _pdf_text(data: bytes, filename: str, *, max_pages: int | None, max_chars: int | None) -> str:
    name = filename or "the PDF"
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise UnsupportedDocumentError(f"{name} is encrypted")
        if max_pages is not None and len(reader.pages) > max_pages:
            raise DocumentTooLargeError(
                f"{name} has {len(reader.pages):,} pages; the limit for one document is {max_pages:,}"
            )
        pages: list[str] = []
        chars = 0
        for page in reader.pages:
            pages.append(page.extract_text() or "")
            chars += len(pages[-1])
            _check_chars(chars, max_chars, name)
    except (UnsupportedDocumentError, DocumentTooLargeError):
        raise
    except Exception as exc:
        # pypdf raises all sorts (PdfReadError, ValueError, KeyError, ...) on malformed input; all mean "broken". The
        # parser's own words are for the log: the person who uploaded it needs to know what to do.
        log.info("%s is not a readable PDF: %s: %s", name, type(exc).__name__, exc)
        raise UnsupportedDocumentError(
            f"{name} is not a readable PDF: it may be damaged, cut short or not a PDF at all. "
            "Try saving or exporting it as a PDF again."
        ) from exc
    text = _clean("\n\n".join(page.strip() for page in pages if page.strip()))
    if not text.strip():
        raise UnsupportedDocumentError(f"{name} has no extractable text (a scan without OCR?)")
    return text


def chunk_document(text: str, *, mime_type: str, max_chars: int = DEFAULT_MAX_CHARS) -> list[Chunk]:
    """Split a document into chunks of at most `max_chars` characters, numbered from 0.

    Markdown is cut at its headings first, and each chunk remembers the heading it sits under; within a section
    (or a whole plain-text or PDF document) blank-line paragraphs are packed together up to the limit. Only a
    paragraph longer than the limit is cut, at sentence ends if it can be, else between words.
    """
    if max_chars < 1:
        raise ValueError("max_chars must be at least 1")
    text = _clean(text)
    markdown = normalize_mime(mime_type, "") == MARKDOWN
    sections = _markdown_sections(text) if markdown else [(None, text)]
    chunks: list[Chunk] = []
    for heading, body in sections:
        for piece in _pack(_paragraphs(body, max_chars), max_chars):
            chunks.append(Chunk(position=len(chunks), heading=heading, text=piece))
    return chunks


def title_from(text: str, filename: str) -> str:
    """A document's title: its first Markdown H1, else the file name without its extension."""
    for level, heading in _headings(text):
        if level == 1 and heading:
            return heading[:TITLE_MAX_CHARS]
    title = PurePath(PureWindowsPath(filename).name).stem.strip()
    return (title or "untitled")[:TITLE_MAX_CHARS]


def _headings(text: str) -> list[tuple[int, str]]:
    return [(level, heading) for level, heading, _ in _lines_with_headings(text) if level]


def _lines_with_headings(text: str) -> list[tuple[int, str, str]]:
    """Each line as (heading level or 0, heading text, the line). Lines in fenced code blocks are never headings:
    a shell comment `# install` is not a section."""
    result: list[tuple[int, str, str]] = []
    fence: str | None = None
    for line in text.split("\n"):
        opening = _FENCE.match(line)
        if fence is not None:
            if opening and opening.group(1)[0] == fence[0] and len(opening.group(1)) >= len(fence):
                fence = None
            result.append((0, "", line))
            continue
        if opening:
            fence = opening.group(1)
            result.append((0, "", line))
            continue
        heading = _HEADING.match(line)
        if heading:
            result.append((len(heading.group(1)), " ".join((heading.group(2) or "").split()), line))
        else:
            result.append((0, "", line))
    return result


def _markdown_sections(text: str) -> list[tuple[str | None, str]]:
    """(heading, body) pairs in order; text before the first heading has no heading."""
    sections: list[tuple[str | None, str]] = []
    heading: str | None = None
    body: list[str] = []
    for level, title, line in _lines_with_headings(text):
        if level:
            sections.append((heading, "\n".join(body)))
            heading, body = (title or None), []
        else:
            body.append(line)
    sections.append((heading, "\n".join(body)))
    return [(heading, body) for heading, body in sections if body.strip()]


def _paragraphs(text: str, max_chars: int) -> list[str]:
    """Blank-line separated paragraphs, stripped, each cut into pieces of at most `max_chars`."""
    pieces: list[str] = []
    for block in _BLANK_LINES.split(text):
        paragraph = block.strip()
        if paragraph:
            pieces.extend(_split_long(paragraph, max_chars))
    return pieces


def _split_long(paragraph: str, max_chars: int) -> list[str]:
    if len(paragraph) <= max_chars:
        return [paragraph]
    units: list[str] = []
    for sentence in _SENTENCE_END.split(paragraph):
        if len(sentence) <= max_chars:
            units.append(sentence)
            continue
        for word in sentence.split():
            # A "word" longer than a chunk (a URL, a hash) is cut where it must be.
            units.extend(word[i : i + max_chars] for i in range(0, len(word), max_chars))
    return _pack(units, max_chars, separator=" ")


def _pack(units: list[str], max_chars: int, *, separator: str = "\n\n") -> list[str]:
    """Greedily join consecutive units (each at most `max_chars`) into pieces of at most `max_chars`."""
    pieces: list[str] = []
    current = ""
    for unit in units:
        if not unit:
            continue
        if not current:
            current = unit
        elif len(current) + len(separator) + len(unit) <= max_chars:
            current = f"{current}{separator}{unit}"
        else:
            pieces.append(current)
            current = unit
    if current:
        pieces.append(current)
    return pieces
