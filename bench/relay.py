"""Relay cost: the service's CPU per relayed token and its time to first token, beside a minimal relay, in one run.

    .venv/bin/python bench/relay.py

Three processes on 127.0.0.1: the fake OpenAI-compatible upstream, the service (`python main.py`, no documents
stored, so no question is embedded and only relaying is measured), and a minimal relay: a Starlette app that posts
to the same upstream with httpx, iterates its lines, `json.loads` each chunk and streams `data: {"content": ...}`
back through a `StreamingResponse`: the bare parts the service is made of.

- CPU per token: each relay answers 10 requests of 2,000 tokens sent back to back (no delay); the relay process's
  user+system CPU time (from /proc) divided by the tokens relayed. For `/api/v1/chat` and `/v1/chat/completions`.
- Time to first token at 1 and 50 concurrent streams, when the upstream sends 20 tokens 20 ms apart: through the
  service, through the minimal relay, and straight from the upstream; p50 of each, and what the relay adds.
- CPU per request: the relay process's CPU time over 10 rounds of 50 simultaneous one-token answers, divided by the
  requests. At 50 simultaneous arrivals the median stream waits for about 25 request starts on the event loop, so
  this is what the first token at 50 streams follows. The minimal relay stops reading at `[DONE]`, so httpx drops
  its upstream connection and opens one per request: with the connection reused instead, its httpx pool asked each
  of 50 idle connections, twice a request, whether it was closed, and took 3.75 ms per request instead of 1.8.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.service_process import PROJECT_DIR, FakeUpstreamProcess, ServiceProcess, free_port

QUESTION = [{"role": "user", "content": "Tell me something."}]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks of 1/100 s


def serve_minimal_relay(port: int, upstream: str) -> None:
    """The reference: what relaying costs with nothing but httpx, json and Starlette."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    # No cap on connections: bench/load.py runs 1,000 streams through it at once.
    client = httpx.AsyncClient(base_url=upstream, timeout=600, limits=httpx.Limits(max_connections=None))

    async def relay(request: Request) -> StreamingResponse:
        body = await request.json()

        async def lines():
            payload = {"model": "m", "messages": body["messages"], "stream": True}
            async with client.stream("POST", "/chat/completions", json=payload) as response:
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    choices = json.loads(data).get("choices") or [{}]
                    text = (choices[0].get("delta") or {}).get("content")
                    if text:
                        yield f"data: {json.dumps({'content': text})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(lines(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/relay", relay, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, *args], cwd=PROJECT_DIR)


def wait_up(url: str, method: str = "GET") -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.request(method, url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise TimeoutError(url)


async def stream_once(client: httpx.AsyncClient, url: str, body: dict) -> tuple[float | None, int]:
    """(seconds to the first token, tokens received)"""
    started = time.perf_counter()
    first, tokens = None, 0
    async with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                continue
            event = json.loads(line[5:])
            text = event.get("content")
            if text is None:  # OpenAI's chunk format
                choices = event.get("choices") or [{}]
                text = (choices[0].get("delta") or {}).get("content")
            if text:
                tokens += 1
                if first is None:
                    first = time.perf_counter() - started
    return first, tokens


async def cpu_per_token(pid: int, url: str, body: dict, requests: int) -> tuple[float, int]:
    async with httpx.AsyncClient(timeout=120) as client:
        await stream_once(client, url, body)  # warm-up
        before = cpu_seconds(pid)
        tokens = 0
        for _ in range(requests):
            tokens += (await stream_once(client, url, body))[1]
        return (cpu_seconds(pid) - before) / tokens * 1e6, tokens


async def cpu_per_request(pid: int, url: str, body: dict, concurrency: int = 50, rounds: int = 10) -> float:
    """Milliseconds of the relay's CPU per request, over rounds of `concurrency` simultaneous one-token answers
    (client connections kept alive, so that what is measured is the request, not the TCP handshake)."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        for _ in range(2):  # warm-up: every connection, both ways, opened
            await asyncio.gather(*(stream_once(client, url, body) for _ in range(concurrency)))
        before = cpu_seconds(pid)
        for _ in range(rounds):
            await asyncio.gather(*(stream_once(client, url, body) for _ in range(concurrency)))
        return (cpu_seconds(pid) - before) / (concurrency * rounds) * 1e3


async def ttft(url: str, body: dict, concurrency: int, rounds: int) -> float:
    # A new connection per stream, as a browser's EventSource opens one: httpx's pool (httpcore 1.x), reusing 50
    # connections for 50 simultaneous requests, made this client the bottleneck (straight from the upstream: p50
    # 168 ms with reuse against 46 ms without), hiding what the relays add.
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        await stream_once(client, url, body)
        firsts = []
        for _ in range(rounds):
            results = await asyncio.gather(*(stream_once(client, url, body) for _ in range(concurrency)))
            firsts += [first for first, _ in results if first is not None]
    return statistics.median(firsts) * 1000


def run(requests: int) -> None:
    with contextlib.ExitStack() as stack:
        fast = stack.enter_context(FakeUpstreamProcess(2000, 0, prefix="t")).url
        slow = stack.enter_context(FakeUpstreamProcess(20, 0.02, prefix="t")).url
        one = stack.enter_context(FakeUpstreamProcess(1, 0, prefix="t")).url
        minimal_port, minimal_slow_port, minimal_one_port = free_port(), free_port(), free_port()
        processes = [
            spawn("--minimal", str(minimal_port), fast),
            spawn("--minimal", str(minimal_slow_port), slow),
            spawn("--minimal", str(minimal_one_port), one),
        ]
        for process in processes:
            stack.callback(_stop, process)
        for port in (minimal_port, minimal_slow_port, minimal_one_port):
            wait_up(f"http://127.0.0.1:{port}/")
        minimal_pid = processes[0].pid
        chat = {"messages": QUESTION}
        completion = {"model": "m", "messages": QUESTION, "stream": True}
        with tempfile.TemporaryDirectory() as tmp, ServiceProcess(Path(tmp), fast) as service:
            service.wait_ready()
            pid = service.process.pid
            ref, _ = asyncio.run(cpu_per_token(minimal_pid, f"http://127.0.0.1:{minimal_port}/relay", chat, requests))
            ours, tokens = asyncio.run(cpu_per_token(pid, f"{service.url}/api/v1/chat", chat, requests))
            openai_api, _ = asyncio.run(cpu_per_token(pid, f"{service.url}/v1/chat/completions", completion, requests))
            print(f"CPU per relayed token ({requests} answers of {tokens // requests} tokens each):")
            print(f"  minimal relay (httpx + json + Starlette)  {ref:7.1f} us")
            print(f"  /api/v1/chat                              {ours:7.1f} us  ({ours / ref:.2f}x)")
            print(f"  /v1/chat/completions                      {openai_api:7.1f} us  ({openai_api / ref:.2f}x)")
        # The same upstream twice in LLM_UPSTREAMS: every answer goes through the router (choice, first-token
        # buffering, bookkeeping), against the single-upstream service above.
        upstreams = json.dumps([{"name": "a", "base_url": fast}, {"name": "b", "base_url": fast}])
        with tempfile.TemporaryDirectory() as tmp, ServiceProcess(Path(tmp), fast, llm_upstreams=upstreams) as routed:
            routed.wait_ready()
            via_router, _ = asyncio.run(cpu_per_token(routed.process.pid, f"{routed.url}/api/v1/chat", chat, requests))
            print(
                f"  /api/v1/chat with LLM_UPSTREAMS (2)       {via_router:7.1f} us  ({via_router / ours:.2f}x single)"
            )
        with tempfile.TemporaryDirectory() as tmp, ServiceProcess(Path(tmp), slow) as service:
            service.wait_ready()
            print("time to first token p50 (upstream: 20 tokens, 20 ms apart):")
            for concurrency in (1, 50):
                rounds = 20 if concurrency == 1 else 10
                direct = asyncio.run(ttft(f"{slow}/chat/completions", completion, concurrency, rounds))
                minimal = asyncio.run(ttft(f"http://127.0.0.1:{minimal_slow_port}/relay", chat, concurrency, rounds))
                service_ms = asyncio.run(ttft(f"{service.url}/api/v1/chat", chat, concurrency, rounds))
                print(
                    f"  {concurrency:3} streams: upstream direct {direct:6.1f} ms, minimal relay {minimal:6.1f} ms "
                    f"(+{minimal - direct:5.1f}), service {service_ms:6.1f} ms (+{service_ms - direct:5.1f})"
                )
            service.terminate()
        with tempfile.TemporaryDirectory() as tmp, ServiceProcess(Path(tmp), one) as service:
            service.wait_ready()
            minimal_url = f"http://127.0.0.1:{minimal_one_port}/relay"
            ref_ms = asyncio.run(cpu_per_request(processes[2].pid, minimal_url, chat))
            ours_ms = asyncio.run(cpu_per_request(service.process.pid, f"{service.url}/api/v1/chat", chat))
            print("CPU per request (10 rounds of 50 simultaneous one-token answers):")
            print(f"  minimal relay {ref_ms:.2f} ms, /api/v1/chat {ours_ms:.2f} ms ({ours_ms / ref_ms:.2f}x)")
            service.terminate()
        upstreams = json.dumps([{"name": "a", "base_url": one}, {"name": "b", "base_url": one}])
        with tempfile.TemporaryDirectory() as tmp, ServiceProcess(Path(tmp), one, llm_upstreams=upstreams) as routed:
            routed.wait_ready()
            routed_ms = asyncio.run(cpu_per_request(routed.process.pid, f"{routed.url}/api/v1/chat", chat))
            print(f"  /api/v1/chat with LLM_UPSTREAMS (2) {routed_ms:.2f} ms ({routed_ms / ours_ms:.2f}x single)")
            routed.terminate()


def _stop(process: subprocess.Popen) -> None:
    process.kill()
    process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--minimal", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.minimal:
        serve_minimal_relay(int(args.minimal[0]), args.minimal[1])
    else:
        run(args.requests)


if __name__ == "__main__":
    main()
