"""Failover between chat upstreams: one of two killed under 50 concurrent streams, and what a failed attempt costs.

    .venv/bin/python bench/failover.py [--streams 50]

Processes on 127.0.0.1: two fake OpenAI-compatible upstreams (each answer 40 tokens, 50 ms apart, its tokens
marked `a…` or `b…`), and the service (`python main.py`, LLM_UPSTREAMS naming both, no documents, so only the
relaying is measured).
- Kill: `--streams` chats are started 20 ms apart; 0.5 s in, upstream a is killed with SIGKILL. Each stream is
  classified by what its client saw: complete on a, complete on b (the answers that had not started when a died
  must end here), started on a and ended by one error event then [DONE], or anything else: a stream cut without an
  error event, an answer mixing a's and b's tokens, an error status. The last must be zero.
- Cost of a failed attempt: time to first token p50 over 60 sequential chats, with LLM_UPSTREAMS = [b] alone, and
  with [a dead port (refused), b] where the dead one is always tried first (its weight is 1,000 times b's and its
  cool-down is off): the difference is what the failover adds, against what the refused attempt costs alone (a TCP
  connect, and a POST through httpx), measured beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib

from bench.service_process import FakeUpstreamProcess, ServiceProcess, free_port

TOKENS, DELAY = 40, 0.05


@dataclass
class Outcome:
    status: int
    tokens: list[str]
    error: str | None
    done: bool
    first: float | None


async def chat(client: httpx.AsyncClient, url: str) -> Outcome:
    started = time.perf_counter()
    tokens: list[str] = []
    error, done, first = None, False, None
    try:
        async with client.stream(
            "POST", f"{url}/api/v1/chat", json={"messages": [{"role": "user", "content": "Go"}]}
        ) as r:
            if r.status_code != 200:
                return Outcome(r.status_code, [], None, False, None)
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    continue
                event = json.loads(data)
                if "error" in event:
                    error = event["error"]["type"]
                if event.get("content"):
                    first = first if first is not None else time.perf_counter() - started
                    tokens.append(event["content"])
    except httpx.HTTPError:
        pass
    return Outcome(200, tokens, error, done, first)


def classify(outcome: Outcome) -> str:
    sources = {token[0] for token in outcome.tokens}
    if outcome.status != 200:
        return f"error status {outcome.status}"
    if len(sources) > 1:
        return "MIXED a and b"
    if outcome.done and outcome.error is None and len(outcome.tokens) == TOKENS:
        return f"complete on {sources.pop()}"
    if outcome.done and outcome.error is not None and outcome.tokens:
        return f"started on {sources.pop()}, then one error event ({outcome.error}) and [DONE]"
    return "CUT without an error event" if outcome.tokens else "nothing, no error"


async def under_kill(url: str, streams: int, kill: FakeUpstreamProcess) -> dict[str, int]:
    limits = httpx.Limits(max_connections=streams, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def later(n: int) -> Outcome:
            await asyncio.sleep(n * 0.02)
            return await chat(client, url)

        async def killer() -> None:
            await asyncio.sleep(0.5)
            kill.process.send_signal(signal.SIGKILL)

        results = await asyncio.gather(*(later(n) for n in range(streams)), killer())
    counts: dict[str, int] = {}
    for outcome in results[:-1]:
        label = classify(outcome)  # type: ignore[arg-type]
        counts[label] = counts.get(label, 0) + 1
    return counts


async def first_tokens(url: str, n: int = 20) -> float:
    async with httpx.AsyncClient(timeout=60) as client:
        await chat(client, url)
        firsts = [(await chat(client, url)).first for _ in range(n)]
    return statistics.median(f for f in firsts if f is not None) * 1000


def refused_ms(port: int, n: int = 50) -> tuple[float, float]:
    """What a refused attempt costs by itself, p50 in ms: the TCP connect alone, and a POST through an HTTP client
    (httpx, the library the service's own client is a fork of)."""
    connects, posts = [], []
    with httpx.Client(timeout=2) as client:
        for _ in range(n):
            started = time.perf_counter()
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
            connects.append(time.perf_counter() - started)
            started = time.perf_counter()
            with contextlib.suppress(httpx.HTTPError):
                client.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={"messages": []})
            posts.append(time.perf_counter() - started)
    return statistics.median(connects) * 1000, statistics.median(posts) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=50)
    args = parser.parse_args()
    with (
        FakeUpstreamProcess(TOKENS, DELAY, prefix="a") as a,
        FakeUpstreamProcess(TOKENS, DELAY, prefix="b") as b,
        tempfile.TemporaryDirectory() as tmp,
    ):
        pair = json.dumps([{"name": "a", "base_url": a.url}, {"name": "b", "base_url": b.url}])
        with ServiceProcess(Path(tmp) / "kill", a.url, llm_upstreams=pair) as service:
            service.wait_ready()
            counts = asyncio.run(under_kill(service.url, args.streams, a))
            states = httpx.get(f"{service.url}/api/v1/health").json()["llm"]["upstreams"]
            service.terminate()
        print(f"{args.streams} streams started 20 ms apart, upstream a killed (SIGKILL) 0.5 s in:")
        for label, count in sorted(counts.items()):
            print(f"  {count:3}  {label}")
        print("  upstreams after: " + "; ".join(f"{s['name']} {s['state']}, {s['failures']} failures" for s in states))

        dead = free_port()
        alone = json.dumps([{"name": "b", "base_url": b.url}])
        first = json.dumps(
            [
                {"name": "dead", "base_url": f"http://127.0.0.1:{dead}/v1", "weight": 1000},
                {"name": "b", "base_url": b.url},
            ]
        )
        with ServiceProcess(Path(tmp) / "alone", b.url, llm_upstreams=alone) as service:
            service.wait_ready()
            reference = asyncio.run(first_tokens(service.url, n=60))
            service.terminate()
        # A failure threshold no answer reaches: the dead upstream is tried first by every request.
        with ServiceProcess(Path(tmp) / "first", b.url, llm_upstreams=first, llm_failure_threshold="1000") as service:
            service.wait_ready()
            failing_over = asyncio.run(first_tokens(service.url, n=60))  # fewer than the threshold
            service.terminate()
        print("time to first token p50, sequential (upstream b: first token after 50 ms):")
        print(f"  b alone {reference:.1f} ms; a refused upstream tried first, then b {failing_over:.1f} ms")
        connect, post = refused_ms(dead)
        print(
            f"  failover added {failing_over - reference:+.2f} ms; the refused attempt alone: a TCP connect "
            f"{connect:.2f} ms, a POST through httpx {post:.2f} ms"
        )


if __name__ == "__main__":
    main()
