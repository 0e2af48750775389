"""The one place that picks the chat model from settings; each backend is imported only when chosen."""

from __future__ import annotations

from urllib.parse import urlsplit

from config import Settings
from llm.types import ChatModel


async def build_chat_model(settings: Settings) -> ChatModel:
    match settings.resolved_llm_provider:
        case "openai" if settings.llm_upstreams:
            return build_router(settings)
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
        case spec:
            return await build_plugin(settings, spec)


async def build_plugin(settings: Settings, spec: str) -> ChatModel:
    """A chat model of the user's: one with `stream(messages, options)` and `aclose()` as ours, or one written after
    the original service's README, with `async def stream_response(messages, context)` yielding text."""
    from llm.plugins import construct, load_class, require

    cls = load_class("LLM_PROVIDER", spec)
    if callable(getattr(cls, "stream_response", None)) and not callable(getattr(cls, "stream", None)):
        from llm.simple import SimpleChatModel

        return SimpleChatModel(await construct("LLM_PROVIDER", cls, settings.llm_options))
    require(
        "LLM_PROVIDER",
        cls,
        ("stream", "aclose"),
        ("provider", "model"),
        "a chat model has stream_response(messages, context), or stream(messages, options), aclose, provider, model",
    )
    model: ChatModel = await construct("LLM_PROVIDER", cls, settings.llm_options)
    return model


def build_router(settings: Settings) -> ChatModel:
    """LLM_UPSTREAMS as one model: each upstream an OpenAI-compatible client with retries off (the router's
    failover to the next upstream is the retry), named by its host where the settings give no name."""
    from llm.openai_client import OpenAIChatModel, make_async_client
    from llm.router import Upstream, UpstreamRouter

    upstreams: list[Upstream] = []
    taken: set[str] = set()
    for n, spec in enumerate(settings.llm_upstreams):
        name = spec.name or urlsplit(spec.base_url).netloc or f"upstream-{n}"
        if name in taken:
            name = f"{name}#{n}"
        taken.add(name)
        model = spec.model or settings.openai_model
        client = make_async_client(settings, base_url=spec.base_url, api_key=spec.api_key, max_retries=0)
        chat = OpenAIChatModel(
            client, model, settings.llm_max_tokens, settings.llm_temperature, settings.reasoning_starts_inside
        )
        upstreams.append(Upstream(name, model, chat, spec.weight))
    return UpstreamRouter(
        upstreams,
        first_token_timeout=settings.llm_first_token_timeout,
        failure_threshold=settings.llm_failure_threshold,
        cooldown_seconds=settings.llm_cooldown_seconds,
        affinity=settings.llm_affinity == "chat",
    )
