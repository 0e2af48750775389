"""Fakes of external parts for unit tests of our own code: a scripted chat model (no network, no weights)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from llm.errors import LLMError
from llm.types import Delta, GenerationOptions, Message


@dataclass
class ScriptedChatModel:
    """Yields the scripted deltas; raises `fail_with` after `fail_after` deltas; records every prompt."""

    deltas: list[Delta] = field(default_factory=lambda: [Delta(content="Hi"), Delta(content="!", finish_reason="stop")])
    fail_with: LLMError | None = None
    fail_after: int = 0
    provider: str = "scripted"
    model: str = "scripted-1"
    prompts: list[list[Message]] = field(default_factory=list)
    closed_early: int = 0

    async def stream(self, messages: list[Message], options: GenerationOptions) -> AsyncIterator[Delta]:
        self.prompts.append(messages)
        finished = False
        try:
            for n, delta in enumerate(self.deltas):
                if self.fail_with is not None and n == self.fail_after:
                    raise self.fail_with
                yield delta
            finished = True
        finally:
            if not finished:
                self.closed_early += 1

    async def aclose(self) -> None:
        pass
