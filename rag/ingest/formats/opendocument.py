"""ODT (OpenDocument text, what LibreOffice writes): `content.xml` read with the standard library's XML parser,
headings and paragraphs in document order, a table row per line with its cells joined by ` | `, as DOCX tables are.
No library is needed to read it: an ODT is a zip holding that one XML file of text (odfdo only makes the tests'
files). The zip is checked against the bomb limits first (`parsers.check_zip`)."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from xml.etree import ElementTree

from rag.errors import UnreadableFile

_TEXT = "{urn:oasis:names:tc:opendocument:xmlns:text:1.0}"
_TABLE = "{urn:oasis:names:tc:opendocument:xmlns:table:1.0}"
_OFFICE = "{urn:oasis:names:tc:opendocument:xmlns:office:1.0}"
_BLOCKS = (f"{_TEXT}p", f"{_TEXT}h")


def _inline(element: ElementTree.Element) -> str:
    """A paragraph's text: spans opened, `text:s` as its count of spaces, tabs and line breaks as themselves."""
    parts = [element.text or ""]
    for child in element:
        if child.tag == f"{_TEXT}s":
            parts.append(" " * int(child.get(f"{_TEXT}c", "1")))
        elif child.tag == f"{_TEXT}tab":
            parts.append("\t")
        elif child.tag == f"{_TEXT}line-break":
            parts.append("\n")
        elif child.tag != f"{_OFFICE}annotation":
            parts.append(_inline(child))
        parts.append(child.tail or "")
    return "".join(parts)


def _lines(element: ElementTree.Element) -> Iterator[str]:
    for child in element:
        if child.tag in _BLOCKS:
            yield _inline(child)
        elif child.tag == f"{_TABLE}table-row":
            cells = [" ".join(_lines(cell)).strip() for cell in child.iter(f"{_TABLE}table-cell")]
            yield " | ".join(cell for cell in dict.fromkeys(cells) if cell)
        else:
            yield from _lines(child)


def parse_odt(data: bytes) -> str:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        try:
            content = archive.read("content.xml")
        except KeyError:
            raise UnreadableFile("not an ODT: it has no content.xml") from None
    try:
        root = ElementTree.fromstring(content)
    except ElementTree.ParseError as exc:
        raise UnreadableFile(f"the ODT's content.xml is not XML: {exc}") from None
    body = root.find(f"{_OFFICE}body/{_OFFICE}text")
    if body is None:
        raise UnreadableFile("not an ODT text document (no office:text body)")
    return "\n".join(line for line in _lines(body) if line.strip())
