"""The one place that picks the chat model from settings; each backend is imported only when chosen."""

from __future__ import annotations

from config import Settings
from llm.types import ChatModel


async def build_chat_model(settings: Settings) -> ChatModel:
    match settings.resolved_llm_provider:
        case "openai":
            from llm.openai_client import OpenAIChatModel, make_async_client

            return OpenAIChatModel(
                make_async_client(settings),
                settings.openai_model,
                settings.llm_max_tokens,
                settings.llm_temperature,
                think_starts_inside=settings.reasoning_starts_inside,
            )
        case "local":
            from llm.local import LocalChatModel

            return await LocalChatModel.load(
                settings.local_model_path,
                settings.local_context_tokens,
                settings.local_threads,
                settings.llm_max_tokens,
                settings.llm_temperature,
                settings.local_key_cache_type,
                settings.local_keep_alive_seconds,
            )
