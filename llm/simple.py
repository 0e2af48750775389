"""A user's own streaming model, written after the original service's README: a class with
`async def stream_response(messages, context)` yielding text. Adapted here to the `ChatModel` protocol.

`messages` are the conversation as plain dicts (`{"role", "content"}`), without the system prompt; `context` is the
system prompt the pipeline built: the instructions and the retrieved passages, numbered for citation. A synchronous
generator works too (each step runs in a worker thread). Closing the answer closes the user's generator, so a
client that leaves stops it as it stops the built-in models.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from typing import Any

import anyio

from llm.plugins import close_plugin
from llm.types import Delta, GenerationOptions, Message

_END = object()


class SimpleChatModel:
    provider = "plugin"

    def __init__(self, impl: Any) -> None:
        self._impl = impl
        kind = type(impl)
        self.model = str(getattr(impl, "model", None) or getattr(impl, "model_name", None) or kind.__qualname__)

    async def stream(self, messages: list[Message], options: GenerationOptions) -> AsyncIterator[Delta]:
        context = "\n\n".join(m.content for m in messages if m.role == "system")
        conversation = [{"role": m.role, "content": m.content} for m in messages if m.role != "system"]
        pieces = self._impl.stream_response(conversation, context)
        try:
            if inspect.isasyncgen(pieces) or hasattr(pieces, "__aiter__"):
                async for piece in pieces:
                    if piece:
                        yield Delta(content=str(piece))
            else:
                steps = iter(pieces)
                while (piece := await anyio.to_thread.run_sync(next, steps, _END)) is not _END:
                    if piece:
                        yield Delta(content=str(piece))
        finally:
            await close_plugin(pieces)  # a client that left stops the user's generator too
        yield Delta(finish_reason="stop")

    async def aclose(self) -> None:
        await close_plugin(self._impl)
