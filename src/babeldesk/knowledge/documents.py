"""The shop's help-center articles: loaded from ``<kb>/docs/``, split by headings into
chunks, each with a content hash.

Formats (by extension):

- ``.md``: optional YAML front matter (``title``, ``url``), ``# Title``, ``## Section``;
  headings are found by markdown-it (a ``#`` inside a code block is not a heading).
- ``.html`` / ``.htm``: ``<title>`` or the first ``<h1>``; ``<h2>`` starts a section;
  text of scripts and styles is dropped (the standard library's HTML parser).
- ``.txt``: the first line is the title when it is short, blank-line paragraphs the body.
- ``.pdf``: the text of its pages through pypdf, title from the metadata or the file name.

A chunk is one ``##`` section (the text before the first one is the article's opening),
cut into windows of at most ``MAX_CHUNK_CHARS`` at paragraph boundaries: multilingual-e5
reads 512 tokens, ~1,500 characters of English. Each chunk is embedded as
``title — section`` + text, so a section keeps its article's subject.

``Chunk.hash`` is SHA-256 over what the chunk is embedded and quoted from (title, section,
text, link): the embedding cache and the answer cache are keyed by it, so editing one
section re-embeds and invalidates that section only.

Every refusal is a ``KnowledgeBaseError`` naming the file (``docs/guide.pdf: 52.4 MB; the
limit is 5 MB``). ``load_documents`` collects them and loads the other files: one bad
article does not take the help center down (``DocumentSet.refused``); ``strict`` raises the
first one instead.
"""

from __future__ import annotations

import hashlib
import html.parser
import io
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from babeldesk.errors import KnowledgeBaseError

MAX_FILE_BYTES = 5 * 1024 * 1024  # an article larger than this is refused, unread
MAX_CHUNK_CHARS = 1500  # ~ e5's 512-token window in English
TEXT_SUFFIXES = (".md", ".markdown", ".html", ".htm", ".txt")
SUFFIXES = (*TEXT_SUFFIXES, ".pdf")
_FRONT_KEYS = {"title", "url"}
_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)", re.S)
_SLUG_DROP = re.compile(r"[^\w\- ]+")
_BLANK = re.compile(r"\n\s*\n")
_SPACES = re.compile(r"\s+")
_HASH_HEX = 16  # 64 bits per chunk: hundreds of chunks, never a collision in practice


@dataclass(frozen=True, slots=True)
class Chunk:
    doc_id: str  # the article's path under docs/ ("returns/gift-cards.md")
    title: str  # the article's title
    section: str  # the section's heading; "" for the article's opening
    text: str  # the section's text (Markdown kept as written)
    url: str  # front-matter url, or "docs/<doc_id>#<anchor>"
    hash: str  # 16 hex digits of SHA-256 over title, section, text and url

    @property
    def heading(self) -> str:
        return f"{self.title} — {self.section}" if self.section else self.title

    @property
    def passage(self) -> str:
        """What is embedded and indexed: the heading, then the text."""
        return f"{self.heading}\n{self.text}"


@dataclass(frozen=True, slots=True)
class Document:
    doc_id: str
    title: str
    url: str  # the article's own link (no anchor)
    chunks: tuple[Chunk, ...]


@dataclass(frozen=True, slots=True)
class DocumentSet:
    documents: tuple[Document, ...]
    refused: tuple[KnowledgeBaseError, ...] = ()  # files not loaded, each naming its file

    @property
    def chunks(self) -> tuple[Chunk, ...]:
        return tuple(c for d in self.documents for c in d.chunks)


@dataclass(frozen=True, slots=True)
class _Section:
    heading: str  # "" for the text before the first section heading
    text: str


def load_documents(folder: Path, *, label: str = "docs", strict: bool = False,
                   max_file_bytes: int = MAX_FILE_BYTES) -> DocumentSet:
    """Every article under ``folder`` (recursively, sorted; hidden files skipped). A
    missing folder is an empty set. ``label`` prefixes file names in errors."""
    if not folder.is_dir():
        return DocumentSet(())
    documents: list[Document] = []
    refused: list[KnowledgeBaseError] = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if any(part.startswith(".") for part in Path(rel).parts) or path.is_dir():
            continue
        try:
            documents.append(load_document(path, rel, label, max_file_bytes))
        except KnowledgeBaseError as exc:
            if strict:
                raise
            refused.append(exc)
    return DocumentSet(tuple(documents), tuple(refused))


def load_document(path: Path, doc_id: str, label: str = "docs",
                  max_file_bytes: int = MAX_FILE_BYTES) -> Document:
    """One article file -> Document, or a KnowledgeBaseError naming ``label/doc_id``."""
    where = f"{label}/{doc_id}"
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise KnowledgeBaseError(where, "", f"unsupported file type {suffix or '(none)'!r}; "
                                 f"articles are {', '.join(SUFFIXES)}")
    size = path.stat().st_size
    if size > max_file_bytes:
        raise KnowledgeBaseError(where, "", f"{size / 1e6:.1f} MB; the limit for an article "
                                 f"is {max_file_bytes / 1e6:.0f} MB")
    data = path.read_bytes()
    fallback_url = f"{label}/{doc_id}"
    if suffix == ".pdf":
        return parse_pdf(data, doc_id, where, fallback_url)
    text = decode_text(data, where)
    if suffix in (".md", ".markdown"):
        return parse_markdown(text, doc_id, where, fallback_url)
    if suffix in (".html", ".htm"):
        return parse_html(text, doc_id, where, fallback_url)
    return parse_text(text, doc_id, where, fallback_url)


def decode_text(data: bytes, where: str) -> str:
    """UTF-8 text (a BOM is dropped), or an error for a binary file."""
    if b"\x00" in data[:8192]:
        raise KnowledgeBaseError(where, "", "binary file, not text (NUL bytes)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise KnowledgeBaseError(where, "", f"not UTF-8 text (byte {exc.start})") from None
    controls = sum(1 for ch in text[:8192] if unicodedata.category(ch) == "Cc"
                   and ch not in "\n\r\t\f")
    if controls > 8:
        raise KnowledgeBaseError(where, "", "binary file, not text (control characters)")
    return text.replace("\r\n", "\n")


# --- formats: pure functions over the file's content ---------------------------------


def parse_markdown(text: str, doc_id: str, where: str, fallback_url: str) -> Document:
    front, body = _front_matter(text, where)
    from markdown_it import MarkdownIt

    lines = body.split("\n")
    heads: list[tuple[int, int, str]] = []  # (line, level, heading text)
    for token_index, token in enumerate(tokens := MarkdownIt("commonmark").parse(body)):
        if token.type == "heading_open" and token.map is not None:
            inline = tokens[token_index + 1]
            heads.append((token.map[0], int(token.tag[1]), inline.content.strip()))
    title = front.get("title") or ""
    sections: list[_Section] = []
    start, heading = 0, ""
    for line, level, content in heads:
        if level > 2:  # ### and deeper stay inside their section
            continue
        sections.append(_Section(heading, "\n".join(lines[start:line]).strip()))
        if level == 1 and not title:
            title, heading = content, ""
        else:
            heading = content if level == 2 else ""
        start = line + 1
    sections.append(_Section(heading, "\n".join(lines[start:]).strip()))
    return _document(doc_id, where, title, front.get("url"), fallback_url, sections)


def _front_matter(text: str, where: str) -> tuple[dict[str, str], str]:
    found = _FRONT_MATTER.match(text)
    if found is None:
        if text.startswith("---\n"):
            raise KnowledgeBaseError(where, "front matter", "not closed by a '---' line")
        return {}, text
    try:
        data = yaml.safe_load(found.group(1))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 2}" if mark is not None else ""
        raise KnowledgeBaseError(where, "front matter", f"not valid YAML{line}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise KnowledgeBaseError(where, "front matter", "must be a mapping (title:, url:)")
    front: dict[str, str] = {}
    for key, value in data.items():
        if key not in _FRONT_KEYS:
            raise KnowledgeBaseError(where, f"front matter.{key}",
                                     f"unknown field; allowed: {', '.join(sorted(_FRONT_KEYS))}")
        if not isinstance(value, str) or not value.strip():
            raise KnowledgeBaseError(where, f"front matter.{key}", "must be a non-empty string")
        front[key] = value.strip()
    return front, text[found.end():]


class _HtmlSections(html.parser.HTMLParser):
    """<title>, <h1> and <h2> headings, and the text between them, as plain text with
    blank lines between blocks."""

    _SKIP = {"script", "style", "noscript", "template"}
    _BLOCK = {"p", "div", "li", "tr", "br", "section", "article", "h3", "h4", "h5", "h6",
              "ul", "ol", "table", "pre", "blockquote", "dd", "dt"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title = ""
        self.h1 = ""
        self.sections: list[_Section] = []
        self._heading = ""
        self._parts: list[str] = []
        self._skip = 0
        self._capture: str | None = None  # "title" | "h1" | "h2" while inside one
        self._captured: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skip += 1
        elif tag in ("title", "h1", "h2"):
            self._capture, self._captured = tag, []
        elif tag in self._BLOCK:
            self._parts.append("\n\n" if tag != "li" else "\n- ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag == self._capture:
            text = " ".join("".join(self._captured).split())
            self._capture = None
            if tag == "title":
                self.title = self.title or text
            elif tag == "h1" and not self.h1:
                self.h1 = text
            else:  # h2, or a second h1: a new section
                self._flush()
                self._heading = text

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._capture is not None:
            self._captured.append(data)
        else:  # source line breaks are spaces in HTML; blocks add their own
            self._parts.append(_SPACES.sub(" ", data))

    def _flush(self) -> None:
        paragraphs = (
            "\n".join(line.strip() for line in p.split("\n") if line.strip(" -"))
            for p in _BLANK.split("".join(self._parts)))
        self.sections.append(_Section(self._heading, "\n\n".join(p for p in paragraphs if p)))
        self._parts = []

    def finish(self) -> list[_Section]:
        self.close()
        self._flush()
        return self.sections


def parse_html(text: str, doc_id: str, where: str, fallback_url: str) -> Document:
    parser = _HtmlSections()
    parser.feed(text)
    sections = parser.finish()
    return _document(doc_id, where, parser.h1 or parser.title, None, fallback_url, sections)


def parse_text(text: str, doc_id: str, where: str, fallback_url: str) -> Document:
    first, _, rest = text.strip().partition("\n")
    if len(first) <= 120 and rest.strip():
        return _document(doc_id, where, first.strip(" #"), None, fallback_url,
                         [_Section("", rest.strip())])
    return _document(doc_id, where, "", None, fallback_url, [_Section("", text.strip())])


def parse_pdf(data: bytes, doc_id: str, where: str, fallback_url: str) -> Document:
    if not data.startswith(b"%PDF-"):
        raise KnowledgeBaseError(where, "", "not a PDF file (no %PDF- header)")
    try:
        import pypdf

        reader = pypdf.PdfReader(io.BytesIO(data))
        pages = [page.extract_text() or "" for page in reader.pages]
        meta_title = (reader.metadata.title if reader.metadata else None) or ""
    except ImportError:
        raise KnowledgeBaseError(where, "", "PDF articles need the 'pypdf' package") from None
    except Exception as exc:  # pypdf raises many types for a damaged file
        raise KnowledgeBaseError(where, "", f"unreadable PDF ({type(exc).__name__})") from None
    text = "\n\n".join(p.strip() for p in pages if p.strip())
    if not text:
        raise KnowledgeBaseError(where, "", "the PDF has no text layer (scanned?)")
    return _document(doc_id, where, str(meta_title).strip(), None, fallback_url,
                     [_Section("", text)])


# --- chunks ---------------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces -> '-'."""
    return _SLUG_DROP.sub("", heading.strip().lower()).replace(" ", "-")


def _document(doc_id: str, where: str, title: str, url: str | None, fallback_url: str,
              sections: Sequence[_Section]) -> Document:
    title = " ".join(title.split()) or _title_from_name(doc_id)
    sections = [s for s in sections if s.text.strip()]
    if not sections:
        raise KnowledgeBaseError(where, "", "no text: an article needs a body")
    chunks: list[Chunk] = []
    for section in sections:
        anchor = slug(section.heading) if section.heading else ""
        link = url or (f"{fallback_url}#{anchor}" if anchor else fallback_url)
        for window in split_windows(section.text, MAX_CHUNK_CHARS):
            chunks.append(_chunk(doc_id, title, section.heading, window, link))
    return Document(doc_id, title, url or fallback_url, tuple(chunks))


def _chunk(doc_id: str, title: str, section: str, text: str, url: str) -> Chunk:
    h = hashlib.sha256()
    for part in (title, section, text, url):
        h.update(part.encode("utf-8"))
        h.update(b"\x00")
    return Chunk(doc_id, title, section, text, url, h.hexdigest()[:_HASH_HEX])


def _title_from_name(doc_id: str) -> str:
    stem = Path(doc_id).stem.replace("-", " ").replace("_", " ").strip()
    return stem[:1].upper() + stem[1:]


def split_windows(text: str, max_chars: int) -> list[str]:
    """``text`` cut at paragraph (then line, then word) boundaries into pieces of at most
    ``max_chars``; short text is one piece."""
    text = text.strip()
    if len(text) <= max_chars:
        return [text]
    pieces: list[str] = []
    current = ""
    for para in _units(text, max_chars):
        joined = f"{current}\n\n{para}" if current else para
        if len(joined) <= max_chars:
            current = joined
        else:
            if current:
                pieces.append(current)
            current = para
    if current:
        pieces.append(current)
    return pieces


def _units(text: str, max_chars: int) -> Iterable[str]:
    for para in _BLANK.split(text):
        para = para.strip()
        if len(para) <= max_chars:
            if para:
                yield para
            continue
        line_buf = ""
        for word in para.split(" "):  # an over-long paragraph: by words
            if line_buf and len(line_buf) + 1 + len(word) > max_chars:
                yield line_buf
                line_buf = word
            else:
                line_buf = f"{line_buf} {word}" if line_buf else word
        if line_buf:
            yield line_buf
