"""The kept form of a resumable answer's events: every event comes back as it went in, through JSON."""

from __future__ import annotations

import json

from llm.types import Usage
from rag.answers.codec import decode, encode
from rag.types import Chunk, DoneEvent, ErrorEvent, Hit, ReasoningEvent, SourcesEvent, TokenEvent, UsageEvent


def test_every_event_survives_the_round_trip() -> None:
    hit = Hit(Chunk("c1", "d1", "text ✓", {"orgId": "o", "page": 2}), 0.5, ("dense", "keyword"), 3.25, 0.03)
    events = [
        SourcesEvent([hit]),
        ReasoningEvent("think"),
        TokenEvent('quote " and \\ and \n and 🙂'),
        TokenEvent(""),
        UsageEvent(Usage(10, 3)),
        ErrorEvent("upstream_error", "boom"),
        DoneEvent("stop"),
        DoneEvent(None),
    ]
    assert [decode(value) for value in json.loads(json.dumps([encode(e) for e in events]))] == events
    assert encode(TokenEvent("word")) == "word"  # a token costs its own text and two quotes
