"""The chat-model protocol and the values that cross it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class GenerationOptions:
    """Per-request knobs; None means the model's own default."""

    max_tokens: int | None = None
    temperature: float | None = None
    stop: tuple[str, ...] = ()
    model: str | None = None  # another model of the same provider, where it serves several
    route_key: str | None = None  # answers with the same key go to the same upstream while it is healthy (a chat id)


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(frozen=True, slots=True)
class Delta:
    """One piece of a streamed answer: answer text, reasoning text, or the final usage/finish reason."""

    content: str = ""
    reasoning: str = ""
    usage: Usage | None = None
    finish_reason: str | None = None


class ChatModel(Protocol):
    """A model that streams an answer to a conversation.

    `stream` is an async generator: closing it (``aclose()``, or cancelling the task iterating it) must stop
    the generation, so that nobody keeps paying for tokens a client no longer reads.
    """

    provider: str
    model: str

    def stream(self, messages: list[Message], options: GenerationOptions) -> AsyncIterator[Delta]: ...

    async def aclose(self) -> None: ...
