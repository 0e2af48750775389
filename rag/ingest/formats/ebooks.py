"""EPUB: the zip's package document (found through META-INF/container.xml) gives the reading order (its spine); each
XHTML document in it is read as HTML, one section per chapter, cited by chapter number and its first heading.

Read with the standard library's zip and XML parsers and selectolax, which the HTML parser already uses: an EPUB is a
zip of XHTML with two small XML files of its own, so no e-book library is needed (ebooklib reads the same files
the same way). The zip is checked against the bomb limits before anything is inflated (`parsers.check_zip`)."""

from __future__ import annotations

import io
import posixpath
import zipfile
from xml.etree import ElementTree

from rag.errors import UnreadableFile

_CONTAINER = "{urn:oasis:names:tc:opendocument:xmlns:container}"
_OPF = "{http://www.idpf.org/2007/opf}"
_HTML_TYPES = ("application/xhtml+xml", "text/html")


def _xml(archive: zipfile.ZipFile, name: str) -> ElementTree.Element:
    try:
        return ElementTree.fromstring(archive.read(name))
    except KeyError:
        raise UnreadableFile(f"not an EPUB: it has no {name}") from None
    except ElementTree.ParseError as exc:
        raise UnreadableFile(f"the EPUB's {name} is not XML: {exc}") from None


def _chapter(markup: str) -> tuple[str, str | None]:
    """A chapter's text (read as any HTML page is) and its first heading."""
    from selectolax.lexbor import LexborHTMLParser

    from rag.ingest.parsers import content_text

    tree = LexborHTMLParser(markup)
    heading = tree.css_first("h1, h2, h3")
    title = heading.text(strip=True) if heading is not None else None
    return content_text(tree), title or None


def parse_epub(data: bytes, max_chapters: int) -> list[tuple[str, str]]:
    """(text, location) per chapter in reading order."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        rootfile = _xml(archive, "META-INF/container.xml").find(f".//{_CONTAINER}rootfile")
        if rootfile is None or not rootfile.get("full-path"):
            raise UnreadableFile("not an EPUB: its container names no package document")
        package_path = str(rootfile.get("full-path"))
        package = _xml(archive, package_path)
        base = posixpath.dirname(package_path)
        manifest = {
            item.get("id"): (item.get("href") or "", item.get("media-type") or "")
            for item in package.iter(f"{_OPF}item")
            # the table of contents (EPUB 3's nav document) is often in the spine too: not a chapter
            if "nav" not in (item.get("properties") or "").split()
        }
        spine = [ref.get("idref") for ref in package.iter(f"{_OPF}itemref") if ref.get("linear") != "no"]
        if len(spine) > max_chapters:
            raise UnreadableFile(f"the EPUB has {len(spine)} chapters; the limit is {max_chapters} (MAX_UPLOAD_PAGES)")
        sections: list[tuple[str, str]] = []
        for idref in spine:
            href, media_type = manifest.get(idref, ("", ""))
            if media_type not in _HTML_TYPES:
                continue
            try:
                raw = archive.read(posixpath.normpath(posixpath.join(base, href)))
            except KeyError:
                raise UnreadableFile(f"the EPUB's spine names {href!r}, which it does not hold") from None
            text, title = _chapter(raw.decode("utf-8", "replace"))
            if text.strip():
                number = len(sections) + 1
                sections.append((text, f"chapter {number}: {title}" if title else f"chapter {number}"))
        return sections
