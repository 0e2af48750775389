"""Several chat upstreams behind the one `ChatModel` protocol: routing, failover before the first token, cool-down.

Teams that self-host run several inference servers (vLLM, llama.cpp's server, Ollama) or several providers. The
router trackers of LiteLLM, vLLM's production stack and Envoy AI Gateway show what goes wrong in front of them:
fallback that never triggers on a cut stream, a truncated stream reported as complete, another model's text spliced
into an answer, health probes multiplied by every replica. So, here:
- **Routing.** Among the healthy upstreams that serve the requested model, the one with the fewest answers in flight
  for its weight; ties broken at random by weight. With a route key (the chat id, `LLM_AFFINITY=chat`), the same key
  goes to the same upstream while it is healthy (weighted rendezvous hashing), which keeps a server's prefix cache
  warm; when it is not, the key moves to the next in its own order.
- **Failover only before the first token.** A refused connection, an error status (5xx, 429, any other refusal
  but a prompt too long for the model, which is the client's), a stream that breaks off, or no token within
  `first_token_timeout` sends the same request to the next upstream. Nothing reaches the caller before the first
  token, so the client sees one clean answer. After it, a failure is raised as it is (the pipeline turns it into one
  final error event): never another model's text spliced in, never a cut stream that looks complete.
- **Cool-down, without probes.** An upstream that fails `failure_threshold` times in a row (or answers 429 with a
  Retry-After) is left alone for `cooldown_seconds` (or the Retry-After), then given one trial request: success
  makes it healthy, failure cools it down again. No background probe costs a paid call.
Each upstream is an `OpenAIChatModel` with retries off: trying the next upstream is the retry.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace

from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from llm.errors import LLMError, ModelNotFound, PromptTooLong, UpstreamRateLimited, UpstreamTimeout, UpstreamUnavailable
from llm.tracing import tracer
from llm.types import ChatModel, Delta, GenerationOptions, Message

# What makes the next upstream worth trying. A prompt too long for the model would be too long for the next one too.
_FAILOVER = (LLMError, TimeoutError)


@dataclass
class Upstream:
    """One server (or provider account) and what the router knows of it."""

    name: str
    model_name: str
    chat: ChatModel
    weight: float = 1.0
    in_flight: int = 0
    consecutive_failures: int = 0
    failures: int = 0
    answers: int = 0
    cooling_until: float = 0.0
    trial_running: bool = False

    def state(self, now: float) -> str:
        if self.cooling_until > now:
            return "cooling"
        if self.trial_running:
            return "trial"
        return "healthy" if self.consecutive_failures == 0 else "degraded"

    def available(self, now: float) -> bool:
        return self.cooling_until <= now and not self.trial_running

    def as_dict(self, now: float) -> dict[str, object]:
        return {
            "name": self.name,
            "model": self.model_name,
            "state": self.state(now),
            "in_flight": self.in_flight,
            "answers": self.answers,
            "failures": self.failures,
            "consecutive_failures": self.consecutive_failures,
            "cooldown_seconds": round(max(0.0, self.cooling_until - now), 1),
        }


class UpstreamRouter:
    provider = "openai"

    def __init__(
        self,
        upstreams: Sequence[Upstream],
        *,
        first_token_timeout: float = 30.0,
        failure_threshold: int = 3,
        cooldown_seconds: float = 30.0,
        affinity: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        if not upstreams:
            raise ValueError("at least one upstream")
        self.upstreams = list(upstreams)
        self.model = self.upstreams[0].model_name  # the default model: the first upstream's
        self.first_token_timeout = first_token_timeout
        self.failure_threshold = failure_threshold
        self.cooldown_seconds = cooldown_seconds
        self.affinity = affinity
        self._rng = rng or random.Random()

    @property
    def models(self) -> list[str]:
        """The models the upstreams serve, the default first."""
        return list(dict.fromkeys(u.model_name for u in self.upstreams))

    def states(self) -> list[dict[str, object]]:
        now = time.monotonic()
        return [u.as_dict(now) for u in self.upstreams]

    # --- choosing -------------------------------------------------------------------------------------------

    def order(self, model: str, route_key: str | None) -> list[Upstream]:
        """The upstreams to try for `model`, in order; those cooling down are left out."""
        serving = [u for u in self.upstreams if u.model_name == model]
        if not serving:
            raise ModelNotFound(f"no upstream serves the model {model!r}; served: {', '.join(self.models)}")
        now = time.monotonic()
        ready = [u for u in serving if u.available(now)]
        if self.affinity and route_key is not None:
            return sorted(ready, key=lambda u: _rendezvous(route_key, u), reverse=True)
        # Fewest answers in flight for the weight first; among equals, a weighted random draw (Efraimidis-Spirakis).
        return sorted(ready, key=lambda u: (u.in_flight / u.weight, -(self._rng.random() ** (1 / u.weight))))

    # --- streaming ----------------------------------------------------------------------------------------

    async def stream(self, messages: list[Message], options: GenerationOptions) -> AsyncIterator[Delta]:
        model = options.model or self.model
        candidates = self.order(model, options.route_key)
        upstream_options = replace(options, model=None)  # each upstream sends its own model name
        last_error: BaseException | None = None
        for upstream in candidates:
            if not upstream.available(time.monotonic()):  # another answer's failure cooled it meanwhile
                continue
            opened = await self._open(upstream, messages, upstream_options)
            if isinstance(opened, BaseException):
                last_error = opened
                continue
            deltas, buffered = opened
            async for delta in self._relay(upstream, deltas, buffered):
                yield delta
            return
        if isinstance(last_error, TimeoutError):
            raise UpstreamTimeout("no upstream sent a first token in time (LLM_FIRST_TOKEN_TIMEOUT)")
        # No candidate at all, or each cooled down by another answer before its turn: all are cooling down.
        raise last_error or UpstreamUnavailable(f"every upstream serving {model!r} is cooling down after failures")

    async def _open(
        self, upstream: Upstream, messages: list[Message], options: GenerationOptions
    ) -> tuple[AsyncIterator[Delta], list[Delta]] | BaseException:
        """Start `upstream`'s answer and read it up to its first token: the stream and what came before it, or
        the failure that sends the request to the next upstream."""
        trial = upstream.cooling_until > 0 and upstream.consecutive_failures > 0
        upstream.trial_running = trial
        upstream.in_flight += 1
        deltas = upstream.chat.stream(messages, options)
        buffered: list[Delta] = []
        # One span per attempt, up to its first token; a failed one says why the next upstream was tried.
        span = tracer.start_span(
            "llm.upstream",
            kind=SpanKind.CLIENT,
            attributes={"llm.upstream": upstream.name, "llm.model": upstream.model_name, "llm.trial": trial},
        )
        try:
            with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
                async with asyncio.timeout(self.first_token_timeout):
                    async for delta in deltas:
                        buffered.append(delta)
                        if delta.content or delta.reasoning or delta.finish_reason is not None:
                            break
        except PromptTooLong:
            await self._close(upstream, deltas)
            raise
        except _FAILOVER as exc:
            await self._close(upstream, deltas)
            self._failed(upstream, exc)
            reason = exc.error_type if isinstance(exc, LLMError) else "first_token_timeout"
            span.set_attribute("llm.failover_reason", reason)
            span.set_status(StatusCode.ERROR, reason)
            return exc
        except BaseException:
            await self._close(upstream, deltas)
            raise
        finally:
            span.end()
        # A first token: the upstream answers. Healthy again, whatever its past.
        upstream.trial_running = False
        upstream.consecutive_failures = 0
        upstream.cooling_until = 0.0
        return deltas, buffered

    async def _relay(
        self, upstream: Upstream, deltas: AsyncIterator[Delta], buffered: list[Delta]
    ) -> AsyncIterator[Delta]:
        """The committed answer: what was read before the first token, then the rest. A failure now is raised to
        the caller, who ends the answer with an error event; it still counts against this upstream."""
        try:
            for delta in buffered:
                yield delta
            async for delta in deltas:
                yield delta
        except LLMError as exc:
            self._failed(upstream, exc)
            raise
        else:
            upstream.answers += 1
        finally:
            await self._close(upstream, deltas)

    async def _close(self, upstream: Upstream, deltas: AsyncIterator[Delta]) -> None:
        upstream.in_flight -= 1
        upstream.trial_running = False
        await deltas.aclose()  # type: ignore[attr-defined]

    def _failed(self, upstream: Upstream, exc: BaseException) -> None:
        upstream.failures += 1
        upstream.consecutive_failures += 1
        now = time.monotonic()
        retry_after = exc.retry_after if isinstance(exc, UpstreamRateLimited) else None
        if retry_after:
            upstream.cooling_until = max(upstream.cooling_until, now + retry_after)
        elif upstream.consecutive_failures >= self.failure_threshold:
            upstream.cooling_until = now + self.cooldown_seconds

    async def aclose(self) -> None:
        for upstream in self.upstreams:
            await upstream.chat.aclose()


def _rendezvous(key: str, upstream: Upstream) -> float:
    """Weighted rendezvous hashing: each key ranks every upstream in an order of its own, stable while the set is."""
    digest = hashlib.blake2b(f"{key}\0{upstream.name}".encode(), digest_size=8).digest()
    unit = (int.from_bytes(digest, "big") + 1) / (2**64 + 1)  # in (0, 1)
    return -upstream.weight / math.log(unit)
