"""A small SSE reader for tests: yields each event's data, skipping comments (pings)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx


def iter_data(response: httpx.Response) -> Iterator[str]:
    for _, data in iter_events(response):
        yield data


def read_stream(response: httpx.Response) -> tuple[list[dict[str, Any]], bool]:
    """All JSON payloads of a seed-format stream, and whether it ended with [DONE] (and nothing after it)."""
    payloads: list[dict[str, Any]] = []
    done = False
    for data in iter_data(response):
        assert not done, "nothing may follow [DONE]"
        if data == "[DONE]":
            done = True
        else:
            payloads.append(json.loads(data))
    return payloads, done


def iter_events(response: httpx.Response) -> Iterator[tuple[str | None, str]]:
    """Each event's id (None without one) and data, comments skipped; an event cut off before its blank line
    still counts."""
    data: list[str] = []
    event_id: str | None = None
    for line in response.iter_lines():
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif line.startswith("id:"):
            event_id = line[3:].removeprefix(" ")
        elif line == "" and data:
            yield event_id, "\n".join(data)
            data, event_id = [], None
    if data:
        yield event_id, "\n".join(data)
