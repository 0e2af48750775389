"""Request bodies of the OpenAI-compatible API, as lenient as OpenAI's own: unknown fields are ignored, the fields we
use are checked."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.schemas import JsonObject
from llm.types import GenerationOptions, Message


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    text: str | None = None


class OpenAIMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content if part.type == "text")

    def to_message(self) -> Message | None:
        """Our message, or None for turns a RAG answer does not use (tool results)."""
        match self.role:
            case "system" | "developer":
                return Message("system", self.text())
            case "user" | "assistant":
                return Message(self.role, self.text())
            case _:
                return None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ChatCompletionBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, description="A model from GET /v1/models (the OpenAI provider passes it on).")
    messages: list[OpenAIMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=1, description="Only one choice is generated.")
    # Retrieval options of ours; standard clients send them through `extra_body`.
    top_k: int | None = Field(None, ge=1)
    filters: JsonObject | None = None
    user: str | None = None
    userId: str | None = Field(None, min_length=1, max_length=256, description="The user; required with chatId.")
    orgId: str | None = Field(
        None, min_length=1, max_length=256, description="Only this organisation's documents are retrieved."
    )
    chatId: str | None = Field(None, min_length=1, max_length=256, description="Store this turn in that chat.")
    chatTitle: str | None = Field(None, max_length=500, description="Title for a new chat.")

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    def options(self, served_model: str, passes_model: bool) -> GenerationOptions:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return GenerationOptions(
            max_tokens=self.max_completion_tokens or self.max_tokens,
            temperature=self.temperature,
            stop=stop,
            model=self.model if passes_model and self.model != served_model else None,
        )


class EmbeddingsBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input: str | list[str] = Field(description="A text or a list of texts (token arrays are not supported).")
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"

    @field_validator("input")
    @classmethod
    def _not_empty(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("input must not be empty")
        texts = [value] if isinstance(value, str) else value
        if any(not text for text in texts):
            raise ValueError("input texts must not be empty strings")
        return value
