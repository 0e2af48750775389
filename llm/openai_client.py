"""The OpenAI-compatible chat model: OpenAI itself, DeepSeek, vLLM, Ollama, llama.cpp's server...

The `openai` SDK does the HTTP and the retries (with backoff, on 429, 5xx and connection errors); since it
retries only until the response headers arrive, a retry can never repeat tokens a client already has. This
module maps the SDK's errors onto ours and turns chunks into `Delta`s, reasoning included.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import openai

from config import Settings
from llm.errors import LLMError, UpstreamProtocolError, UpstreamRateLimited, UpstreamTimeout, UpstreamUnavailable
from llm.reasoning import ThinkTagSplitter, starts_inside_think
from llm.types import Delta, GenerationOptions, Message, Usage

logger = logging.getLogger(__name__)


def make_async_client(settings: Settings) -> openai.AsyncOpenAI:
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
    return openai.AsyncOpenAI(
        # Local servers (vLLM, Ollama) take any key, but the SDK refuses to start without one.
        api_key=key or "no-key",
        base_url=settings.openai_base_url,
        timeout=openai.Timeout(settings.openai_timeout, connect=settings.openai_connect_timeout),
        max_retries=settings.openai_max_retries,
    )


def _retry_after(exc: openai.APIStatusError) -> float | None:
    value = exc.response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def map_error(exc: openai.OpenAIError) -> LLMError:
    """The SDK's exception as one of ours, with a message safe to show a client (no upstream body)."""
    match exc:
        case openai.RateLimitError():
            return UpstreamRateLimited("the model provider is rate limiting requests", _retry_after(exc))
        case openai.APITimeoutError():
            return UpstreamTimeout("the model provider did not answer in time")
        case openai.APIConnectionError():
            return UpstreamUnavailable("the model provider could not be reached")
        case openai.APIStatusError():
            return UpstreamUnavailable(f"the model provider answered with status {exc.status_code}")
        case _:
            return UpstreamProtocolError("the model provider sent a response that could not be read")


def _reasoning_of(delta: Any) -> str:
    # DeepSeek names it `reasoning_content`, vLLM `reasoning`; neither is in the SDK's schema, so both arrive as
    # extra attributes.
    for name in ("reasoning_content", "reasoning"):
        value = getattr(delta, name, None)
        if isinstance(value, str) and value:
            return value
    return ""


class OpenAIChatModel:
    provider = "openai"

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        model: str,
        max_tokens: int,
        temperature: float | None,
        think_starts_inside: bool | None = None,
    ) -> None:
        self._client = client
        self.model = model
        self._max_tokens = max_tokens
        self._temperature = temperature
        self._think_starts_inside = think_starts_inside  # None: guess from the model's name

    def _request_args(self, messages: list[Message], options: GenerationOptions) -> dict[str, Any]:
        args: dict[str, Any] = {
            "model": options.model or self.model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": options.max_tokens or self._max_tokens,
        }
        temperature = options.temperature if options.temperature is not None else self._temperature
        if temperature is not None:
            args["temperature"] = temperature
        if options.stop:
            args["stop"] = list(options.stop)
        return args

    async def stream(self, messages: list[Message], options: GenerationOptions) -> AsyncIterator[Delta]:
        try:
            response = await self._client.chat.completions.create(**self._request_args(messages, options))
        except openai.OpenAIError as exc:
            raise map_error(exc) from exc
        finished = False
        # Reasoning written inline as <think>...</think> is split off the answer; a separate reasoning field wins.
        inside = self._think_starts_inside
        splitter = ThinkTagSplitter(starts_inside_think(options.model or self.model) if inside is None else inside)
        try:
            async for chunk in response:
                usage = None
                if chunk.usage is not None:
                    usage = Usage(chunk.usage.prompt_tokens or 0, chunk.usage.completion_tokens or 0)
                    finished = True  # the usage chunk comes after the finish reason
                if not chunk.choices:
                    if usage is not None:
                        yield Delta(usage=usage)
                    continue
                choice = chunk.choices[0]
                finished = finished or choice.finish_reason is not None
                content, inline_reasoning = splitter.feed(choice.delta.content or "" if choice.delta else "")
                if choice.finish_reason is not None:
                    rest, rest_reasoning = splitter.flush()
                    content, inline_reasoning = content + rest, inline_reasoning + rest_reasoning
                reasoning = (_reasoning_of(choice.delta) if choice.delta else "") + inline_reasoning
                yield Delta(content=content, reasoning=reasoning, usage=usage, finish_reason=choice.finish_reason)
        except openai.OpenAIError as exc:
            raise map_error(exc) from exc
        except ValueError as exc:  # a chunk that is not JSON
            raise UpstreamProtocolError("the model provider sent a chunk that could not be read") from exc
        finally:
            # Closing the response closes the connection: the upstream stops generating (and billing).
            await response.close()
        if not finished:
            raise UpstreamProtocolError("the model provider's stream ended before the answer was complete")

    async def aclose(self) -> None:
        await self._client.close()
