"""A parser process: the only place where an uploaded file's bytes are inflated into text.

Started by `ParserPool` as `python -m rag.ingest.parse_worker MEMORY_MB`. Before it reads a byte it caps its own
address space at MEMORY_MB (RLIMIT_AS: an allocation past it fails, as MemoryError or as a crash of the native
parser), lowers its CPU priority so that the service's questions win the cores, and asks the kernel to kill it if
the service dies (so a killed service leaves no parser behind, still inflating a bomb).

Protocol, over its stdin and stdout: frames of a 4-byte big-endian length and a body. One request
`{"path", "kind", "limits", "max_chars", "page_url"}` (JSON; `page_url` set for a crawled web page) in; one answer
out: `{"sections": [[bytes, page, encoding, location], ...]}` (a web page's with its `"links"` and `"title"`)
followed by a second frame with the sections' encoded text end to end, or `{"error": "unreadable" | "memory" |
"internal", "message": ...}`; either with `"retire": true` when this process should not be given another file.
JSON and raw text, never pickle: the parent must not run code chosen by a process that has read hostile bytes. The
text travels outside the JSON because escaping and unescaping it cost more than the rest of the trip (0.8 of the
1.0 ms a 300 KB text took).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import resource
import signal
import struct
import sys
from typing import Any, BinaryIO

HEADER = struct.Struct(">I")
NICENESS = 10  # below the service (0): a parse takes what the questions leave of the cores
NEAR_CAP = 0.85
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def read_frame(stream: BinaryIO) -> Any | None:
    """The next frame's JSON, or None at end of input."""
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    (size,) = HEADER.unpack(header)
    return json.loads(stream.read(size))


def write_frame(stream: BinaryIO, body: bytes) -> None:
    stream.write(HEADER.pack(len(body)))
    stream.write(body)  # not joined to the header: that would copy a file's whole text once more
    stream.flush()


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux's PR_SET_PDEATHSIG): a parser process with
    the service, an OCR process with its parser process."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def confine(memory_limit: int) -> None:
    """Limit this process before it touches a file: memory, priority, and no life after the service's."""
    parent = os.getppid()
    die_with_parent()
    if os.getppid() != parent:  # the service died before the line above took effect
        os._exit(1)
    libc = ctypes.CDLL(None, use_errno=True)
    resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    os.nice(NICENESS)
    # glibc maps each buffer over 128 KiB afresh and unmaps it when freed, so every text of a file was paid for in
    # page faults, several times over (decoded, encoded, joined): 6.3 ms against 2.4 ms for a 1.5 MB HTML file.
    # Kept on the heap instead, under the same address-space cap; an idle process is closed anyway.
    libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
    libc.mallopt(M_TRIM_THRESHOLD, 128 << 20)


def peak_address_space() -> int:
    """The most address space this process has held, in bytes (VmPeak)."""
    with open("/proc/self/status", "rb") as status:
        for line in status:
            if line.startswith(b"VmPeak:"):
                return int(line.split()[1]) * 1024
    return 0


def encode(text: str) -> tuple[bytes, str]:
    """A text's bytes for the trip, and their encoding: ASCII when it is (a copy), else UTF-16, which for text in
    the Basic Multilingual Plane is close to Python's own layout: 0.5 ms there and back for 1.5 MB of SciFact text,
    where UTF-8 took 1.6 ms. A lone surrogate (a broken PDF's text can hold one) becomes "?"."""
    if text.isascii():
        return text.encode("ascii"), "ascii"
    return text.encode("utf-16-le", "replace"), "utf-16-le"


def handle(request: dict[str, Any], memory_limit: int) -> tuple[dict[str, Any], bytes]:
    """Parse one file: the answer and the text that goes with it. Imports here, not at the top: `confine` runs
    first."""
    from rag.errors import RAGError, UnreadableFile
    from rag.ingest.formats.webpage import parse_web_page
    from rag.ingest.parsers import ParseLimits, check_length, decode_text, parse

    try:
        limits = ParseLimits(**request["limits"])
        with open(request["path"], "rb") as source:
            data = source.read()
        extra: dict[str, Any] = {}
        if request.get("page_url"):  # a crawled web page: its main text, title and links (rag/sources/)
            page = parse_web_page(decode_text(data), request["page_url"])
            check_length(sum(len(s.text) for s in page.sections), request["max_chars"])
            if not page.sections:
                raise UnreadableFile("the page has no text")
            sections, extra = page.sections, {"links": page.links, "title": page.title}
        else:
            sections = parse(data, request["kind"], limits, max_chars=request["max_chars"])
        del data
        encoded = [encode(s.text) for s in sections]
        pairs = [
            [len(text), s.page, encoding, s.location] for (text, encoding), s in zip(encoded, sections, strict=True)
        ]
        return {"sections": pairs, **extra}, b"".join(text for text, _ in encoded)
    except MemoryError:
        return {"error": "memory"}, b""
    except Exception as exc:
        # libxml2 and others report a failed allocation as a parse error ("unknown error"): a failure after this
        # process came close to its cap is taken for what it most likely is.
        if peak_address_space() >= NEAR_CAP * memory_limit:
            return {"error": "memory"}, b""
        if isinstance(exc, RAGError):
            return {"error": "unreadable", "message": str(exc)}, b""
        # A parser's own bug on a strange file: reported, and the pool gives the next file a fresh process.
        return {"error": "internal", "message": type(exc).__name__}, b""


def main() -> None:
    memory_limit = int(sys.argv[1]) * 1024 * 1024
    confine(memory_limit)
    # The libraries are loaded once, before the first request, so that a parse is timed without them.
    from rag.ingest.parsers import preload

    preload()
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    # A text comes back through this pipe: a 1 MiB buffer (the kernel's usual most) takes a 300 KB text in one
    # write instead of five 64 KiB rounds of waking the reader.
    with contextlib.suppress(OSError):
        fcntl.fcntl(stdout.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)
    write_frame(stdout, b'{"ready": true}')
    while (request := read_frame(stdin)) is not None:
        try:
            answer, text = handle(request, memory_limit)
            # VmPeak never comes down: a process that came close to its cap once would take any later failure
            # for a memory one, so it asks to be replaced.
            answer["retire"] = peak_address_space() >= NEAR_CAP * memory_limit
            write_frame(stdout, json.dumps(answer).encode())
            if "sections" in answer:
                write_frame(stdout, text)
        except MemoryError:
            write_frame(stdout, b'{"error": "memory"}')  # small enough to need no memory to speak of


if __name__ == "__main__":
    main()
