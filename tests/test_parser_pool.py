"""The parser processes with real parsers on real hostile files: each limit fails the file by name, a process is
reused while healthy and replaced after a limit, idle ones close, and none outlives the service that started it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import sample_files
from rag.errors import UnreadableFile
from rag.ingest.parser_pool import ParserPool
from rag.ingest.parsers import ParseLimits

PROJECT_DIR = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def parser_children(pid: int) -> list[int]:
    """The parser processes whose parent is `pid`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().split(") ")[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                command = cmdline.read()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if parent == pid and b"rag.ingest.parse_worker" in command:
            found.append(int(entry))
    return found


async def test_a_healthy_process_is_reused_and_an_idle_one_closes(tmp_path: Path) -> None:
    # The session's live servers run in this process too: their parser processes, if any, are not this pool's.
    others = set(parser_children(os.getpid()))
    pool = ParserPool(ParseLimits(), idle_seconds=0.4)
    first = await pool.parse(write(tmp_path, "a.txt", b"The heron waits."), "text")
    second = await pool.parse(write(tmp_path, "b.md", b"# Notes\n\nThe *egret* flies."), "markdown")
    assert [s.text for s in first] == ["The heron waits."]
    assert [s.text for s in second] == ["Notes\nThe egret flies."]
    assert pool.started == 1 and pool.processes == 1
    [pid] = set(parser_children(os.getpid())) - others
    deadline = time.monotonic() + 10
    while (pool.processes or alive(pid)) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert pool.processes == 0
    assert not alive(pid)  # ended by end of input, not left behind
    await pool.aclose()


async def test_a_file_past_the_memory_cap_fails_by_name_and_the_next_gets_a_fresh_process(tmp_path: Path) -> None:
    pool = ParserPool(ParseLimits(), memory_mb=512)
    with pytest.raises(UnreadableFile, match=r"needs more than 512 MB to parse \(PARSE_MEMORY_MB\)"):
        await pool.parse(write(tmp_path, "huge.docx", sample_files.docx_huge_xml()), "docx")
    # PDFium aborts when an allocation fails under the cap: the crash is named, and so is the limit.
    with pytest.raises(UnreadableFile, match=r"parser crashed \(SIG\w+\).*512 MB \(PARSE_MEMORY_MB\)"):
        await pool.parse(write(tmp_path, "bomb.pdf", sample_files.pdf_content_bomb(1_000_000_000)), "pdf")
    sections = await pool.parse(write(tmp_path, "ok.pdf", sample_files.pdf(["A calm page."])), "pdf")
    assert [(s.text.strip(), s.page) for s in sections] == [("A calm page.", 1)]
    assert pool.started == 3  # one for each failure, one after the last
    await pool.aclose()


async def test_a_slow_file_is_killed_at_the_time_limit(tmp_path: Path) -> None:
    others = set(parser_children(os.getpid()))  # the live servers' (this process's too), not this pool's
    pool = ParserPool(ParseLimits(), timeout_seconds=1)
    started = time.monotonic()
    with pytest.raises(UnreadableFile, match=r"took longer than 1 s to parse \(PARSE_TIMEOUT_SECONDS\)"):
        await pool.parse(write(tmp_path, "deep.html", sample_files.nested_html(200_000)), "html")
    assert time.monotonic() - started < 10  # uncapped, this file takes about a minute
    assert set(parser_children(os.getpid())) - others == set()  # killed, not left spinning
    await pool.aclose()


async def test_text_past_the_character_limit_is_refused_and_nothing_else_is(tmp_path: Path) -> None:
    pool = ParserPool(ParseLimits(), max_chars=1_000_000)
    with pytest.raises(UnreadableFile, match=r"more than 1,000,000 characters \(MAX_FILE_CHARS\)"):
        await pool.parse(write(tmp_path, "line.txt", sample_files.single_line_text(5_000_000)), "text")
    with pytest.raises(UnreadableFile, match="not UTF-8"):  # an ordinary refusal keeps the process
        await pool.parse(write(tmp_path, "latin.txt", "caf\xe9".encode("latin-1")), "text")
    assert pool.started == 1
    await pool.aclose()


def test_no_parser_outlives_a_killed_service(tmp_path: Path) -> None:
    """The service is SIGKILLed while its parser inflates a bomb: the kernel ends the parser too (PDEATHSIG)."""
    bomb = write(tmp_path, "deep.html", sample_files.nested_html(200_000))
    script = (
        "import asyncio, sys\n"
        "from rag.ingest.parser_pool import ParserPool\n"
        "from rag.ingest.parsers import ParseLimits\n"
        "print('parsing', flush=True)\n"
        f"asyncio.run(ParserPool(ParseLimits(), timeout_seconds=600).parse(__import__('pathlib').Path({str(bomb)!r}), 'html'))\n"
    )
    service = subprocess.Popen([sys.executable, "-c", script], cwd=PROJECT_DIR, stdout=subprocess.PIPE)
    try:
        assert service.stdout is not None and service.stdout.readline() == b"parsing\n"
        deadline = time.monotonic() + 30
        while not (children := parser_children(service.pid)):
            assert time.monotonic() < deadline, "no parser process started"
            time.sleep(0.05)
        time.sleep(1)  # the parser is at work on the file
        service.send_signal(signal.SIGKILL)
        service.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(pid) for pid in children)
    finally:
        service.kill()
        service.wait()
