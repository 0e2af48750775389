"""Request limits from the settings; every transport checks through these, so every limit names itself the same way."""

from __future__ import annotations

from config import Settings
from llm.types import Message
from rag.errors import InvalidRequest


def check_conversation(settings: Settings, messages: list[Message], top_k: int | None) -> None:
    if len(messages) > settings.max_messages:
        raise InvalidRequest(
            f"at most {settings.max_messages} messages per request (MAX_MESSAGES), got {len(messages)}"
        )
    for n, message in enumerate(messages):
        if len(message.content) > settings.max_message_chars:
            raise InvalidRequest(
                f"message {n} has {len(message.content)} characters; the limit is {settings.max_message_chars} "
                "(MAX_MESSAGE_CHARS)"
            )
    check_top_k(settings, top_k)


def check_top_k(settings: Settings, top_k: int | None) -> None:
    if top_k is not None and top_k > settings.max_top_k:
        raise InvalidRequest(f"top_k must be at most {settings.max_top_k} (MAX_TOP_K)")


def check_documents(settings: Settings, documents: list[str]) -> None:
    if len(documents) > settings.max_documents_per_add:
        raise InvalidRequest(
            f"at most {settings.max_documents_per_add} documents per request (MAX_DOCUMENTS_PER_ADD), "
            f"got {len(documents)}"
        )
    for n, text in enumerate(documents):
        if len(text) > settings.max_document_chars:
            raise InvalidRequest(
                f"document {n} has {len(text)} characters; the limit is {settings.max_document_chars} "
                "(MAX_DOCUMENT_CHARS)"
            )
