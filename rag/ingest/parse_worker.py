"""A parser process: the only place where an uploaded file's bytes are inflated into text.

Started by `ParserPool` as `python -m rag.ingest.parse_worker MEMORY_MB`. Before it reads a byte it caps its own
address space at MEMORY_MB (RLIMIT_AS: an allocation past it fails, as MemoryError or as a crash of the native
parser), lowers its CPU priority so that the service's questions win the cores, and asks the kernel to kill it if
the service dies (so a killed service leaves no parser behind, still inflating a bomb).

Protocol, over its stdin and stdout: frames of a 4-byte big-endian length and a JSON body. One request
`{"path", "kind", "limits", "max_chars"}` in, one answer out: `{"sections": [[text, page], ...]}` or
`{"error": "unreadable" | "memory" | "internal", "message": ...}`, with `"retire": true` when this process should
not be given another file. JSON and not pickle: the parent
must not run code chosen by a process that has read hostile bytes.
"""

from __future__ import annotations

import ctypes
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


def read_frame(stream: BinaryIO) -> Any | None:
    """The next frame's JSON, or None at end of input."""
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    (size,) = HEADER.unpack(header)
    return json.loads(stream.read(size))


def write_frame(stream: BinaryIO, body: bytes) -> None:
    stream.write(HEADER.pack(len(body)) + body)
    stream.flush()


def confine(memory_limit: int) -> None:
    """Limit this process before it touches a file: memory, priority, and no life after the service's."""
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the service died before the line above took effect
        os._exit(1)
    resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    os.nice(NICENESS)


def peak_address_space() -> int:
    """The most address space this process has held, in bytes (VmPeak)."""
    with open("/proc/self/status", "rb") as status:
        for line in status:
            if line.startswith(b"VmPeak:"):
                return int(line.split()[1]) * 1024
    return 0


def handle(request: dict[str, Any], memory_limit: int) -> dict[str, Any]:
    """Parse one file. Imports here, not at the top: `confine` runs first."""
    from rag.errors import RAGError
    from rag.ingest.parsers import ParseLimits, parse

    try:
        limits = ParseLimits(**request["limits"])
        with open(request["path"], "rb") as source:
            data = source.read()
        sections = parse(data, request["kind"], limits, max_chars=request["max_chars"])
        del data
        return {"sections": [[s.text, s.page] for s in sections]}
    except MemoryError:
        return {"error": "memory"}
    except Exception as exc:
        # libxml2 and others report a failed allocation as a parse error ("unknown error"): a failure after this
        # process came close to its cap is taken for what it most likely is.
        if peak_address_space() >= NEAR_CAP * memory_limit:
            return {"error": "memory"}
        if isinstance(exc, RAGError):
            return {"error": "unreadable", "message": str(exc)}
        # A parser's own bug on a strange file: reported, and the pool gives the next file a fresh process.
        return {"error": "internal", "message": type(exc).__name__}


def main() -> None:
    memory_limit = int(sys.argv[1]) * 1024 * 1024
    confine(memory_limit)
    # The libraries are loaded once, before the first request, so that a parse is timed without them.
    from rag.ingest.parsers import preload

    preload()
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    write_frame(stdout, b'{"ready": true}')
    while (request := read_frame(stdin)) is not None:
        try:
            answer = handle(request, memory_limit)
            # VmPeak never comes down: a process that came close to its cap once would take any later failure
            # for a memory one, so it asks to be replaced.
            answer["retire"] = peak_address_space() >= NEAR_CAP * memory_limit
            body = json.dumps(answer, ensure_ascii=False).encode()
        except MemoryError:
            body = b'{"error": "memory"}'  # small enough to need no memory to speak of
        write_frame(stdout, body)


if __name__ == "__main__":
    main()
