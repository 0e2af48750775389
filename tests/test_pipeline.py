"""The chat pipeline with the real embedder, store and conversation store, and a scripted chat model."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm.errors import UpstreamRateLimited, UpstreamUnavailable
from llm.types import Delta, Message, Usage
from rag.chats.sqlite import ChatForbidden, ChatOwner, ConversationStore
from rag.embedders.local import SentenceTransformerEmbedder
from rag.errors import InvalidRequest
from rag.ingest.indexer import Indexer
from rag.pipeline import ChatPipeline, ChatRef, ChatRequest
from rag.retriever import Retriever
from rag.stores.numpy_store import NumpyVectorStore
from rag.types import DoneEvent, ErrorEvent, ReasoningEvent, SourcesEvent, TokenEvent, UsageEvent
from tests.fakes import ScriptedChatModel

DELTAS = [
    Delta(reasoning="thinking"),
    Delta(content="Sardines"),
    Delta(content=".", finish_reason="stop"),
    Delta(usage=Usage(10, 2)),
]


@pytest.fixture
async def parts(tmp_path: Path, embedder: SentenceTransformerEmbedder) -> tuple[Retriever, ConversationStore]:
    store = await NumpyVectorStore.open(tmp_path / "store", embedder.model_name, embedder.dimension)
    await Indexer(embedder, store, 1000, 100).add(
        ["The lighthouse keeper feeds his cat sardines.", "Paris has many museums.", "Tokyo has many trains."],
        [{"orgId": "a"}, {"orgId": "a"}, {"orgId": "b"}],
        ["cat", "paris", "tokyo"],
    )
    conversations = await ConversationStore.open(tmp_path / "chats.sqlite3")
    return Retriever(embedder, store, 3, 0.25), conversations


def ask(text: str, **kwargs: object) -> ChatRequest:
    return ChatRequest(messages=[Message("user", text)], **kwargs)  # type: ignore[arg-type]


async def events_of(pipeline: ChatPipeline, request: ChatRequest) -> list:
    stream = await pipeline.start(request)
    return [event async for event in stream.events()]


async def test_events_in_order(parts) -> None:
    retriever, _ = parts
    events = await events_of(ChatPipeline(retriever, ScriptedChatModel(DELTAS)), ask("What does the cat eat?"))
    assert isinstance(events[0], SourcesEvent)
    assert events[0].hits[0].chunk.document_id == "cat"
    assert events[1:] == [
        ReasoningEvent("thinking"),
        TokenEvent("Sardines"),
        TokenEvent("."),
        UsageEvent(Usage(10, 2)),
        DoneEvent("stop"),
    ]


async def test_reasoning_can_be_hidden(parts) -> None:
    retriever, _ = parts
    pipeline = ChatPipeline(retriever, ScriptedChatModel(DELTAS), show_reasoning=False)
    events = await events_of(pipeline, ask("What does the cat eat?"))
    assert not any(isinstance(e, ReasoningEvent) for e in events)


async def test_failure_before_first_delta_raises(parts) -> None:
    retriever, _ = parts
    model = ScriptedChatModel(DELTAS, fail_with=UpstreamRateLimited("slow down", 3), fail_after=0)
    with pytest.raises(UpstreamRateLimited):
        await ChatPipeline(retriever, model).start(ask("cat?"))


async def test_failure_after_start_is_one_error_event_then_done(parts) -> None:
    retriever, _ = parts
    model = ScriptedChatModel(DELTAS, fail_with=UpstreamUnavailable("gone"), fail_after=2)
    events = await events_of(ChatPipeline(retriever, model), ask("cat?"))
    assert events[-2:] == [ErrorEvent("upstream_unavailable", "gone"), DoneEvent("error")]
    assert [e.text for e in events if isinstance(e, TokenEvent)] == ["Sardines"]


async def test_closing_early_closes_the_model_stream(parts) -> None:
    retriever, _ = parts
    model = ScriptedChatModel(DELTAS)
    stream = await ChatPipeline(retriever, model).start(ask("cat?"))
    events = stream.events()
    await anext(events)
    await anext(events)
    await events.aclose()
    assert model.closed_early == 1


async def test_org_scope_cannot_be_widened_by_filters(parts) -> None:
    retriever, _ = parts
    pipeline = ChatPipeline(retriever, ScriptedChatModel(DELTAS))
    stream = await pipeline.start(ask("Which city has trains?", org_id="a", filters={"orgId": "b"}))
    assert stream.hits
    assert {hit.chunk.metadata["orgId"] for hit in stream.hits} == {"a"}


async def test_conversation_is_stored_and_reused(parts) -> None:
    retriever, conversations = parts
    model = ScriptedChatModel(DELTAS)
    pipeline = ChatPipeline(retriever, model, conversations=conversations)
    chat = ChatRef("c1", ChatOwner("u1", "a"), "Cats")
    await events_of(pipeline, ask("What does the cat eat?", chat=chat))
    _, stored = await conversations.get("c1", ChatOwner("u1"))
    assert [(m.role, m.content) for m in stored] == [("user", "What does the cat eat?"), ("assistant", "Sardines.")]

    await events_of(pipeline, ask("And what about its owner?", chat=chat))
    prompt = model.prompts[-1]
    assert [m.role for m in prompt] == ["system", "user", "assistant", "user"]
    assert prompt[2].content == "Sardines."  # the answer, never the reasoning
    _, stored = await conversations.get("c1", ChatOwner("u1"))
    assert len(stored) == 4


async def test_failed_answer_is_not_stored(parts) -> None:
    retriever, conversations = parts
    model = ScriptedChatModel(DELTAS, fail_with=UpstreamUnavailable("gone"), fail_after=2)
    pipeline = ChatPipeline(retriever, model, conversations=conversations)
    await events_of(pipeline, ask("cat?", chat=ChatRef("c2", ChatOwner("u1"))))
    assert await conversations.list_chats(ChatOwner("u1")) == []


async def test_another_users_chat_is_refused(parts) -> None:
    retriever, conversations = parts
    pipeline = ChatPipeline(retriever, ScriptedChatModel(DELTAS), conversations=conversations)
    await events_of(pipeline, ask("cat?", chat=ChatRef("c3", ChatOwner("owner"))))
    with pytest.raises(ChatForbidden):
        await pipeline.start(ask("cat?", chat=ChatRef("c3", ChatOwner("intruder"))))


async def test_follow_up_retrieves_with_the_conversation(parts) -> None:
    retriever, _ = parts
    pipeline = ChatPipeline(retriever, ScriptedChatModel(DELTAS))
    conversation = [
        Message("user", "What does the lighthouse keeper feed his cat?"),
        Message("assistant", "Sardines."),
        Message("user", "and why?"),
    ]
    stream = await pipeline.start(ChatRequest(messages=conversation))
    assert stream.hits[0].chunk.document_id == "cat"


async def test_empty_question_is_refused(parts) -> None:
    retriever, _ = parts
    with pytest.raises(InvalidRequest):
        await ChatPipeline(retriever, ScriptedChatModel(DELTAS)).start(ask("   "))


async def test_llm_rewriter_makes_follow_ups_standalone() -> None:
    from rag.history import QueryRewriter

    model = ScriptedChatModel([Delta(content="What is the weather "), Delta(content="in Paris?", finish_reason="stop")])
    rewrite = QueryRewriter(model)
    conversation = [
        Message("user", "What is the weather in London?"),
        Message("assistant", "Rainy."),
        Message("user", "and Paris?"),
    ]
    assert await rewrite(conversation) == "What is the weather in Paris?"
    assert "and Paris?" in model.prompts[0][-1].content  # the transcript went to the model
    # A first question needs no rewrite, and no model call.
    assert await rewrite([Message("user", "Hello there")]) == "Hello there"
    assert len(model.prompts) == 1


async def test_llm_rewriter_falls_back_to_the_rule_when_the_model_fails() -> None:
    from rag.history import QueryRewriter

    model = ScriptedChatModel(DELTAS, fail_with=UpstreamUnavailable("down"), fail_after=0)
    conversation = [
        Message("user", "Weather in London?"),
        Message("assistant", "Rainy."),
        Message("user", "and Paris?"),
    ]
    assert await QueryRewriter(model)(conversation) == "Weather in London? and Paris?"


def test_the_prompt_names_each_passage_with_its_file_and_page() -> None:
    from rag.prompt import format_context
    from rag.types import Chunk, Hit

    hits = [
        Hit(Chunk("r:1", "r", "Ferry passengers in 2025.", {"filename": "report.pdf", "page": 2}), 0.9),
        Hit(Chunk("m:0", "m", "Timetable memo.", {"filename": "memo.docx"}), 0.8),
        Hit(Chunk("x:0", "x", "No metadata at all.", {"page": True}), 0.7),
    ]
    context = format_context(hits)
    assert "[1] (source: report.pdf, p. 2)\nFerry passengers in 2025." in context
    assert "[2] (source: memo.docx)\nTimetable memo." in context
    assert "[3] (source: x)\n" in context  # a page that is not a number is not a page
