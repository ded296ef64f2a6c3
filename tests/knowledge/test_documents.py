"""Help-center articles from real files: Markdown, HTML, text and PDF; sections, anchors
and hashes; refused files named, the others loaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from babeldesk.errors import KnowledgeBaseError
from babeldesk.knowledge.documents import (
    MAX_FILE_BYTES,
    load_document,
    load_documents,
    parse_html,
    parse_markdown,
    slug,
    split_windows,
)
from babeldesk.knowledge.kb import docs_dir, load_kb

GIFT = """---
title: Gift cards
url: https://help.example/gift-cards
---

# Gift cards (ignored: the front matter names it)

Our gift cards work for everything in the shop.

## Validity and expiry

Gift cards are valid for 3 years.

### A detail

Still part of the validity section.

```
## not a heading inside code
```

## Lost cards

Write to us with the order number.
"""


def minimal_pdf(text: str) -> bytes:
    """A one-page PDF with ``text`` in Helvetica, xref offsets computed."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for n, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, xref)
    return bytes(out)


def test_markdown_sections_anchors_and_front_matter() -> None:
    doc = parse_markdown(GIFT, "gift-cards.md", "docs/gift-cards.md", "docs/gift-cards.md")
    assert doc.title == "Gift cards" and doc.url == "https://help.example/gift-cards"
    sections = [c.section for c in doc.chunks]
    assert sections == ["", "Validity and expiry", "Lost cards"]
    validity = doc.chunks[1]
    assert "Still part of the validity section" in validity.text
    assert "## not a heading inside code" in validity.text  # code is not split
    assert validity.heading == "Gift cards — Validity and expiry"
    assert validity.passage.startswith("Gift cards — Validity and expiry\n")
    assert len({c.hash for c in doc.chunks}) == 3


def test_without_front_matter_the_link_is_the_file_and_anchor() -> None:
    text = "# Size guide\n\nIntro.\n\n## How to measure: chest & waist\n\nUse a tape.\n"
    doc = parse_markdown(text, "size-guide.md", "docs/size-guide.md", "docs/size-guide.md")
    assert doc.title == "Size guide"
    assert [c.url for c in doc.chunks] == [
        "docs/size-guide.md", "docs/size-guide.md#how-to-measure-chest--waist"]
    assert slug("Rückgabe & Umtausch!") == "rückgabe--umtausch"


def test_hash_changes_with_the_section_only() -> None:
    a = parse_markdown(GIFT, "g.md", "docs/g.md", "docs/g.md")
    b = parse_markdown(GIFT.replace("valid for 3 years", "valid for 5 years"), "g.md",
                       "docs/g.md", "docs/g.md")
    changed = [x.section for x, y in zip(a.chunks, b.chunks) if x.hash != y.hash]
    assert changed == ["Validity and expiry"]


def test_html_headings_and_text() -> None:
    page = """<html><head><title>Shipping | Shop</title><style>p{color:red}</style></head>
    <body><h1>Shipping rates</h1><p>We ship to 30 countries.</p>
    <h2>Germany</h2><p>Standard 4.90 EUR,
       free from 50 EUR.</p><ul><li>DHL</li><li>Hermes</li></ul>
    <script>var x = "not text";</script>
    <h2>Austria &amp; Switzerland</h2><p>From 9.90 EUR.</p></body></html>"""
    doc = parse_html(page, "rates.html", "docs/rates.html", "docs/rates.html")
    assert doc.title == "Shipping rates"
    assert [c.section for c in doc.chunks] == ["", "Germany", "Austria & Switzerland"]
    germany = doc.chunks[1].text
    assert "Standard 4.90 EUR, free from 50 EUR." in germany and "- DHL" in germany
    assert "not text" not in "".join(c.text for c in doc.chunks)
    assert doc.chunks[2].url == "docs/rates.html#austria--switzerland"


def test_long_sections_are_cut_at_paragraphs() -> None:
    paragraphs = [f"Paragraph {i} " + "word " * 60 for i in range(12)]
    pieces = split_windows("\n\n".join(paragraphs), 1500)
    assert len(pieces) > 1 and all(len(p) <= 1500 for p in pieces)
    assert "\n\n".join(pieces).split() == "\n\n".join(paragraphs).split()  # nothing lost


def test_a_folder_of_every_format(tmp_path: Path) -> None:
    (tmp_path / "gift-cards.md").write_text(GIFT, encoding="utf-8")
    (tmp_path / "careers.txt").write_text("Working at the shop\n\nWe hire in Berlin.\n",
                                          encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "page.html").write_text("<h1>Page</h1><p>Body.</p>", encoding="utf-8")
    (tmp_path / "manual.pdf").write_bytes(minimal_pdf("Descale every 3 months."))
    (tmp_path / ".hidden.md").write_text("# x\n\ny", encoding="utf-8")
    docs = load_documents(tmp_path)
    assert docs.refused == ()
    by_id = {d.doc_id: d for d in docs.documents}
    assert sorted(by_id) == ["careers.txt", "gift-cards.md", "manual.pdf", "sub/page.html"]
    assert by_id["careers.txt"].title == "Working at the shop"
    assert "Descale every 3 months." in by_id["manual.pdf"].chunks[0].text
    assert by_id["manual.pdf"].title == "Manual"


@pytest.mark.parametrize("name,content,message", [
    ("bad-front.md", "---\ntitle: [unclosed\n---\n# T\n\nx\n", "front matter: not valid YAML"),
    ("unknown-key.md", "---\ntitel: Typo\n---\n# T\n\nx\n", "front matter.titel: unknown field"),
    ("unclosed.md", "---\ntitle: T\n# T\n\nbody\n", "not closed"),
    ("empty.md", "# Only a title\n", "no text"),
    ("latin1.txt", "Pr\xe9cis".encode("latin-1"), "not UTF-8"),
    ("binary.md", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), "binary file"),
    ("notes.docx", b"PK\x03\x04", "unsupported file type"),
    ("fake.pdf", b"hello, not a pdf", "not a PDF"),
])
def test_a_malformed_article_names_the_file(tmp_path: Path, name: str, content: str | bytes,
                                            message: str) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(KnowledgeBaseError) as err:
        load_document(path, name)
    assert f"docs/{name}" in str(err.value) and message in str(err.value)


def test_a_50mb_pdf_and_a_binary_file_are_refused_and_nothing_else_is_lost(
        tmp_path: Path) -> None:
    (tmp_path / "gift-cards.md").write_text(GIFT, encoding="utf-8")
    (tmp_path / "careers.txt").write_text("Jobs\n\nWe hire.\n", encoding="utf-8")
    with (tmp_path / "catalogue.pdf").open("wb") as f:  # 50 MB, sparse: nothing to read
        f.write(b"%PDF-1.7\n")
        f.truncate(50 * 1024 * 1024)
    (tmp_path / "logo.txt").write_bytes(b"\x00\x01\x02" * 100)
    docs = load_documents(tmp_path)
    assert [d.doc_id for d in docs.documents] == ["careers.txt", "gift-cards.md"]
    assert len(docs.chunks) == 4
    problems = {e.file: e.message for e in docs.refused}
    assert set(problems) == {"docs/catalogue.pdf", "docs/logo.txt"}
    assert "52.4 MB; the limit for an article is 5 MB" in problems["docs/catalogue.pdf"]
    assert "binary file" in problems["docs/logo.txt"]
    with pytest.raises(KnowledgeBaseError, match="docs/catalogue.pdf"):
        load_documents(tmp_path, strict=True)
    assert MAX_FILE_BYTES == 5 * 1024 * 1024


def test_the_demo_help_center_loads_beside_the_intents() -> None:
    kb = load_kb()
    docs = load_documents(docs_dir())
    assert kb.intents and docs.refused == ()
    assert len(docs.documents) >= 30
    suffixes = {Path(d.doc_id).suffix for d in docs.documents}
    assert {".md", ".html", ".txt"} <= suffixes
    assert all(c.text and c.title for c in docs.chunks)
