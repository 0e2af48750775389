"""Separates inline `<think>...</think>` reasoning from the answer in a stream of text pieces.

Reasoning models served as plain chat models (deepseek-r1 distills on Ollama, llama.cpp or vLLM without a
reasoning parser) write their reasoning into `content` between think tags. The tags may be split across chunks
(`<thi` + `nk>`), and when the chat template already opened the tag the output starts inside it, with only the
closing tag to be seen: `start_inside=True` covers that.
"""

from __future__ import annotations

import re

OPEN = "<think>"
CLOSE = "</think>"

# Model names that are served with the opening tag already in the prompt (deepseek-r1 and its distills, QwQ).
_OPENS_INSIDE = re.compile(r"(^|[-_/:.])(r1|qwq)([-_/:.]|$)|reason", re.IGNORECASE)


def starts_inside_think(model: str) -> bool:
    """Whether a model's output is expected to begin inside an implicit `<think>`."""
    return bool(_OPENS_INSIDE.search(model))


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that could be the start of `tag`."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


class ThinkTagSplitter:
    def __init__(self, start_inside: bool = False) -> None:
        self._inside = start_inside
        self._pending = ""  # text held back because it may be the start of a tag
        self._at_start = True  # an opening tag counts only before any answer text
        self._after_close = False  # drop the newlines models put between the reasoning and the answer

    def feed(self, text: str) -> tuple[str, str]:
        """Take the next piece; return the (answer, reasoning) text that is certain so far."""
        if not (self._inside or self._at_start or self._after_close or self._pending) and "<" not in text:
            return text, ""  # the common case, once the answer has begun: no tag can start in this piece
        buffer = self._pending + text
        answer: list[str] = []
        reasoning: list[str] = []
        while buffer:
            if self._inside:
                at = buffer.find(CLOSE)
                if at >= 0:
                    reasoning.append(buffer[:at])
                    buffer = buffer[at + len(CLOSE) :]
                    self._inside = False
                    self._at_start = False
                    self._after_close = True
                    continue
                keep = _partial_suffix(buffer, CLOSE)
                reasoning.append(buffer[: len(buffer) - keep])
                buffer = buffer[len(buffer) - keep :]
                break
            if self._at_start:
                stripped = buffer.lstrip()
                if stripped.startswith(OPEN):
                    buffer = stripped[len(OPEN) :]
                    self._inside = True
                    continue
                if OPEN.startswith(stripped):
                    break  # could still become "<think>": wait for more
                self._at_start = False
            if self._after_close:
                buffer = buffer.lstrip("\n")
                if not buffer:
                    break
                self._after_close = False
            # A stray closing tag in the answer (the opening one was implicit and we were not told): drop the tag,
            # keep the text.
            at = buffer.find(CLOSE)
            if at >= 0:
                answer.append(buffer[:at])
                buffer = buffer[at + len(CLOSE) :]
                continue
            keep = _partial_suffix(buffer, CLOSE)
            answer.append(buffer[: len(buffer) - keep])
            buffer = buffer[len(buffer) - keep :]
            break
        self._pending = buffer
        return "".join(answer), "".join(reasoning)

    def flush(self) -> tuple[str, str]:
        """The held-back text at the end of the stream."""
        rest, self._pending = self._pending, ""
        return ("", rest) if self._inside else (rest, "")


_THINK_BLOCK = re.compile(r"^\s*(?:<think>)?.*?</think>\s*|<think>.*?(?:</think>\s*|$)", re.DOTALL)


def strip_reasoning(text: str) -> str:
    """An assistant message without its reasoning, for sending a conversation back upstream
    (deepseek answers HTTP 400 to a request that carries reasoning back)."""
    return _THINK_BLOCK.sub("", text, count=1) if "</think>" in text or "<think>" in text else text
