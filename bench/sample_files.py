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
