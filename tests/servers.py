"""Run an ASGI app under a real uvicorn on 127.0.0.1 in a background thread, for tests that need real HTTP.

In-process test clients buffer whole bodies and never disconnect, so they cannot show incremental streaming or
cancellation; a live server can.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn

PROJECT = Path(__file__).resolve().parents[1]


def command(
    module: str, *args: str, data_dir: Path, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """`python -m module args` as an operator runs it, with the service's settings from the environment (DATA_DIR
    and `env` given; run in `cwd`, where no .env is), in a process group of its own (so that a test can kill it
    whole)."""
    environment = {**os.environ, **(env or {}), "DATA_DIR": str(data_dir), "PYTHONPATH": str(PROJECT)}
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve(app: Any, startup_timeout: float = 60.0) -> Iterator[str]:
    """Serve `app` until the block ends; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)  # off the main thread, uvicorn leaves signals alone
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the server failed to start")
        if time.monotonic() > deadline:
            raise TimeoutError("the server did not start in time")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


class CuttableProxy:
    """A TCP proxy on 127.0.0.1 in front of `target` ("host:port"), whose open connections `cut()` drops at once, as
    a network change drops a phone's: the client sees its stream end mid-answer and may connect again."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.connections = 0
        self.sent: list[str] = []  # what clients sent (each read's first 2 KB), to see which requests they made
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._open |= {client, upstream}
                self.connections += 1
            for source, sink, record in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(source, sink, record), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, record: bool) -> None:
        try:
            while data := source.recv(65536):
                if record:
                    self.sent.append(data[:2048].decode("latin-1"))
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._open -= {source, sink}

    def cut(self) -> int:
        """Drop every open connection; returns how many sockets were open."""
        with self._lock:
            sockets, self._open = list(self._open), set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        return len(sockets)

    def close(self) -> None:
        self._listener.close()
        self.cut()
