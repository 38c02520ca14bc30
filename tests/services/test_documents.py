"""Text extraction and chunking (services/documents.py): pure functions, no database."""

from __future__ import annotations

import codecs
import io
import random
import re

import pytest
from pypdf import PdfReader

from kitrelay.services.documents import (
    SUPPORTED_TYPES,
    Chunk,
    DocumentTooLargeError,
    UnsupportedDocumentError,
    chunk_document,
    extract_text,
    normalize_mime,
    title_from,
)
from tests.services.conftest import make_pdf

MARKDOWN = "text/markdown"
PLAIN = "text/plain"
PDF = "application/pdf"


def words(text: str) -> list[str]:
    return text.split()


def all_words(chunks: list[Chunk]) -> list[str]:
    return [word for chunk in chunks for word in words(chunk.text)]


def letters(text: str) -> str:
    """Everything but whitespace: what chunking must keep, in order, even where it cuts a word."""
    return "".join(text.split())


# -- normalize_mime ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mime_type", "filename", "expected"),
    [
        ("text/plain", "notes.txt", PLAIN),
        ("text/plain; charset=utf-8", "notes.txt", PLAIN),
        ("TEXT/Markdown; charset=UTF-8", "README", MARKDOWN),
        ("text/x-markdown", "guide", MARKDOWN),
        ("application/octet-stream", "guide.md", MARKDOWN),
        ("application/octet-stream", "guide.MARKDOWN", MARKDOWN),
        ("", "guide.md", MARKDOWN),
        ("text/plain", "guide.md", MARKDOWN),
        ("text/plain", r"C:\Users\ann\guide.md", MARKDOWN),
        ("application/octet-stream", "report.pdf", PDF),
        ("application/x-pdf", "report", PDF),
        ("application/pdf", "report.md", PDF),
        ("application/octet-stream", "notes.txt", PLAIN),
        # A text/plain claim is only overruled towards Markdown: a .pdf sent as text/plain is not trusted as a PDF.
        ("text/plain", "report.pdf", PLAIN),
        ("application/octet-stream", "photo.png", "application/octet-stream"),
        ("image/png", "photo.png", "image/png"),
        ("", "", "application/octet-stream"),
    ],
)
def test_normalize_mime(mime_type: str, filename: str, expected: str) -> None:
    assert normalize_mime(mime_type, filename) == expected


def test_supported_types() -> None:
    assert {PLAIN, MARKDOWN, PDF} == SUPPORTED_TYPES


# -- extract_text ------------------------------------------------------------------------------------------------


def test_extract_text_decodes_utf8() -> None:
    data = "Grüße, naïve café\r\nsecond line\rthird".encode()
    assert extract_text(data, mime_type=PLAIN, filename="a.txt") == "Grüße, naïve café\nsecond line\nthird"


def test_extract_text_drops_a_byte_order_mark() -> None:
    assert extract_text(codecs.BOM_UTF8 + b"# Title", mime_type=MARKDOWN, filename="a.md") == "# Title"
    utf16 = codecs.BOM_UTF16_LE + "Hallo Welt".encode("utf-16-le")
    assert extract_text(utf16, mime_type=PLAIN, filename="a.txt") == "Hallo Welt"


def test_extract_text_replaces_bytes_that_are_not_utf8_and_drops_nul() -> None:
    text = extract_text(b"caf\xe9 ok\x00!", mime_type="text/plain; charset=latin-1", filename="a.txt")
    assert text == "caf\ufffd ok!"


def test_extract_text_uses_the_file_name_for_generic_types() -> None:
    assert extract_text(b"# Hi", mime_type="application/octet-stream", filename="x.md") == "# Hi"


def test_extract_text_reads_a_pdf() -> None:
    data = make_pdf(["Onboarding (week one)", "Request VPN access from IT."], ["Second page"])
    text = extract_text(data, mime_type=PDF, filename="guide.pdf")
    assert "Onboarding (week one)" in text
    assert "Request VPN access from IT." in text
    assert text.index("Request VPN") < text.index("Second page")


def test_extract_text_finds_a_pdf_by_its_name() -> None:
    data = make_pdf(["by name"])
    assert extract_text(data, mime_type="application/octet-stream", filename="x.pdf").strip() == "by name"


@pytest.mark.parametrize(
    "data",
    [b"", b"not a pdf at all", b"%PDF-1.4\n1 0 obj garbage", make_pdf(["cut short"])[:120]],
    ids=["empty", "text", "garbage", "truncated"],
)
def test_extract_text_rejects_a_broken_pdf(data: bytes) -> None:
    with pytest.raises(UnsupportedDocumentError, match=r"report\.pdf is not a readable PDF"):
        extract_text(data, mime_type=PDF, filename="report.pdf")


def test_extract_text_rejects_a_pdf_without_text() -> None:
    with pytest.raises(UnsupportedDocumentError, match="no extractable text"):
        extract_text(make_pdf([], []), mime_type=PDF, filename="scan.pdf")


@pytest.mark.parametrize(
    ("mime_type", "filename", "named"),
    [
        ("image/png", "photo.png", "image/png"),
        ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", "a.docx", "wordprocessingml"),
        ("application/octet-stream", "a.docx", "application/octet-stream"),
    ],
)
def test_extract_text_rejects_other_types_saying_why(mime_type: str, filename: str, named: str) -> None:
    with pytest.raises(UnsupportedDocumentError) as raised:
        extract_text(b"\x89PNG...", mime_type=mime_type, filename=filename)
    message = str(raised.value)
    assert filename in message
    assert named in message
    assert "application/pdf, text/markdown, text/plain" in message


def test_unsupported_document_error_is_a_value_error() -> None:
    assert issubclass(UnsupportedDocumentError, ValueError)


def test_a_pdf_past_the_page_limit_is_refused_before_its_text_is_read() -> None:
    data = make_pdf(["one"], ["two"], ["three"])
    assert "three" in extract_text(data, mime_type=PDF, filename="p.pdf", max_pages=3)
    with pytest.raises(DocumentTooLargeError, match=r"p\.pdf has 3 pages; the limit for one document is 2"):
        extract_text(data, mime_type=PDF, filename="p.pdf", max_pages=2)


def test_text_past_the_character_limit_is_refused() -> None:
    pdf = make_pdf(["x" * 40], ["y" * 40])
    # The limit counts what pypdf gives, page by page, before blank edges are trimmed.
    raw = sum(len(page.extract_text()) for page in PdfReader(io.BytesIO(pdf)).pages)
    assert "y" * 40 in extract_text(pdf, mime_type=PDF, filename="c.pdf", max_chars=raw)
    with pytest.raises(DocumentTooLargeError, match=f"more than {raw - 1} characters"):
        extract_text(pdf, mime_type=PDF, filename="c.pdf", max_chars=raw - 1)
    with pytest.raises(DocumentTooLargeError, match=r"notes\.md has more than 5 characters"):
        extract_text(b"# abcdef", mime_type=MARKDOWN, filename="notes.md", max_chars=5)
    # Without limits (the admin's `kitrelay kb add`), nothing is refused.
    assert extract_text(b"# abcdef", mime_type=MARKDOWN, filename="notes.md") == "# abcdef"


# -- chunk_document ----------------------------------------------------------------------------------------------

GUIDE = """# Onboarding guide

Welcome to the team.

## VPN access

Request VPN access from IT on your first day.

Install the WireGuard client.

### Troubleshooting ###

Restart the client.

## Laptop

```bash
# not a heading: a shell comment
make setup
```

Pick up your laptop at reception.
"""


def test_markdown_chunks_carry_their_nearest_heading() -> None:
    chunks = chunk_document(GUIDE, mime_type=MARKDOWN)
    assert [(c.position, c.heading) for c in chunks] == [
        (0, "Onboarding guide"),
        (1, "VPN access"),
        (2, "Troubleshooting"),
        (3, "Laptop"),
    ]
    assert chunks[0].text == "Welcome to the team."
    # Short paragraphs of one section are packed into one chunk, in order.
    assert chunks[1].text == "Request VPN access from IT on your first day.\n\nInstall the WireGuard client."
    assert chunks[2].text == "Restart the client."
    # A '#' line inside a code fence is code, not a heading.
    assert "# not a heading: a shell comment" in chunks[3].text
    assert chunks[3].text.endswith("Pick up your laptop at reception.")


def test_markdown_text_before_the_first_heading_has_no_heading() -> None:
    chunks = chunk_document("Preface.\n\n# Part one\n\nBody.", mime_type="text/markdown; charset=utf-8")
    assert [(c.heading, c.text) for c in chunks] == [(None, "Preface."), ("Part one", "Body.")]


def test_sections_with_only_headings_make_no_chunks() -> None:
    assert chunk_document("# Title\n\n## Empty\n\n   \n## Also empty\n", mime_type=MARKDOWN) == []
    assert chunk_document("", mime_type=MARKDOWN) == []
    assert chunk_document(" \n\n\t\n", mime_type=PLAIN) == []


def test_plain_text_has_no_headings_even_with_hash_lines() -> None:
    chunks = chunk_document("# not a heading\n\nbody", mime_type=PLAIN)
    assert chunks == [Chunk(position=0, heading=None, text="# not a heading\n\nbody")]
    assert chunk_document("# pdf text", mime_type=PDF) == [Chunk(position=0, heading=None, text="# pdf text")]


def test_paragraphs_are_packed_up_to_max_chars_and_never_split_when_they_fit() -> None:
    paragraphs = [f"Paragraph {n} " + "word " * 10 for n in range(10)]
    text = "\n\n".join(p.strip() for p in paragraphs)
    chunks = chunk_document(text, mime_type=PLAIN, max_chars=200)
    assert all(len(c.text) <= 200 for c in chunks)
    assert len(chunks) > 1
    for chunk in chunks:
        # Every chunk is a run of whole paragraphs.
        for paragraph in chunk.text.split("\n\n"):
            assert re.fullmatch(r"Paragraph \d( word){10}", paragraph)
    assert all_words(chunks) == words(text)
    assert [c.position for c in chunks] == list(range(len(chunks)))


def test_an_overlong_paragraph_is_split_at_sentence_ends() -> None:
    sentences = [f"Sentence number {n} talks about the VPN setup in detail." for n in range(20)]
    text = " ".join(sentences)
    chunks = chunk_document(text, mime_type=PLAIN, max_chars=150)
    assert len(chunks) > 1
    for chunk in chunks:
        assert len(chunk.text) <= 150
        assert chunk.text.endswith(".")
        assert chunk.text.startswith("Sentence number")
    assert all_words(chunks) == words(text)


def test_an_overlong_sentence_is_split_between_words_and_a_huge_word_where_it_must() -> None:
    sentence = " ".join(f"word{n}" for n in range(100))
    chunks = chunk_document(sentence, mime_type=PLAIN, max_chars=50)
    assert all(len(c.text) <= 50 for c in chunks)
    assert all_words(chunks) == words(sentence)

    huge = "x" * 130
    assert [c.text for c in chunk_document(huge, mime_type=PLAIN, max_chars=50)] == ["x" * 50, "x" * 50, "x" * 30]


def test_random_documents_keep_every_character_in_order_within_the_limit() -> None:
    rng = random.Random(7)
    vocabulary = ["vpn", "access", "the", "laptop.", "policy!", "a" * 30, "why?", "ok;", "b" * 90]
    for _ in range(50):
        lines = []
        for _ in range(rng.randint(0, 30)):
            kind = rng.random()
            if kind < 0.15:
                lines.append("#" * rng.randint(1, 6) + " " + " ".join(rng.choices(vocabulary, k=3)))
            elif kind < 0.35:
                lines.append("")
            else:
                lines.append(" ".join(rng.choices(vocabulary, k=rng.randint(1, 40))))
        text = "\n".join(lines)
        max_chars = rng.choice([40, 100, 800])
        chunks = chunk_document(text, mime_type=PLAIN, max_chars=max_chars)
        assert all(0 < len(c.text) <= max_chars and c.text.strip() == c.text for c in chunks)
        assert letters("".join(c.text for c in chunks)) == letters(text)
        markdown = chunk_document(text, mime_type=MARKDOWN, max_chars=max_chars)
        assert all(0 < len(c.text) <= max_chars for c in markdown)
        body = "".join(line for line in text.split("\n") if not re.match(r"#{1,6} ", line))
        assert letters("".join(c.text for c in markdown)) == letters(body)


def test_max_chars_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_chars"):
        chunk_document("text", mime_type=PLAIN, max_chars=0)


# -- title_from --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "filename", "expected"),
    [
        ("intro\n\n## Section\n\n#  Real   title  #\n\n# Second", "file.md", "Real title"),
        ("no heading here", "onboarding-guide.md", "onboarding-guide"),
        ("## only an H2", "notes.txt", "notes"),
        ("```\n# code comment\n```\n", "script.md", "script"),
        ("text", r"C:\docs\Report 2024.pdf", "Report 2024"),
        ("text", "/tmp/archive.tar.gz", "archive.tar"),
        ("text", "", "untitled"),
    ],
)
def test_title_from(text: str, filename: str, expected: str) -> None:
    assert title_from(text, filename) == expected


def test_title_from_caps_the_length() -> None:
    assert title_from("# " + "t" * 600, "x.md") == "t" * 500
