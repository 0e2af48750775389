"""Spreadsheets (XLSX, through openpyxl in read-only mode, rows streamed) and CSV (the standard library's reader).

Each row becomes a line that reads on its own: its header's names with its values (`Region: North; Sales: 1200`), so
a chunk cut between rows still says what each number is. Rows are grouped into sections of about ROWS_CHARS
characters, each cited by its sheet and row range (`sheet Budget, rows 2-41`), so a chunk usually holds whole rows of
one range. A formula cell is read from the value the file cached; a file saved without one (written by a library, not
a spreadsheet program) reads it as empty.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Sequence

from rag.errors import UnreadableFile

ROWS_CHARS = 900  # below the default chunk size (1,000), so a section is usually one chunk
MAX_CSV_FIELD = 1_000_000  # characters in one CSV field; a longer one is refused by name


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _row_line(header: Sequence[str], row: Sequence[str]) -> str:
    pairs = []
    for n, value in enumerate(row):
        if not value:
            continue
        name = header[n] if n < len(header) and header[n] else f"column {n + 1}"
        pairs.append(f"{name}: {value}")
    return "; ".join(pairs)


def row_sections(rows: Iterable[Sequence[object]], where: str) -> Iterator[tuple[str, str]]:
    """(text, location) for groups of rows: the first non-empty row names the columns of the others."""
    header: list[str] | None = None
    lines: list[str] = []
    first = last = 0
    size = 0
    for number, raw in enumerate(rows, 1):
        row = [_cell(value) for value in raw]
        if not any(row):
            continue
        if header is None:
            header = row
            continue
        line = _row_line(header, row)
        if lines and size + len(line) > ROWS_CHARS:
            yield "\n".join(lines), f"{where}rows {first}-{last}"
            lines, size = [], 0
        if not lines:
            first = number
        lines.append(line)
        last = number
        size += len(line) + 1
    if lines:
        yield "\n".join(lines), f"{where}rows {first}-{last}"
    elif header is not None:  # a header alone is the sheet's text
        yield "; ".join(value for value in header if value), f"{where}row 1"


def parse_xlsx(data: bytes) -> list[tuple[str, str]]:
    from openpyxl import load_workbook

    try:
        workbook = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises KeyError, InvalidFileException, lxml errors... for broken packages
        raise UnreadableFile(f"cannot open the XLSX: {type(exc).__name__}") from None
    try:
        sections: list[tuple[str, str]] = []
        for sheet in workbook.worksheets:
            sections.extend(row_sections(sheet.iter_rows(values_only=True), f"sheet {sheet.title}, "))
        return sections
    finally:
        workbook.close()


def parse_csv(text: str) -> list[tuple[str, str]]:
    sample = text[:8192]
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    csv.field_size_limit(MAX_CSV_FIELD)
    try:
        return list(row_sections(csv.reader(io.StringIO(text, newline=""), dialect), ""))
    except csv.Error as exc:
        if "field larger than field limit" in str(exc):
            raise UnreadableFile(f"a CSV field is longer than {MAX_CSV_FIELD:,} characters") from None
        raise UnreadableFile(f"cannot read the CSV: {exc}") from None
