"""Mail: a message (`.eml`) or a mailbox of them (`.mbox`), through the standard library's `email` package.

A message gives one section of the headers that matter (From, To, Cc, Date, Subject) with its text body (the plain
part, else the HTML part read as HTML), cited as the message; then each attached file parsed as a file of its own
kind (a PDF's pages, a sheet's rows...), cited as that attachment. An attached message is read the same way, to
MAX_DEPTH messages deep; deeper is refused by name. A file type without a parser is left out, not failed: a mail's
signature image should not cost its text.
"""

from __future__ import annotations

import email
import email.policy
import re
from email.message import EmailMessage
from typing import TYPE_CHECKING

from rag.errors import UnreadableFile, UnsupportedFileType

if TYPE_CHECKING:
    from rag.ingest.parsers import ParseLimits, Section

MAX_DEPTH = 10  # messages within messages
MAX_MESSAGES = 10_000  # in one mailbox
HEADERS = ("From", "To", "Cc", "Date", "Subject")
_MBOX_SEPARATOR = re.compile(rb"^From [^\r\n]*\r?\n", re.M)


def parse_eml(data: bytes, limits: ParseLimits, max_chars: int | None, where: str = "message") -> list[Section]:
    try:
        message = email.message_from_bytes(data, policy=email.policy.default)
        return _message(message, limits, max_chars, where, 1)  # type: ignore[arg-type]
    except RecursionError:
        raise UnreadableFile("the mail is nested too deep to read") from None


def parse_mbox(data: bytes, limits: ParseLimits, max_chars: int | None) -> list[Section]:
    separators = list(_MBOX_SEPARATOR.finditer(data))
    starts = [match.end() for match in separators]
    if not starts or not data.startswith(b"From "):
        raise UnreadableFile("not an mbox: it does not begin with a 'From ' line")
    if len(starts) > MAX_MESSAGES:
        raise UnreadableFile(f"the mailbox holds {len(starts)} messages; the limit is {MAX_MESSAGES:,}")
    ends = [*(match.start() for match in separators[1:]), len(data)]
    sections: list[Section] = []
    for number, (start, end) in enumerate(zip(starts, ends, strict=True), 1):
        # mboxrd quoting: a body line that began with "From " was written as ">From "
        raw = re.sub(rb"^>(>*From )", rb"\1", data[start:end], flags=re.M)
        sections.extend(parse_eml(raw, limits, max_chars, f"message {number}"))
    return sections


def _message(
    message: EmailMessage, limits: ParseLimits, max_chars: int | None, where: str, depth: int
) -> list[Section]:
    from rag.ingest.parsers import Section, parse_html

    if depth > MAX_DEPTH:
        raise UnreadableFile(f"the mail holds messages more than {MAX_DEPTH} deep")
    lines = [f"{name}: {message[name]}" for name in HEADERS if message[name]]
    body = message.get_body(preferencelist=("plain", "html"))
    if body is not None:
        content = body.get_content()
        lines.append((parse_html(content) if body.get_content_type() == "text/html" else str(content)).strip())
    sections = [Section("\n".join(lines), location=where)]
    for part in message.iter_attachments():
        if part.get_content_type() == "message/rfc822":
            inner = part.get_content()
            name = f"{where}, attached message {inner['Subject'] or ''}".rstrip()
            sections.extend(_message(inner, limits, max_chars, name, depth + 1))
            continue
        sections.extend(_attachment(part, limits, max_chars, where))
    return sections


def _attachment(part: EmailMessage, limits: ParseLimits, max_chars: int | None, where: str) -> list[Section]:
    from rag.ingest.parsers import Section, detect_kind, parse

    filename = part.get_filename() or "attachment"
    try:
        kind = detect_kind(filename, part.get_content_type())
    except UnsupportedFileType:
        return []
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes) or not payload:
        return []
    label = f"attachment {filename}" if where == "message" else f"{where}, attachment {filename}"
    try:
        inner = parse(payload, kind, limits, max_chars)
    except UnreadableFile as exc:
        if str(exc).startswith("the file has no text"):
            return []  # a photo, a logo: the mail's text stands without it
        raise UnreadableFile(f"{label}: {exc}") from None
    return [Section(s.text, s.page, f"{label}, {s.location}" if s.location else label) for s in inner]
