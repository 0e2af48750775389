from __future__ import annotations

import random

import pytest

from llm.reasoning import ThinkTagSplitter, starts_inside_think


def run(pieces: list[str], start_inside: bool = False) -> tuple[str, str]:
    splitter = ThinkTagSplitter(start_inside)
    answer, reasoning = [], []
    for piece in pieces:
        a, r = splitter.feed(piece)
        answer.append(a)
        reasoning.append(r)
    a, r = splitter.flush()
    return "".join(answer) + a, "".join(reasoning) + r


def split_everywhere(text: str, seed: int) -> list[str]:
    rng = random.Random(seed)
    pieces, i = [], 0
    while i < len(text):
        step = rng.randint(1, 4)
        pieces.append(text[i : i + step])
        i += step
    return pieces


def test_tags_in_one_piece() -> None:
    assert run(["<think>Let me see.</think>\nParis."]) == ("Paris.", "Let me see.")


@pytest.mark.parametrize("seed", range(25))
def test_tags_split_across_pieces(seed: int) -> None:
    text = "<think>The user asks about 2<3 and </b> tags.</think>\n\nThe answer is <b>yes</b>."
    assert run(split_everywhere(text, seed)) == ("The answer is <b>yes</b>.", "The user asks about 2<3 and </b> tags.")


@pytest.mark.parametrize("seed", range(10))
def test_missing_opening_tag(seed: int) -> None:
    text = "I should check the context first.</think>It rains."
    assert run(split_everywhere(text, seed), start_inside=True) == ("It rains.", "I should check the context first.")


def test_stray_closing_tag_is_dropped_from_the_answer() -> None:
    assert run(["thinking out loud</think>", "answer"]) == ("thinking out loudanswer", "")


def test_plain_answer_passes_through_untouched() -> None:
    pieces = ["Hello", " <", "world", ">", " 1 < 2"]
    assert run(pieces) == ("Hello <world> 1 < 2", "")


def test_think_tag_after_answer_text_is_not_reasoning() -> None:
    assert run(["Use the <think> tag."]) == ("Use the <think> tag.", "")


def test_unclosed_reasoning_is_flushed_as_reasoning() -> None:
    assert run(["<think>still thinking"]) == ("", "still thinking")


def test_partial_tag_at_end_of_stream_is_kept_as_text() -> None:
    assert run(["answer </thi"]) == ("answer </thi", "")


@pytest.mark.parametrize(
    ("model", "inside"),
    [("deepseek-r1-distill", True), ("deepseek-r1:7b", True), ("deepseek-reasoner", True), ("qwq-32b", True),
     ("gpt-4o", False), ("llama3", False), ("mistral-large-r10", False)],
)  # fmt: skip
def test_models_that_start_inside_think(model: str, inside: bool) -> None:
    assert starts_inside_think(model) is inside
