"""The process-wide SSE stream supervisor: pings, stalled sends, shutdown, and the client's disconnect.

The responses run as ASGI apps here, driven by plain `receive` and `send` callables; the live tests
(`test_streaming_live.py`, `test_faults.py`, `test_processes.py`) cover the same behaviour through uvicorn.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio

from api.sse_streams import StreamSupervisor, SupervisedEventSource

SCOPE = {"type": "http", "method": "POST"}


async def frames_every(seconds: float, count: int) -> AsyncIterator[bytes]:
    for index in range(count):
        await asyncio.sleep(seconds)
        yield f"data: {index}\r\n\r\n".encode()


class Client:
    """An ASGI client that records what it is sent and can leave."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.left = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.left.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            self.bodies.append(message["body"])

    @property
    def pings(self) -> list[bytes]:
        return [body for body in self.bodies if body.startswith(b": ping")]


async def run(supervisor: StreamSupervisor, events: AsyncIterator[bytes], client: Client) -> None:
    response = SupervisedEventSource(events, supervisor=supervisor, shutdown_event=anyio.Event())
    await response(SCOPE, client.receive, client.send)


async def test_a_quiet_stream_is_pinged_and_a_busy_one_is_not() -> None:
    supervisor = StreamSupervisor(send_timeout=30, ping_interval=0.3, shutdown_grace=5)
    supervisor.start()
    try:
        quiet, busy = Client(), Client()
        await asyncio.gather(
            run(supervisor, frames_every(1.0, 1), quiet),  # nothing for 1 s: three ping intervals
            run(supervisor, frames_every(0.02, 50), busy),  # a frame every 20 ms for the same second
        )
    finally:
        await supervisor.aclose()
    assert len(quiet.pings) >= 2, quiet.bodies
    assert quiet.bodies[-2:] == [b"data: 0\r\n\r\n", b""]  # no ping after the last frame or the end
    assert busy.pings == [], busy.bodies
    assert len(busy.bodies) == 51


async def test_a_send_blocked_longer_than_the_timeout_ends_the_stream() -> None:
    supervisor = StreamSupervisor(send_timeout=30, ping_interval=15, shutdown_grace=5)
    response = SupervisedEventSource(frames_every(10, 1), supervisor=supervisor)
    with supervisor.watching(response) as scope:
        response.send_started = time.monotonic() - 29
        supervisor._tick(time.monotonic())
        assert not scope.cancel_called  # blocked, but not for long enough
        response.send_started = time.monotonic() - 31
        supervisor._tick(time.monotonic())
        assert scope.cancel_called


async def test_on_shutdown_streams_are_asked_to_end_then_cancelled_after_the_grace_period() -> None:
    supervisor = StreamSupervisor(send_timeout=30, ping_interval=15, shutdown_grace=5)
    open_before = SupervisedEventSource(frames_every(10, 1), supervisor=supervisor, shutdown_event=anyio.Event())
    with supervisor.watching(open_before) as scope:
        supervisor.begin_shutdown()
        assert open_before._shutdown_event is not None and open_before._shutdown_event.is_set()
        # A stream that starts during the shutdown is asked to end at once.
        late = SupervisedEventSource(frames_every(10, 1), supervisor=supervisor, shutdown_event=anyio.Event())
        with supervisor.watching(late):
            assert late._shutdown_event is not None and late._shutdown_event.is_set()
        supervisor._tick(time.monotonic() + 4)
        assert not scope.cancel_called  # still in its grace period
        supervisor._tick(time.monotonic() + 6)
        assert scope.cancel_called


async def test_the_clients_disconnect_cancels_the_stream_and_closes_its_events() -> None:
    supervisor = StreamSupervisor(send_timeout=30, ping_interval=15, shutdown_grace=5)
    closed = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        try:
            while True:
                await asyncio.sleep(0.02)
                yield b"data: x\r\n\r\n"
        finally:
            closed.set()

    client = Client()
    task = asyncio.create_task(run(supervisor, endless(), client))
    await asyncio.sleep(0.1)
    client.left.set()
    await asyncio.wait_for(task, timeout=5)  # the response returns instead of streaming forever
    assert closed.is_set()
    assert client.bodies and client.bodies[-1] == b"data: x\r\n\r\n"  # cut off: no final empty body
