"""A streaming model of your own, the simple way: `async def stream_response(messages, context)` yielding text.
No import from the service is needed; it adapts the class itself.

    LLM_PROVIDER=examples.plugins.extractive_model:ExtractiveModel

`messages` is the conversation (`{"role", "content"}` dicts); `context` is the prompt the service built: its
instructions and the retrieved passages, numbered `[1]`, `[2]`, ... This one answers with the first sentence of the
best passage, word by word; call your own model instead.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

PASSAGE = re.compile(r"^\[1\][^\n]*\n(.+?)(?:\n\[2\]|\Z)", re.S | re.M)


class ExtractiveModel:
    model = "extractive-1"

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay

    async def stream_response(self, messages: list[dict[str, str]], context: str) -> AsyncIterator[str]:
        found = PASSAGE.search(context)
        if found is None:
            answer = "The documents do not say."
        else:
            answer = re.split(r"(?<=[.!?])\s", found.group(1).strip(), maxsplit=1)[0] + " [1]"
        for word in answer.split(" "):
            await asyncio.sleep(self.delay)
            yield word + " "
