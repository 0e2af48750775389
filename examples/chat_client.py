"""Stream an answer from the service and print it as it arrives.

    python examples/chat_client.py "What do my documents say about X?" [--url http://127.0.0.1:8000]

Each `data:` line holds a JSON object with a `content` string; sources, reasoning, usage and errors come as extra
keys; the last line is `data: [DONE]`, which is not JSON. httpx's `iter_lines` reassembles lines that the network
split across chunks.
"""

from __future__ import annotations

import argparse
import json
import sys

import httpx


def chat(url: str, question: str) -> str:
    answer: list[str] = []
    body = {"messages": [{"role": "user", "content": question}]}
    with httpx.stream("POST", f"{url}/api/v1/chat", json=body, timeout=httpx.Timeout(10, read=120)) as response:
        if response.status_code != 200:
            error = json.loads(response.read())["error"]
            raise SystemExit(f"HTTP {response.status_code} {error['type']}: {error['message']}")
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue  # blank separators and ": ping" keep-alive comments
            data = line[5:].strip()
            if data == "[DONE]":
                break
            event = json.loads(data)
            if "sources" in event:
                names = ", ".join(s["metadata"].get("title") or s["document_id"] for s in event["sources"])
                print(f"[sources: {names or 'none'}]", file=sys.stderr)
            if "error" in event:
                raise SystemExit(f"\nstream failed: {event['error']['message']}")
            print(event["content"], end="", flush=True)
            answer.append(event["content"])
    print()
    return "".join(answer)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("question")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    args = parser.parse_args()
    chat(args.url, args.question)
