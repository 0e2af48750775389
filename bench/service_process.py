"""Start the service as a real process (`python main.py`, or uvicorn with several workers) for scripts and tests
that kill, signal or load it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

PROJECT_DIR = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServiceProcess:
    def __init__(
        self,
        data_dir: Path,
        upstream_url: str | None,
        workers: int = 1,
        log_path: Path | None = None,
        **settings: str,
    ) -> None:
        """`upstream_url` None: the default chat model (the local one), as `make run` starts it. `log_path`: where
        its output goes (appended), instead of this process's stdout and stderr."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        upstream = {"LLM_PROVIDER": "openai", "OPENAI_BASE_URL": upstream_url, "OPENAI_API_KEY": "test"}
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LLM_", "API_KEYS"))},
            "DATA_DIR": str(data_dir),
            **(upstream if upstream_url is not None else {}),
            "OPENAI_MAX_RETRIES": "0",
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "LOG_LEVEL": "warning",
            **{key.upper(): value for key, value in settings.items()},
        }
        if workers == 1:
            command = [sys.executable, "main.py"]
        else:
            command = [sys.executable, "-m", "uvicorn", "main:app", "--host", "127.0.0.1", "--port", str(self.port)]
            command += ["--workers", str(workers), "--log-level", "warning", "--timeout-graceful-shutdown", "10"]
        log = open(log_path, "ab") if log_path is not None else None  # noqa: SIM115 (the child holds it)
        # A process group of its own: uvicorn's workers are its children, and when the master is killed they would
        # outlive it (two did, for hours, after a test); the group is killed whole.
        self.process = subprocess.Popen(
            command, cwd=PROJECT_DIR, env=self.env, stdout=log, stderr=log, start_new_session=True
        )
        if log is not None:
            log.close()

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited with {self.process.returncode} before it was ready")
            try:
                if httpx.get(f"{self.url}/api/v1/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError("the service did not become ready")

    def kill(self) -> None:
        """SIGKILL the service and every process it started (workers, parsers)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def terminate(self, timeout: float = 30.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, *_: object) -> None:
        self.kill()  # the group, even when the master has exited already: its workers may not have


class FakeUpstreamProcess:
    """The tests' fake OpenAI-compatible upstream (`tests/fake_upstream.py`) in a process of its own, so that its CPU
    is not counted as the measured service's: every answer is `count` tokens `{prefix}{i} `, `delay` seconds apart.
    `url` is its `/v1` base URL; entering the block waits until it answers."""

    def __init__(self, count: int, delay: float, prefix: str = "tok") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        command = [sys.executable, "-m", "bench.service_process", str(self.port), str(count), str(delay), prefix]
        self.process = subprocess.Popen(command, cwd=PROJECT_DIR)

    def __enter__(self) -> FakeUpstreamProcess:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/", timeout=2)  # any answer: it is listening
                return self
            except httpx.HTTPError:
                time.sleep(0.2)
        self.__exit__()
        raise TimeoutError("the fake upstream did not start")

    def __exit__(self, *_: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def _serve_fake_upstream(port: int, count: int, delay: float, prefix: str) -> None:
    import uvicorn

    from tests.fake_upstream import FakeUpstream, Script

    fake = FakeUpstream()
    fake.script = Script(tokens=[f"{prefix}{i} " for i in range(count)], delay=delay)
    uvicorn.run(fake.app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":  # what FakeUpstreamProcess runs: PORT COUNT DELAY PREFIX
    _serve_fake_upstream(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4])
