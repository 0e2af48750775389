"""Parser processes for uploaded files: each file is parsed in a separate, confined process, never in the service.

Hostile bytes can make a parser eat all memory (a 5 MB PDF whose content stream inflates to 2 GB), spin, or crash.
In the service's own process that takes every user down, and a supervisor's restart resumes the same file; so, as
mail scanners, document converters (Gotenberg, Tika server) and browsers do, the parsing happens elsewhere:
- each process caps its own address space at `memory_mb` and runs at a lower CPU priority (`parse_worker`);
- the pool holds at most `size` of them (one per core by default), starts them when a file needs one, reuses a
  healthy one, and closes one idle for `idle_seconds` (the service's memory when nobody uploads is unchanged);
- a process that answers late is killed at `timeout_seconds`; one that hit its memory cap, crashed or failed
  oddly is dropped, and the next file gets a fresh one;
- what comes back is text only, at most `max_chars` of it, as JSON (never pickle: the parser has read hostile bytes).
Each of these ends is an `UnreadableFile` whose message names the limit, so a job fails that file and goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import signal
import sys
import time
from pathlib import Path

from rag.errors import UnreadableFile
from rag.ingest.formats.webpage import WebPage
from rag.ingest.parse_worker import HEADER
from rag.ingest.parsers import FileKind, ParseLimits, Section

logger = logging.getLogger(__name__)

_PROJECT_DIR = Path(__file__).resolve().parents[2]
_START_TIMEOUT = 60.0  # a new process imports the parsers' libraries: under a second on an idle machine
_READ_BUFFER = 16 << 20
_MAX_ANSWER_BYTES = 1 << 24  # an answer without its text: a pair of numbers a PDF page (MAX_UPLOAD_PAGES of them)
_INTERNAL = "internal error while parsing this file (see the service log)"


class _WorkerGone(Exception):
    """The process ended, or said something that is not an answer."""


class _Worker:
    """One parser process and its pipes."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.last_used = time.monotonic()

    @classmethod
    async def start(cls, memory_mb: int) -> _Worker:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "rag.ingest.parse_worker",
            str(memory_mb),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=_PROJECT_DIR,
            # The reader stops reading the pipe past twice this much buffered; at the default 64 KiB a 3 MB text
            # came in 128 KiB rounds of pausing and resuming, at 16 MiB it streams in.
            limit=_READ_BUFFER,
        )
        worker = cls(process)
        try:
            ready = await asyncio.wait_for(worker.read(64), _START_TIMEOUT)
            if ready != {"ready": True}:
                raise _WorkerGone
        except BaseException:
            await worker.kill()
            raise
        return worker

    async def ask(self, request: dict[str, object], max_text_bytes: int) -> tuple[dict[str, object], bytes]:
        """Send one request; its answer, and the text that comes with an answer that has sections."""
        assert self.process.stdin is not None
        body = json.dumps(request).encode()
        try:
            self.process.stdin.write(HEADER.pack(len(body)) + body)
            await self.process.stdin.drain()
        except ConnectionError:
            raise _WorkerGone from None
        answer = await self.read(_MAX_ANSWER_BYTES)
        text = await self.read_frame(max_text_bytes) if "sections" in answer else b""
        self.last_used = time.monotonic()
        return answer, text

    async def read(self, max_bytes: int) -> dict[str, object]:
        try:
            answer = json.loads(await self.read_frame(max_bytes))
        except ValueError:
            raise _WorkerGone from None
        if not isinstance(answer, dict):
            raise _WorkerGone
        return answer

    async def read_frame(self, max_bytes: int) -> bytes:
        assert self.process.stdout is not None
        try:
            (size,) = HEADER.unpack(await self.process.stdout.readexactly(HEADER.size))
            if size > max_bytes:  # more than the limits allow: the process is not behaving
                raise _WorkerGone
            return await self.process.stdout.readexactly(size)
        except (asyncio.IncompleteReadError, ConnectionError):
            raise _WorkerGone from None

    async def exit_status(self, seconds: float = 5.0) -> int | None:
        """How the process ended: its return code (negative: the signal that killed it); None if it lingers."""
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(self.process.wait(), seconds)
        return None

    async def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        await self.process.wait()

    async def aclose(self) -> None:
        """End of input: the process leaves its loop and exits; killed if it does not."""
        if self.process.returncode is None and self.process.stdin is not None:
            self.process.stdin.close()
            if await self.exit_status() is None:
                await self.kill()


_ENCODINGS = frozenset({"ascii", "utf-16-le"})  # what `parse_worker.encode` sends; nothing else is decoded


def _split(pairs: object, text: bytes) -> list[Section]:
    """The sections from their (length in bytes, page, encoding, location) entries and their text end to end."""
    sections: list[Section] = []
    start = 0
    view = memoryview(text)  # decoded in place: a slice of bytes would be one more copy of every text
    try:
        for size, page, encoding, location in pairs:  # type: ignore[attr-defined]
            if encoding not in _ENCODINGS:
                raise ValueError(encoding)
            piece = str(view[start : start + size], encoding)
            where = location if isinstance(location, str) else None
            sections.append(Section(piece, page if isinstance(page, int) else None, where))
            start += size
    except (TypeError, ValueError):
        raise UnreadableFile(_INTERNAL) from None
    if start != len(text):
        raise UnreadableFile(_INTERNAL)
    return sections


class ParserPool:
    def __init__(
        self,
        limits: ParseLimits,
        *,
        memory_mb: int = 1024,
        timeout_seconds: float = 60.0,
        max_chars: int = 20_000_000,
        size: int = 1,
        idle_seconds: float = 60.0,
    ) -> None:
        self.limits = limits
        self.memory_mb = memory_mb
        self.timeout_seconds = timeout_seconds
        self.max_chars = max_chars
        self.idle_seconds = idle_seconds
        self._slots = asyncio.Semaphore(size)
        self._idle: list[_Worker] = []
        self._busy = 0
        self._reaper: asyncio.Task[None] | None = None
        self.started = 0  # processes started so far: a healthy one is reused, so this grows only on a limit hit

    async def parse(self, path: Path, kind: FileKind) -> list[Section]:
        """The text sections of the file at `path`, parsed in a confined process."""
        sections, _ = await self._parse(path, kind, None)
        return sections

    async def parse_page(self, path: Path, url: str) -> WebPage:
        """The main text, title and links of the web page at `path` (fetched from `url`), in a confined process."""
        sections, answer = await self._parse(path, "html", url)
        links = answer.get("links")
        title = answer.get("title")
        return WebPage(
            sections,
            [link for link in links if isinstance(link, str)] if isinstance(links, list) else [],
            title if isinstance(title, str) else None,
        )

    async def _parse(self, path: Path, kind: FileKind, page_url: str | None) -> tuple[list[Section], dict[str, object]]:
        request = {
            "path": str(path),
            "kind": kind,
            "limits": dataclasses.asdict(self.limits),
            "max_chars": self.max_chars,
            "page_url": page_url,
        }
        async with self._slots:
            worker = self._idle.pop() if self._idle else await self._start()
            self._busy += 1
            if self._reaper is None or self._reaper.done():
                self._reaper = asyncio.create_task(self._close_idle(), name="parser-pool-reaper")
            healthy = False
            try:
                max_text_bytes = self.max_chars * 4  # a character is 4 bytes at most in UTF-16
                answer, text = await asyncio.wait_for(worker.ask(request, max_text_bytes), self.timeout_seconds)
                # A file the parser refused leaves the process as it was; any other failure may not have.
                healthy = answer.get("error") in (None, "unreadable") and not answer.get("retire")
                return self._sections(answer, text), answer
            except TimeoutError:
                raise UnreadableFile(
                    f"took longer than {self.timeout_seconds:g} s to parse (PARSE_TIMEOUT_SECONDS)"
                ) from None
            except _WorkerGone:
                raise UnreadableFile(await self._why_it_ended(worker)) from None
            finally:
                self._busy -= 1
                if healthy:
                    self._idle.append(worker)
                else:  # the next file gets a fresh process
                    await worker.kill()

    def _sections(self, answer: dict[str, object], text: bytes) -> list[Section]:
        match answer.get("error"):
            case None:
                return _split(answer.get("sections"), text)
            case "memory":
                raise UnreadableFile(f"needs more than {self.memory_mb} MB to parse (PARSE_MEMORY_MB)")
            case "unreadable":
                raise UnreadableFile(str(answer.get("message")))
            case other:
                logger.warning("a parser process failed: %s %s", other, answer.get("message"))
                raise UnreadableFile(_INTERNAL)

    async def _why_it_ended(self, worker: _Worker) -> str:
        status = await worker.exit_status()
        if status is not None and status < 0:
            # A native parser that finds no memory left under the cap aborts rather than raising: at this cap, a
            # crash is most often that, so the message names the limit as well as the signal.
            return (
                f"the parser crashed ({signal.Signals(-status).name}); parsing this file may need more than "
                f"{self.memory_mb} MB (PARSE_MEMORY_MB)"
            )
        logger.warning("a parser process ended without an answer (exit status %s)", status)
        return _INTERNAL

    async def _start(self) -> _Worker:
        try:
            worker = await _Worker.start(self.memory_mb)
        except (_WorkerGone, TimeoutError, OSError) as exc:
            logger.error("cannot start a parser process: %r", exc)
            raise UnreadableFile("no parser process could be started (see the service log)") from None
        self.started += 1
        return worker

    async def _close_idle(self) -> None:
        """Close processes idle for `idle_seconds`; end when there are none left, idle or busy."""
        while self._idle or self._busy:
            await asyncio.sleep(self.idle_seconds / 4)
            cutoff = time.monotonic() - self.idle_seconds
            stale = [w for w in self._idle if w.last_used < cutoff]
            self._idle = [w for w in self._idle if w.last_used >= cutoff]
            for worker in stale:
                await worker.aclose()

    @property
    def processes(self) -> int:
        """Parser processes alive now, idle or busy."""
        return len(self._idle) + self._busy

    async def aclose(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        idle, self._idle = self._idle, []
        for worker in idle:
            await worker.aclose()
