from __future__ import annotations

import itertools

import pytest

from rag.chunking import split_text

PROSE = " ".join(f"Sentence number {i} says something about topic {i % 7}." for i in range(200))


def test_short_text_is_one_chunk() -> None:
    assert split_text("  A short note.  ", 100, 20) == ["A short note."]


def test_empty_text_gives_no_chunks() -> None:
    assert split_text("   \n ", 100, 20) == []


@pytest.mark.parametrize(("size", "overlap"), [(200, 50), (500, 100), (1000, 0)])
def test_chunks_are_bounded_cover_the_text_and_overlap(size: int, overlap: int) -> None:
    chunks = split_text(PROSE, size, overlap)
    assert len(chunks) > 1
    assert all(len(c) <= size for c in chunks)
    # Every sentence survives in some chunk.
    for i in range(200):
        assert any(f"Sentence number {i} says" in c for c in chunks)
    if overlap:
        for left, right in itertools.pairwise(chunks):
            assert right[:20] in left, "neighbouring chunks should share text"


def test_cuts_at_sentence_ends_when_possible() -> None:
    chunks = split_text(PROSE, 300, 50)
    assert all(c.endswith(".") for c in chunks)


def test_text_without_spaces_is_still_split() -> None:
    chunks = split_text("x" * 2500, 1000, 100)
    assert [len(c) for c in chunks] == [1000, 1000, 700]


def test_overlap_must_be_smaller_than_size() -> None:
    with pytest.raises(ValueError, match="overlap"):
        split_text(PROSE, 100, 100)
