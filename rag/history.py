"""Conversation handling before retrieval: fit the history into a token budget, and turn a follow-up question
("and what about Paris?") into a standalone query for retrieval.

Token counts are estimated (4 characters a token), which is close enough for English prose and needs no tokenizer.
The default condenser is a rule and costs no LLM call; `QueryRewriter` asks the chat model instead.
"""

from __future__ import annotations

import re

from llm.types import ChatModel, GenerationOptions, Message

_FOLLOW_UP_START = re.compile(
    r"^\s*(and|but|also|so|what about|how about|why|how come|what else|then|or|same|more)\b", re.IGNORECASE
)
_REFERENCE = re.compile(r"\b(it|its|they|them|their|this|that|these|those|he|she|him|her|there)\b", re.IGNORECASE)
SHORT_QUESTION_WORDS = 6


def estimate_tokens(text: str) -> int:
    return len(text) // 4 + 1


def fit_history(messages: list[Message], budget_tokens: int) -> list[Message]:
    """Drop the oldest user/assistant turns until the conversation fits; system messages and the last message stay."""
    if not messages:
        return []
    *earlier, last = messages
    system = [m for m in earlier if m.role == "system"]
    turns = [m for m in earlier if m.role != "system"]
    used = sum(estimate_tokens(m.content) for m in [*system, last])
    kept: list[Message] = []
    for message in reversed(turns):
        used += estimate_tokens(message.content)
        if used > budget_tokens:
            break
        kept.append(message)
    kept.reverse()
    # Never start the kept history with an assistant turn whose question was dropped.
    while kept and kept[0].role == "assistant":
        kept.pop(0)
    return [*system, *kept, last]


def is_follow_up(question: str) -> bool:
    words = question.split()
    return len(words) <= SHORT_QUESTION_WORDS or bool(_FOLLOW_UP_START.match(question) or _REFERENCE.search(question))


def condense_by_rule(messages: list[Message]) -> str:
    """The last user message, preceded by the previous user message when the last one reads as a follow-up."""
    user_turns = [m.content for m in messages if m.role == "user"]
    if not user_turns:
        return ""
    question = user_turns[-1]
    if len(user_turns) > 1 and is_follow_up(question):
        return f"{user_turns[-2]} {question}"
    return question


REWRITE_PROMPT = (
    "Rewrite the user's last question as one standalone question that can be understood without the conversation. "
    "Reply with the question only."
)


class QueryRewriter:
    """Asks the chat model to rewrite a follow-up into a standalone question; falls back to the rule on failure."""

    def __init__(self, llm: ChatModel, max_tokens: int = 64) -> None:
        self.llm = llm
        self.max_tokens = max_tokens

    async def __call__(self, messages: list[Message]) -> str:
        turns = [m for m in messages if m.role != "system"]
        if sum(1 for m in turns if m.role == "user") < 2:
            return condense_by_rule(messages)
        transcript = "\n".join(f"{m.role}: {m.content}" for m in turns[-6:])
        prompt = [Message("system", REWRITE_PROMPT), Message("user", transcript)]
        parts: list[str] = []
        stream = self.llm.stream(prompt, GenerationOptions(max_tokens=self.max_tokens, temperature=0.0))
        try:
            async for delta in stream:
                parts.append(delta.content)
        except Exception:
            return condense_by_rule(messages)
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        rewritten = "".join(parts).strip()
        return rewritten or condense_by_rule(messages)
