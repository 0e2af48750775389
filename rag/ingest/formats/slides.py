"""PPTX through python-pptx: each slide's text in reading order (its shapes' text, group shapes opened, tables row by
row), then its speaker notes; one section per slide, cited by slide number."""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from typing import Any

from rag.errors import UnreadableFile


def _texts(shapes: Iterable[Any]) -> Iterator[str]:
    from pptx.enum.shapes import MSO_SHAPE_TYPE

    for shape in shapes:
        if shape.shape_type == MSO_SHAPE_TYPE.GROUP:
            yield from _texts(shape.shapes)
        elif getattr(shape, "has_text_frame", False) and shape.has_text_frame:
            yield shape.text_frame.text
        elif getattr(shape, "has_table", False) and shape.has_table:
            for row in shape.table.rows:
                cells = list(dict.fromkeys(cell.text.strip() for cell in row.cells))
                yield " | ".join(cell for cell in cells if cell)


def parse_pptx(data: bytes, max_slides: int) -> list[tuple[str, str]]:
    """(text, location) per slide."""
    from pptx import Presentation

    try:
        presentation = Presentation(io.BytesIO(data))
    except Exception as exc:  # python-pptx raises KeyError, ValueError, lxml errors... for broken packages
        raise UnreadableFile(f"cannot open the PPTX: {type(exc).__name__}") from None
    slides = presentation.slides
    if len(slides) > max_slides:
        raise UnreadableFile(f"the PPTX has {len(slides)} slides; the limit is {max_slides} (MAX_UPLOAD_PAGES)")
    sections = []
    for number, slide in enumerate(slides, 1):
        lines = [text for text in _texts(slide.shapes) if text.strip()]
        if slide.has_notes_slide and (notes := slide.notes_slide.notes_text_frame) is not None and notes.text.strip():
            lines.append(f"Notes: {notes.text.strip()}")
        sections.append(("\n".join(lines), f"slide {number}"))
    return sections
