"""The per-token fast paths write the same bytes as the general ones: a spliced frame against sse-starlette's own
encoding of `json.dumps`, over texts that exercise JSON escaping (quotes, backslashes, control characters, line and
paragraph separators, astral characters, a lone surrogate)."""

from __future__ import annotations

import json

import pytest
from sse_starlette import ServerSentEvent

from api.openai_api import CompletionIds, _template
from api.sse import DONE, data_frame, json_string, seed_event
from rag.types import DoneEvent, TokenEvent

TEXTS = [
    "",
    "plain",
    ' "quoted" ',
    "back\\slash",
    "line\nbreak\r\nand\rreturn",
    "tab\tnul\x00bell\x07esc\x1b",
    "sep\u2028para\u2029",
    "Grüße, 你好, 🙂",
    "</script>",
]


def reference(json_text: str) -> bytes:
    return ServerSentEvent(data=json_text).encode()


@pytest.mark.parametrize("text", TEXTS)
def test_a_token_frame_is_what_serialising_the_object_gives(text: str) -> None:
    expected = reference(json.dumps({"content": text}, ensure_ascii=False))
    assert seed_event(TokenEvent(text)) == expected
    assert json.loads(seed_event(TokenEvent(text))[len(b"data: ") :]) == {"content": text}


def test_a_lone_surrogate_is_sent_as_its_json_escape_instead_of_breaking_the_stream() -> None:
    """Half of an emoji split across two upstream chunks has no UTF-8 form; sse-starlette's encoding raises on it."""
    with pytest.raises(UnicodeEncodeError):
        reference(json.dumps({"content": "\ud83d"}, ensure_ascii=False))
    frame = seed_event(TokenEvent("a\ud83d"))
    assert frame == b'data: {"content": "a\\ud83d"}\r\n\r\n'
    assert json.loads(frame[len(b"data: ") :]) == {"content": "a\ud83d"}


def test_the_other_events_keep_the_general_encoding() -> None:
    assert seed_event(DoneEvent("stop")) == reference(DONE)
    assert data_frame(json.dumps({"a": [1, "x\ny"]})) == reference(json.dumps({"a": [1, "x\ny"]}))
    # Not JSON, with raw line breaks: still one event, its lines as sse-starlette splits them.
    assert data_frame("first\nsecond\r\nthird") == reference("first\nsecond\r\nthird")


@pytest.mark.parametrize("field", ["content", "reasoning_content"])
@pytest.mark.parametrize("model", ["m", 'a "content": "" model', "modèle\n"])
@pytest.mark.parametrize("text", TEXTS)
def test_an_openai_chunk_spliced_from_its_template_is_the_serialised_chunk(field: str, model: str, text: str) -> None:
    ids = CompletionIds(model)
    head, tail = _template(ids, field)
    spliced = head + json_string(text) + tail
    assert spliced == json.dumps(ids.delta({field: text}), ensure_ascii=False)
