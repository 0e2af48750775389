"""Real files made on the spot, for the upload tests, the page's test and the parser bench: PDFs (fpdf2), DOCX
(python-docx), an encrypted PDF (pypdf) and a DOCX that is a zip bomb. Nothing binary is kept in git."""

from __future__ import annotations

import io
import zipfile


def pdf(pages: list[str]) -> bytes:
    """A PDF with one page per text (Latin-1 only: the built-in Helvetica font)."""
    from fpdf import FPDF

    document = FPDF()
    document.set_font("helvetica", size=10)
    for text in pages:
        document.add_page()
        if text:
            document.multi_cell(0, 5, text.encode("latin-1", "replace").decode("latin-1"))
    return bytes(document.output())


def encrypted_pdf(text: str, password: str = "secret") -> bytes:
    import pypdf

    writer = pypdf.PdfWriter(clone_from=io.BytesIO(pdf([text])))
    writer.encrypt(user_password=password, owner_password=password, algorithm="AES-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def docx(paragraphs: list[str], table: list[list[str]] | None = None) -> bytes:
    import docx as python_docx

    document = python_docx.Document()
    for text in paragraphs:
        document.add_paragraph(text)
    if table:
        grid = document.add_table(rows=len(table), cols=len(table[0]))
        for r, row in enumerate(table):
            for c, value in enumerate(row):
                grid.cell(r, c).text = value
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def docx_bomb(inflated_bytes: int = 300_000_000) -> bytes:
    """A valid DOCX whose document part inflates to `inflated_bytes` of spaces (a few hundred KB on the wire)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(docx(["bomb"]))) as source, zipfile.ZipFile(out, "w") as bomb:
        for member in source.infolist():
            if member.filename == "word/document.xml":
                continue
            bomb.writestr(member, source.read(member))
        info = zipfile.ZipInfo("word/document.xml")
        info.compress_type = zipfile.ZIP_DEFLATED
        with bomb.open(info, "w", force_zip64=True) as part:
            block = b" " * (1 << 20)
            for _ in range(inflated_bytes // len(block)):
                part.write(block)
    return out.getvalue()


# --- hostile files: each small on the wire, each built to exhaust a parser ---------------------------------------


def pdf_content_bomb(inflated_bytes: int = 2_000_000_000) -> bytes:
    """A valid one-page PDF whose Flate-compressed content stream inflates to `inflated_bytes` of text operators
    (about 2 MB on the wire per GB inflated): the attack of issue #20."""
    import zlib

    operator = b"BT /F1 12 Tf 72 712 Td (Hostile bytes, over and over.) Tj ET\n"
    block = operator * ((1 << 20) // len(operator))
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(block) for _ in range(inflated_bytes // len(block))]
    stream = b"".join(parts) + compressor.flush()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def nested_html(depth: int = 1_000_000) -> bytes:
    """Markup nested `depth` elements deep (a few MB): the depth, not the size, is what breaks tree builders."""
    return b"<html><body>" + b"<div>" * depth + b"deep text" + b"</div>" * depth + b"</body></html>"


def nested_markdown(depth: int = 200_000) -> bytes:
    """Block quotes and list markers nested `depth` deep on one line each: pathological for a Markdown parser."""
    return b"".join(b"> " * n + b"- item\n" for n in range(0, depth, max(1, depth // 2000)))


def single_line_text(size: int = 100_000_000) -> bytes:
    """One line of `size` bytes of words, no newline anywhere."""
    words = b"hostile plain text without a single line break "
    return (words * (size // len(words) + 1))[:size]


def docx_huge_xml(paragraphs: int = 2_000_000) -> bytes:
    """A DOCX under the zip-bomb caps (ratio and inflated size) whose document.xml holds millions of short
    paragraphs: each one becomes objects in lxml and python-docx, far more memory than its bytes."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(docx(["huge"]))) as source, zipfile.ZipFile(out, "w") as huge:
        for member in source.infolist():
            if member.filename != "word/document.xml":
                huge.writestr(member, source.read(member))
        head = (
            b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<w:document xmlns:w='
            b'"http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>'
        )
        info = zipfile.ZipInfo("word/document.xml")
        info.compress_type = zipfile.ZIP_DEFLATED
        with huge.open(info, "w", force_zip64=True) as part:
            part.write(head)
            for n in range(paragraphs):
                part.write(b"<w:p><w:r><w:t>p%d</w:t></w:r></w:p>" % n)
            part.write(b"</w:body></w:document>")
    return out.getvalue()


def pptx(slides: list[tuple[str, str, str]]) -> bytes:
    """A presentation: per slide (title, body, speaker notes), made by python-pptx."""
    from pptx import Presentation

    deck = Presentation()
    for title, body, notes in slides:
        slide = deck.slides.add_slide(deck.slide_layouts[1])  # title and content
        slide.shapes.title.text = title
        slide.placeholders[1].text = body
        if notes:
            slide.notes_slide.notes_text_frame.text = notes
    out = io.BytesIO()
    deck.save(out)
    return out.getvalue()


def xlsx(sheets: dict[str, list[list[object]]]) -> bytes:
    """A workbook, a sheet per name with its rows (the first one the header), made by openpyxl."""
    from openpyxl import Workbook

    book = Workbook()
    book.remove(book.active)
    for name, rows in sheets.items():
        sheet = book.create_sheet(name)
        for row in rows:
            sheet.append(row)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def csv_file(rows: list[list[object]]) -> bytes:
    import csv

    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue().encode()


def epub(chapters: list[tuple[str, str]], title: str = "A book") -> bytes:
    """An EPUB 3 of (heading, text) chapters, made by ebooklib."""
    import tempfile
    from pathlib import Path

    from ebooklib import epub as ebook

    book = ebook.EpubBook()
    book.set_identifier("test-book")
    book.set_title(title)
    book.set_language("en")
    items = []
    for n, (heading, text) in enumerate(chapters, 1):
        item = ebook.EpubHtml(title=heading, file_name=f"chapter{n}.xhtml", lang="en")
        item.content = f"<html><body><h1>{heading}</h1><p>{text}</p></body></html>"
        book.add_item(item)
        items.append(item)
    book.toc = items
    book.add_item(ebook.EpubNcx())
    book.add_item(ebook.EpubNav())
    book.spine = ["nav", *items]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "book.epub"
        ebook.write_epub(str(path), book)
        return path.read_bytes()


def eml(subject: str, body: str, attachments: list[tuple[str, bytes, str]] = (), html: bool = False) -> bytes:  # type: ignore[assignment]
    """A message made by the standard library's `email`: (filename, bytes, media type) attachments."""
    from email.message import EmailMessage

    message = EmailMessage()
    message["From"] = "Ada Lovelace <ada@example.org>"
    message["To"] = "Charles Babbage <charles@example.org>"
    message["Date"] = "Mon, 07 Dec 2026 09:00:00 +0000"
    message["Subject"] = subject
    if html:
        message.set_content(f"<html><body><p>{body}</p></body></html>", subtype="html")
    else:
        message.set_content(body)
    for filename, data, media_type in attachments:
        maintype, subtype = media_type.split("/")
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return message.as_bytes()


def nested_eml(depth: int) -> bytes:
    """A message holding a message holding a message... `depth` deep. Written as MIME text around a message made by
    `email` (the library's own writer recurses, and stops near 300 deep)."""
    inner = eml("innermost", "the bottom")
    for n in range(depth):
        boundary = f"level-{n}"
        inner = (
            (
                f"Subject: level {n}\r\nMIME-Version: 1.0\r\n"
                f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'
                f"--{boundary}\r\nContent-Type: text/plain\r\n\r\na forwarded message follows\r\n"
                f"--{boundary}\r\nContent-Type: message/rfc822\r\n\r\n"
            ).encode()
            + inner
            + f"\r\n--{boundary}--\r\n".encode()
        )
    return inner


def mbox(messages: list[bytes]) -> bytes:
    """An mbox of the messages, made by the standard library's `mailbox`."""
    import email
    import mailbox
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "box.mbox"
        box = mailbox.mbox(path)
        for raw in messages:
            box.add(email.message_from_bytes(raw))
        box.flush()
        box.close()
        return path.read_bytes()


def page_image(text: str, image_format: str = "PNG", pages: int = 1, dpi: int = 200) -> bytes:
    """A scan: a PDF page of `text` (fpdf2) rendered at `dpi` (pypdfium2) to an image; a TIFF may hold `pages`."""
    import pypdfium2

    document = pypdfium2.PdfDocument(pdf([text]))
    image = document[0].render(scale=dpi / 72, grayscale=True).to_pil()
    document.close()
    out = io.BytesIO()
    if pages > 1:
        image.save(out, format=image_format, save_all=True, append_images=[image] * (pages - 1))
    else:
        image.save(out, format=image_format, dpi=(dpi, dpi))
    return out.getvalue()


def scanned_pdf(texts: list[str], dpi: int = 200) -> bytes:
    """A PDF whose pages are images of text scanned at `dpi` (no text layer), as a scanner makes."""
    from fpdf import FPDF

    document = FPDF()
    for text in texts:
        document.add_page()
        document.image(io.BytesIO(page_image(text, dpi=dpi)), x=0, y=0, w=210, h=297)
    return bytes(document.output())


def odt(paragraphs: list[str], table: list[list[str]] | None = None, heading: str = "Minutes") -> bytes:
    """An OpenDocument text made by odfdo: a heading, paragraphs and a table."""
    import tempfile
    from pathlib import Path

    from odfdo import Cell, Document, Header, Paragraph, Row, Table

    document = Document("text")
    document.body.append(Header(1, heading))
    for text in paragraphs:
        document.body.append(Paragraph(text))
    if table:
        grid = Table("Table1")
        for values in table:
            row = Row()
            for value in values:
                row.append_cell(Cell(value))
            grid.append_row(row)
        document.body.append(grid)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "document.odt"
        document.save(path)
        return path.read_bytes()
