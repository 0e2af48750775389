"""File parsers: bytes of an uploaded file in, text sections out (one per PDF page, slide, sheet range, chapter...),
each through a kept library.

Chosen by measurement (`bench/parsers.py`) and by what the library is:
- PDF: pypdfium2 (Chrome's PDFium) over pypdf: 3.7x the pages per second on the same file, and PDFium is the engine
  that reads the most real-world PDFs. PDFium is not thread-safe, so one lock serialises its calls.
- DOCX: python-docx (paragraphs and table cells, in document order). A DOCX is a zip: its directory is checked
  against MAX_UNZIPPED_BYTES and a compression-ratio cap before any part is inflated.
- HTML: selectolax (the Lexbor engine): script, style and other non-content elements dropped, text per block.
- Markdown: markdown-it-py's token stream, so markup characters do not reach the embedder.
- Plain text: UTF-8 (a BOM is honoured) or UTF-16 with a BOM; anything else is refused, not guessed.
- ODT, PPTX, XLSX, CSV, EPUB, mail, and scans and images by OCR: `rag/ingest/formats/`, each section with its
  location.

Every failure is an `UnreadableFile` whose message says why (corrupt, encrypted, too many pages, no text), and the
file's name is added by the caller.
"""

from __future__ import annotations

import io
import threading
import zipfile
from dataclasses import dataclass
from pathlib import PurePath
from typing import TYPE_CHECKING, Literal

from rag.errors import UnreadableFile, UnsupportedFileType

if TYPE_CHECKING:
    from selectolax.lexbor import LexborHTMLParser

FileKind = Literal[
    "text", "markdown", "html", "pdf", "docx", "odt", "pptx", "xlsx", "csv", "epub", "eml", "mbox", "image"
]

_BY_EXTENSION: dict[str, FileKind] = {
    ".txt": "text",
    ".text": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
    ".docx": "docx",
    ".odt": "odt",
    ".pptx": "pptx",
    ".xlsx": "xlsx",
    ".csv": "csv",
    ".epub": "epub",
    ".eml": "eml",
    ".mbox": "mbox",
    ".png": "image",
    ".jpg": "image",
    ".jpeg": "image",
    ".tif": "image",
    ".tiff": "image",
}
_BY_MEDIA_TYPE: dict[str, FileKind] = {
    "text/plain": "text",
    "text/markdown": "markdown",
    "text/x-markdown": "markdown",
    "text/html": "html",
    "application/xhtml+xml": "html",
    "application/pdf": "pdf",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/vnd.oasis.opendocument.text": "odt",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": "pptx",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
    "text/csv": "csv",
    "application/epub+zip": "epub",
    "message/rfc822": "eml",
    "application/mbox": "mbox",
    "image/png": "image",
    "image/jpeg": "image",
    "image/tiff": "image",
}
MEDIA_TYPES: dict[FileKind, str] = {
    "text": "text/plain",
    "markdown": "text/markdown",
    "html": "text/html",
    "pdf": "application/pdf",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "odt": "application/vnd.oasis.opendocument.text",
    "pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "csv": "text/csv",
    "epub": "application/epub+zip",
    "eml": "message/rfc822",
    "mbox": "application/mbox",
    "image": "image/png",
}
SUPPORTED = ", ".join(sorted(_BY_EXTENSION))

_PDFIUM_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class Section:
    """A run of text, the PDF page it is on (None for formats without pages), and where else it is in its file when
    the format says (`slide 3`, `sheet Budget, rows 2-41`, `chapter 4: Results`, `attachment minutes.pdf`): what a
    citation names."""

    text: str
    page: int | None = None
    location: str | None = None


@dataclass(frozen=True, slots=True)
class ParseLimits:
    max_pages: int = 2000  # pages, slides, chapters
    max_unzipped_bytes: int = 200_000_000
    max_compression_ratio: int = 200
    ocr: bool = True  # scanned PDF pages and images read by OCR (formats/ocr.py)
    ocr_timeout_seconds: float = 30.0
    ocr_max_pixels: int = 40_000_000
    ocr_languages: str = "eng"


def detect_kind(filename: str, media_type: str | None) -> FileKind:
    """The parser for a file, from its name's extension, else its declared media type; 415 when neither is known.
    The bytes are checked against the kind when parsing (a .pdf that is not a PDF is unreadable, not guessed)."""
    kind = _BY_EXTENSION.get(PurePath(filename).suffix.lower())
    if kind is None and media_type:
        kind = _BY_MEDIA_TYPE.get(media_type.split(";")[0].strip().lower())
    if kind is None:
        raise UnsupportedFileType(f"{filename!r}: unsupported file type; supported: {SUPPORTED}")
    return kind


def parse(
    data: bytes, kind: FileKind, limits: ParseLimits = ParseLimits(), max_chars: int | None = None
) -> list[Section]:
    """The text of a file in reading order. Raises UnreadableFile when there is none to be had, or when it is
    longer than `max_chars` (what is chunked and embedded of one file is bounded too).

    Hostile bytes can make any of these libraries take all memory or time: the service calls this only inside a
    confined process (`rag.ingest.parse_worker`)."""
    match kind:
        case "pdf":
            sections = _parse_pdf(data, limits, max_chars)
        case "docx":
            check_zip(data, limits, "DOCX")
            sections = [Section(_parse_docx(data))]
        case "html":
            sections = [Section(parse_html(decode_text(data)))]
        case "markdown":
            sections = [Section(_parse_markdown(decode_text(data)))]
        case "text":
            sections = [Section(decode_text(data))]
        case _:
            sections = _parse_more(data, kind, limits, max_chars)
    sections = [s for s in sections if s.text.strip()]
    check_length(sum(len(s.text) for s in sections), max_chars)
    if not sections:
        hint = " (its pages have no text layer, and OCR is off: OCR=false)" if kind == "pdf" and not limits.ocr else ""
        raise UnreadableFile(f"the file has no text{hint}")
    return sections


def _parse_more(data: bytes, kind: FileKind, limits: ParseLimits, max_chars: int | None) -> list[Section]:
    """The formats of `rag/ingest/formats/`."""
    match kind:
        case "odt":
            from rag.ingest.formats.opendocument import parse_odt

            check_zip(data, limits, "ODT")
            return [Section(parse_odt(data))]
        case "pptx":
            from rag.ingest.formats.slides import parse_pptx

            check_zip(data, limits, "PPTX")
            return [Section(text, location=where) for text, where in parse_pptx(data, limits.max_pages)]
        case "xlsx":
            from rag.ingest.formats.sheets import parse_xlsx

            check_zip(data, limits, "XLSX")
            return [Section(text, location=where) for text, where in parse_xlsx(data)]
        case "csv":
            from rag.ingest.formats.sheets import parse_csv

            return [Section(text, location=where) for text, where in parse_csv(decode_text(data))]
        case "epub":
            from rag.ingest.formats.ebooks import parse_epub

            check_zip(data, limits, "EPUB")
            return [Section(text, location=where) for text, where in parse_epub(data, limits.max_pages)]
        case "eml":
            from rag.ingest.formats.mail import parse_eml

            return parse_eml(data, limits, max_chars)
        case "mbox":
            from rag.ingest.formats.mail import parse_mbox

            return parse_mbox(data, limits, max_chars)
        case "image":
            return _parse_image(data, limits)
    raise UnsupportedFileType(f"no parser for {kind}")


def _parse_image(data: bytes, limits: ParseLimits) -> list[Section]:
    from rag.ingest.formats import ocr

    if not limits.ocr:
        raise UnreadableFile("an image is read by OCR, which is off (OCR=false)")
    pages = list(ocr.image_pages(data, limits.max_pages, limits.ocr_max_pixels))
    return [
        Section(
            ocr.read_png(png, f"page {number}", limits.ocr_timeout_seconds, limits.ocr_languages),
            page=number if len(pages) > 1 else None,
        )
        for number, png in enumerate(pages, 1)
    ]


def check_length(chars: int, max_chars: int | None) -> None:
    if max_chars is not None and chars > max_chars:
        raise UnreadableFile(f"the file's text is more than {max_chars:,} characters (MAX_FILE_CHARS)")


def preload() -> None:
    """Import every parser's library now (a parser process does it once, before its first file)."""
    import docx  # noqa: F401
    import openpyxl  # noqa: F401
    import pptx  # noqa: F401
    import pypdfium2  # noqa: F401
    from markdown_it import MarkdownIt  # noqa: F401
    from PIL import Image  # noqa: F401
    from selectolax.lexbor import LexborHTMLParser  # noqa: F401


def decode_text(data: bytes) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UnreadableFile(f"the text is not UTF-8 (invalid byte at offset {exc.start})") from None


def _parse_pdf(data: bytes, limits: ParseLimits, max_chars: int | None) -> list[Section]:
    import pypdfium2

    if not data.startswith(b"%PDF-"):
        raise UnreadableFile("not a PDF (no %PDF- header)")
    with _PDFIUM_LOCK:
        try:
            document = pypdfium2.PdfDocument(data)
        except pypdfium2.PdfiumError as exc:
            reason = "it is encrypted with a password" if "password" in str(exc).lower() else "it is corrupt"
            raise UnreadableFile(f"cannot open the PDF: {reason}") from None
        try:
            pages = len(document)
            if pages > limits.max_pages:
                raise UnreadableFile(f"the PDF has {pages} pages; the limit is {limits.max_pages} (MAX_UPLOAD_PAGES)")
            sections = []
            chars = 0
            for number in range(pages):
                page = document[number]
                textpage = page.get_textpage()
                # PDFium ends lines with \r\n; the chunker and the embedder want \n.
                text = textpage.get_text_range().replace("\r\n", "\n").replace("\r", "\n")
                textpage.close()
                if not text.strip() and limits.ocr:  # a scanned page: no text layer
                    text = _ocr_pdf_page(page, number + 1, limits)
                page.close()
                sections.append(Section(text, page=number + 1))
                chars += len(text)
                check_length(chars, max_chars)  # before the next page adds to it
            return sections
        except pypdfium2.PdfiumError as exc:
            raise UnreadableFile(f"cannot read the PDF: {exc}") from None
        finally:
            document.close()


def _ocr_pdf_page(page: object, number: int, limits: ParseLimits) -> str:
    from rag.ingest.formats import ocr

    png = ocr.pdf_page_png(page, number, limits.ocr_max_pixels)
    return ocr.read_png(png, f"page {number}", limits.ocr_timeout_seconds, limits.ocr_languages)


def check_zip(data: bytes, limits: ParseLimits, what: str) -> None:
    """Refuse a zip whose members would inflate past the limits (a decompression bomb), before inflating any."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
    except zipfile.BadZipFile:
        raise UnreadableFile(f"not a valid {what} (not a zip archive)") from None
    if len(members) > 10_000:
        raise UnreadableFile(f"the archive has {len(members)} members")
    inflated = sum(m.file_size for m in members)
    if inflated > limits.max_unzipped_bytes:
        raise UnreadableFile(
            f"the archive inflates to {inflated} bytes; the limit is {limits.max_unzipped_bytes} (MAX_UNZIPPED_BYTES)"
        )
    for m in members:
        if m.compress_size and m.file_size / m.compress_size > limits.max_compression_ratio:
            raise UnreadableFile(f"{m.filename} is compressed {m.file_size // m.compress_size}:1 (a zip bomb?)")


def _parse_docx(data: bytes) -> str:
    import docx
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    try:
        document = docx.Document(io.BytesIO(data))
    except Exception as exc:  # python-docx raises KeyError, ValueError, lxml errors... for broken packages
        raise UnreadableFile(f"cannot open the DOCX: {type(exc).__name__}") from None
    lines: list[str] = []
    for block in document.iter_inner_content():
        if isinstance(block, Paragraph):
            lines.append(block.text)
        elif isinstance(block, Table):
            for row in block.rows:
                # Merged cells repeat in python-docx's view; keep each text once per row.
                cells = list(dict.fromkeys(cell.text.strip() for cell in row.cells))
                lines.append(" | ".join(c for c in cells if c))
    return "\n".join(lines)


NOT_CONTENT = "script, style, noscript, template, svg, head, iframe, object"  # no reader sees their text


def parse_html(markup: str) -> str:
    from selectolax.lexbor import LexborHTMLParser

    tree = LexborHTMLParser(markup)
    title = tree.css_first("title")
    heading = title.text(strip=True) if title is not None else ""
    text = content_text(tree)
    return f"{heading}\n{text}" if heading else text


def content_text(tree: LexborHTMLParser) -> str:
    """A parsed page's text, a line per block, without scripts, styles and other non-content elements."""
    for node in tree.css(NOT_CONTENT):
        node.decompose()
    root = tree.body or tree.root
    return "" if root is None else root.text(separator="\n", strip=True)


_BREAKS = {"softbreak": "\n", "hardbreak": "\n"}


def _parse_markdown(source: str) -> str:
    from markdown_it import MarkdownIt

    blocks: list[str] = []
    for token in MarkdownIt("commonmark").parse(source):
        if token.type == "inline":
            blocks.append("".join(_BREAKS.get(child.type, child.content) for child in token.children or []))
        elif token.type in ("fence", "code_block"):
            blocks.append(token.content.rstrip("\n"))
    return "\n".join(blocks)
