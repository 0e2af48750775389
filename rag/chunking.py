"""Splits documents into overlapping chunks of bounded size, cutting at the most natural boundary in reach.

Sizes are in characters, not tokens: that keeps the chunker independent of the embedding model. The default
(1000 characters) stays under all-MiniLM-L6-v2's 256-word-piece window for ordinary English prose.
"""

from __future__ import annotations

# Tried in order: a paragraph break beats a sentence end, which beats a line break, which beats a space.
_BREAKS = ("\n\n", ". ", "? ", "! ", "\n", "; ", ", ", " ")


def _cut_point(text: str, lo: int, hi: int) -> int:
    """Index in (lo, hi] just after the best separator in text[lo:hi], or hi when there is none."""
    for sep in _BREAKS:
        at = text.rfind(sep, lo, hi)
        if at != -1:
            return at + len(sep)
    return hi


def split_text(text: str, size: int, overlap: int) -> list[str]:
    """Return chunks of at most `size` characters; neighbours share about `overlap` characters."""
    if overlap >= size:
        raise ValueError("overlap must be smaller than size")
    text = text.strip()
    if len(text) <= size:
        return [text] if text else []
    chunks: list[str] = []
    start = 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            # Look for a boundary only in the second half, so chunks never shrink below half the size.
            end = _cut_point(text, start + size // 2, end)
        piece = text[start:end].strip()
        if piece:
            chunks.append(piece)
        if end >= len(text):
            break
        next_start = end - overlap
        # Start the overlap on a word boundary rather than in the middle of a word.
        space = text.find(" ", next_start, end)
        if space != -1:
            next_start = space + 1
        start = max(next_start, start + 1)
    return chunks
