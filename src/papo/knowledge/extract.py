"""Text out of a document: PDF (pypdf), DOCX (python-docx), HTML (Beautiful Soup over lxml),
Markdown, plain text and CSV. Pure functions on bytes, run off the event loop by the indexer.

What cannot be read says why, in words an admin can act on (`Unreadable`): an encrypted PDF, a
broken file, a type papo does not read, a document past the page limit."""

from __future__ import annotations

import csv
import io
import re
import zipfile
from dataclasses import dataclass

from bs4 import BeautifulSoup
from docx import Document as DocxDocument
from pypdf import PdfReader
from pypdf.errors import PdfReadError

PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
HTML = "text/html"
MARKDOWN = "text/markdown"
TEXT = "text/plain"
CSV = "text/csv"
READABLE = (PDF, DOCX, HTML, MARKDOWN, TEXT, CSV)
EXTENSIONS = {
    ".pdf": PDF,
    ".docx": DOCX,
    ".html": HTML,
    ".htm": HTML,
    ".md": MARKDOWN,
    ".markdown": MARKDOWN,
    ".txt": TEXT,
    ".csv": CSV,
}
# Elements whose text is never the page's content.
HTML_NOISE = ("script", "style", "noscript", "template", "svg", "nav", "footer", "header", "form", "iframe")
BLANK_LINES = re.compile(r"\n\s*\n+")
SPACES = re.compile(r"[ \t\f\v\u00a0]+")


class Unreadable(Exception):
    """The document cannot be indexed; the message is shown to the admin as its error."""


@dataclass(frozen=True)
class Page:
    number: int | None  # a PDF's page (1-based); None for formats without pages
    text: str


@dataclass(frozen=True)
class Extracted:
    mime_type: str
    title: str | None
    pages: list[Page]

    @property
    def characters(self) -> int:
        return sum(len(page.text) for page in self.pages)


def document_type(data: bytes, file_name: str | None, declared: str | None) -> str:
    """What the bytes are: their signature first (a PDF or a DOCX says so itself), then the name's
    extension, then the declared type. Unreadable when none of them is a type papo reads."""
    if data.startswith(b"%PDF-"):
        return PDF
    if data.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                if "word/document.xml" in archive.namelist():
                    return DOCX
        except zipfile.BadZipFile:
            pass
        raise Unreadable("this archive is not a Word document (.docx)")
    name = (file_name or "").lower()
    for extension, mime_type in EXTENSIONS.items():
        if name.endswith(extension) and mime_type not in (PDF, DOCX):
            return mime_type
    declared = (declared or "").split(";")[0].strip().lower()
    if declared in (HTML, MARKDOWN, TEXT, CSV, "application/xhtml+xml"):
        return HTML if declared == "application/xhtml+xml" else declared
    if _looks_like_text(data):
        return TEXT
    raise Unreadable("papo reads PDF, DOCX, HTML, Markdown, plain text and CSV documents")


def extract(data: bytes, mime_type: str, *, max_pages: int) -> Extracted:
    if mime_type == PDF:
        return _pdf(data, max_pages)
    if mime_type == DOCX:
        return _docx(data)
    text = _decode(data)
    if mime_type == HTML:
        return _html(text)
    if mime_type == CSV:
        return Extracted(CSV, None, [Page(None, _csv(text))])
    title = next((line.lstrip("# ").strip() for line in text.splitlines() if line.strip()), None)
    return Extracted(mime_type, title[:200] if title else None, [Page(None, _tidy(text))])


def _pdf(data: bytes, max_pages: int) -> Extracted:
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise Unreadable("the PDF is protected by a password; upload it without the protection")
        count = len(reader.pages)
        if count > max_pages:
            raise Unreadable(f"the PDF has {count} pages; papo indexes up to {max_pages} per document")
        pages = [Page(number, _tidy(page.extract_text() or "")) for number, page in enumerate(reader.pages, 1)]
        title = reader.metadata.title if reader.metadata is not None else None
    except Unreadable:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError, OSError) as exc:
        raise Unreadable("the PDF is damaged and could not be read") from exc
    except Exception as exc:  # pypdf raises a wide range on hostile files; none of them is ours
        if isinstance(exc, NotImplementedError) and "encrypt" in str(exc).lower():
            raise Unreadable("the PDF uses an encryption papo cannot open; upload it without it") from exc
        raise Unreadable("the PDF could not be read") from exc
    if not any(page.text for page in pages):
        raise Unreadable("the PDF has no text to read (a scan needs text recognition first)")
    return Extracted(PDF, str(title)[:200] if title else None, pages)


def _docx(data: bytes) -> Extracted:
    try:
        document = DocxDocument(io.BytesIO(data))
    except Exception as exc:  # python-docx surfaces zip, XML and key errors alike
        raise Unreadable("the Word document is damaged and could not be read") from exc
    blocks = [paragraph.text for paragraph in document.paragraphs]
    for table in document.tables:
        for row in table.rows:
            blocks.append(" | ".join(cell.text.strip() for cell in row.cells))
    title = document.core_properties.title or next((b.strip() for b in blocks if b.strip()), None)
    return Extracted(DOCX, title[:200] if title else None, [Page(None, _tidy("\n\n".join(blocks)))])


def _html(text: str) -> Extracted:
    soup = BeautifulSoup(text, "lxml")
    for noise in soup(HTML_NOISE):
        noise.decompose()
    title = soup.title.get_text(" ", strip=True) if soup.title else None
    body = soup.body or soup
    for block in body.find_all(["p", "div", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "br", "section"]):
        block.insert_after("\n\n")
    return Extracted(HTML, title[:200] if title else None, [Page(None, _tidy(body.get_text(" ")))])


def _csv(text: str) -> str:
    """Each row as `column: value` pairs, so a passage keeps what its numbers mean."""
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    rows = list(csv.reader(io.StringIO(text), dialect))
    if not rows:
        return ""
    header, lines = rows[0], []
    for row in rows[1:]:
        pairs = [f"{name.strip()}: {value.strip()}" for name, value in zip(header, row, strict=False) if value.strip()]
        if pairs:
            lines.append("; ".join(pairs))
    return "\n".join(lines) if lines else "\n".join(", ".join(row) for row in rows)


def _decode(data: bytes) -> str:
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def _looks_like_text(data: bytes) -> bool:
    sample = data[:4096]
    if b"\x00" in sample:
        return False
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start > len(sample) - 4  # a character cut at the sample's end
    return True


def _tidy(text: str) -> str:
    """Spaces collapsed, paragraphs kept (a blank line), NUL and other controls dropped."""
    text = "".join(ch for ch in text if ch in "\n\t" or ch >= " ")
    lines = [SPACES.sub(" ", line).strip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()
