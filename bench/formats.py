"""The formats of rag/ingest/formats/, measured beside the first parsers and the bare libraries, and OCR's speed and
accuracy on scanned SciFact abstracts.

    .venv/bin/python bench/formats.py [--abstracts 200] [--scans 5]

Every file is made here by its library from SciFact abstracts (bench/sample_files.py). Printed:
- per format, `parse()` (checks, limits, citations) in units a second, beside the bare library's own read of the same
  file, and beside PDF and DOCX in the same run: a unit is one abstract, which each format holds as a PDF page, a
  slide, a sheet row, a CSV row, a chapter or a message;
- OCR: seconds a page for abstracts scanned at 150 and 300 dpi (as a scanned PDF, which the parser renders at
  200 dpi, and as a PNG upload), the character error rate against the abstract's own text (Levenshtein, whitespace
  runs as one space) and the share of its words read back in order, beside the same page's text layer read by PDFium;
  and the `rapidocr` wheel on the same PNGs when it is installed.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import io
import re
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import sample_files
from bench.ingest import abstracts, best_of
from rag.ingest.formats import ocr
from rag.ingest.parsers import parse


def bare_readers(data: dict[str, bytes]) -> dict[str, object]:
    import docx
    import pypdfium2
    from openpyxl import load_workbook
    from pptx import Presentation

    def pdf() -> None:
        for page in pypdfium2.PdfDocument(data["pdf"]):
            page.get_textpage().get_text_range()

    def pptx() -> None:
        for slide in Presentation(io.BytesIO(data["pptx"])).slides:
            [shape.text_frame.text for shape in slide.shapes if shape.has_text_frame]

    def xlsx() -> None:
        book = load_workbook(io.BytesIO(data["xlsx"]), read_only=True, data_only=True)
        for sheet in book.worksheets:
            list(sheet.iter_rows(values_only=True))
        book.close()

    def epub() -> None:
        import ebooklib
        from ebooklib import epub as ebook

        book = ebook.read_epub(io.BytesIO(data["epub"]))
        [item.get_content() for item in book.get_items_of_type(ebooklib.ITEM_DOCUMENT)]

    def odt() -> None:
        import zipfile
        from xml.etree import ElementTree

        with zipfile.ZipFile(io.BytesIO(data["odt"])) as archive:
            "".join(ElementTree.fromstring(archive.read("content.xml")).itertext())

    def eml() -> None:
        import email
        import email.policy

        message = email.message_from_bytes(data["eml"], policy=email.policy.default)
        body = message.get_body(preferencelist=("plain",))
        assert body is not None
        body.get_content()

    return {
        "pdf": (pdf, "pypdfium2 text per page"),
        "docx": (lambda: [p.text for p in docx.Document(io.BytesIO(data["docx"])).paragraphs], "python-docx"),
        "odt": (odt, "zipfile + ElementTree itertext"),
        "pptx": (pptx, "python-pptx text frames"),
        "xlsx": (xlsx, "openpyxl read-only rows"),
        "csv": (lambda: list(csv.reader(io.StringIO(data["csv"].decode()))), "csv.reader"),
        "epub": (epub, "ebooklib documents"),
        "eml": (eml, "email, the text part"),
    }


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def word_recall(expected: str, read: str) -> float:
    """The share of the expected words read back, in order (case and punctuation aside)."""
    want = words(expected)
    matcher = difflib.SequenceMatcher(None, want, words(read), autojunk=False)
    return sum(block.size for block in matcher.get_matching_blocks()) / len(want)


def character_error_rate(expected: str, read: str) -> float:
    """Levenshtein distance over the expected length, whitespace runs counted as one space (line breaks differ)."""
    a, b = " ".join(expected.split()), " ".join(read.split())
    previous = np.arange(len(b) + 1)
    codes = np.frombuffer(b.encode("utf-32-le"), dtype=np.uint32)
    for i, char in enumerate(a, 1):
        substitute = previous[:-1] + (codes != ord(char))
        current = np.empty_like(previous)
        current[0] = i
        current[1:] = np.minimum(substitute, previous[1:] + 1)
        current = np.minimum.accumulate(current - np.arange(len(b) + 1)) + np.arange(len(b) + 1)  # insertions
        previous = current
    return float(previous[-1]) / max(1, len(a))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--abstracts", type=int, default=200)
    parser.add_argument("--scans", type=int, default=5, help="scanned abstracts read by OCR")
    args = parser.parse_args()
    texts = abstracts(args.abstracts)
    titles = [text.split("\n", 1)[0] for text in texts]
    bodies = [text.split("\n", 1)[1] for text in texts]
    data = {
        "pdf": sample_files.pdf(texts),
        "docx": sample_files.docx([line for text in texts for line in text.split("\n", 1)]),
        "odt": sample_files.odt([line for text in texts for line in text.split("\n", 1)]),
        "pptx": sample_files.pptx([(title, body, "") for title, body in zip(titles, bodies, strict=True)]),
        "xlsx": sample_files.xlsx({"Abstracts": [["Title", "Abstract"], *zip(titles, bodies, strict=True)]}),
        "csv": sample_files.csv_file([["Title", "Abstract"], *zip(titles, bodies, strict=True)]),
        "epub": sample_files.epub(list(zip(titles, bodies, strict=True))),
        "eml": sample_files.eml("Abstracts", "\n\n".join(texts)),
    }
    units = {"pdf": "pages", "docx": "abstracts", "odt": "abstracts", "pptx": "slides", "xlsx": "rows", "csv": "rows"}
    units |= {"epub": "chapters", "eml": "abstracts"}
    print(f"{len(texts)} SciFact abstracts per file, one a unit (best of 5 runs)")
    print(f"{'format':<8}{'size':>9}{'parse() units/s':>17}{'bare units/s':>14}{'ratio':>7}  unit, bare call")
    for kind, (bare, label) in bare_readers(data).items():  # type: ignore[misc]
        ours = best_of(5, lambda kind=kind: parse(data[kind], kind))  # type: ignore[misc]
        reference = best_of(5, bare)
        print(
            f"{kind:<8}{len(data[kind]) / 1024:>7.0f}KB{len(texts) / ours:>17,.0f}{len(texts) / reference:>14,.0f}"
            f"{reference / ours:>7.2f}  {units[kind]}, {label}"
        )
    if not ocr.available():
        print("OCR: tesseract is not installed (make install-dev installs it)")
        return
    scans = texts[: args.scans]
    print(f"OCR (Tesseract {ocr_version()}, one thread), {len(scans)} scanned abstracts:")
    for dpi in (150, 300):
        pdfs = [sample_files.scanned_pdf([text], dpi) for text in scans]
        print(f"  {dpi} dpi scanned PDF page {ocr_figures(scans, pdfs, lambda file: parse(file, 'pdf'))}")
        pngs = [sample_files.page_image(text, dpi=dpi) for text in scans]
        print(f"  {dpi} dpi PNG page         {ocr_figures(scans, pngs, lambda file: parse(file, 'image'))}")
    with_layer = sample_files.pdf(scans)
    layer = best_of(3, lambda: parse(with_layer, "pdf"))
    print(f"  the same pages' text layer (PDFium): {layer / len(scans) * 1000:.1f} ms a page, every word")
    compare_rapidocr(scans)


def ocr_figures(texts: list[str], files: list[bytes], read: Callable[[bytes], Iterable[object]]) -> str:
    """Seconds a page, character error rate and words read back, of `read` over each file against its text."""
    seconds, recalls, errors = [], [], []
    for text, file in zip(texts, files, strict=True):
        started = time.perf_counter()
        found = " ".join(str(getattr(part, "text", part)) for part in read(file))
        seconds.append(time.perf_counter() - started)
        recalls.append(word_recall(text, found))
        errors.append(character_error_rate(text, found))
    return (
        f"{sum(seconds) / len(seconds):5.2f} s a page (max {max(seconds):.2f}); character error rate "
        f"{100 * sum(errors) / len(errors):.2f}% (worst {100 * max(errors):.2f}%); words read back "
        f"{100 * sum(recalls) / len(recalls):.1f}%"
    )


def compare_rapidocr(scans: list[str]) -> None:
    """The alternative the issue names: the `rapidocr` wheel (its ONNX models inside), on the same PNG pages, when it
    is installed (`pip install rapidocr==3.10.0`; not a dependency: it brings OpenCV)."""
    try:
        from rapidocr import RapidOCR
    except ImportError:
        print("  rapidocr: not installed (pip install rapidocr==3.10.0 to compare)")
        return
    import logging

    logging.getLogger("RapidOCR").setLevel(logging.WARNING)
    engine = RapidOCR()
    for dpi in (150, 300):
        pngs = [sample_files.page_image(text, dpi=dpi) for text in scans]
        figures = ocr_figures(scans, pngs, lambda file: engine(file).txts or ())
        print(f"  rapidocr 3.10 (its default threads), {dpi} dpi PNG page {figures}")


def ocr_version() -> str:
    import subprocess

    out = subprocess.run(["tesseract", "--version"], capture_output=True, text=True).stdout
    return out.split()[1] if out else "?"


if __name__ == "__main__":
    main()
