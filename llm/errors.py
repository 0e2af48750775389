"""Errors a chat model raises. `api/errors.py` maps each to an HTTP status before a stream starts,
and to a final error event after it has started."""

from __future__ import annotations


class LLMError(Exception):
    """Base of every chat-model failure."""

    error_type = "upstream_error"


class UpstreamRateLimited(LLMError):
    """The provider answered 429; `retry_after` is its hint in seconds, when it gave one."""

    error_type = "upstream_rate_limited"

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UpstreamTimeout(LLMError):
    error_type = "upstream_timeout"


class UpstreamUnavailable(LLMError):
    """The provider could not be reached, or answered with an error status other than 429."""

    error_type = "upstream_unavailable"


class UpstreamProtocolError(LLMError):
    """The provider's stream broke off or carried something we could not parse."""

    error_type = "upstream_protocol_error"


class PromptTooLong(LLMError):
    """The conversation (with the retrieved context) does not fit the model's context window: the client can shorten
    it, so this is the client's error, as OpenAI's `context_length_exceeded` is."""

    error_type = "context_length_exceeded"
    ADVICE = "shorten the conversation, or lower HISTORY_TOKEN_BUDGET or top_k"  # ends every such message


class ModelUnavailable(LLMError):
    """The local model could not be loaded."""

    error_type = "model_unavailable"


class ModelNotFound(LLMError):
    """The request names a model that no configured upstream serves."""

    error_type = "model_not_found"
