"""Passages: a document's text cut into pieces a model can be shown a few of at a time.

Pieces follow the text's own seams — paragraphs, then sentences, then words — up to `size`
characters, and each starts with the last `overlap` characters of the one before, so an answer
that straddles a cut is still whole in one of them. A passage never spans two PDF pages (the
citation names one)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from papo.knowledge.extract import Page

SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")


@dataclass(frozen=True)
class Passage:
    ordinal: int
    page: int | None
    content: str


def passages(pages: list[Page], *, size: int = 1200, overlap: int = 200) -> list[Passage]:
    if not 0 <= overlap < size:
        raise ValueError("overlap must be smaller than size")
    found: list[Passage] = []
    for page in pages:
        for content in _cut(page.text, size, overlap):
            found.append(Passage(len(found), page.number, content))
    return found


def _cut(text: str, size: int, overlap: int) -> Iterator[str]:
    current = ""
    for piece, opens_paragraph in _pieces(text, size - overlap):
        joiner = "\n\n" if opens_paragraph else " "
        if current and len(current) + len(joiner) + len(piece) > size:
            yield current
            current = _tail(current, overlap)
        current = f"{current}{joiner}{piece}" if current else piece
    if current:
        yield current


def _pieces(text: str, limit: int) -> Iterator[tuple[str, bool]]:
    """The text's paragraphs, each split by sentences and then by words until none exceeds `limit`;
    each piece says whether it opens a paragraph."""
    for paragraph in text.split("\n\n"):
        paragraph = paragraph.strip()
        if paragraph:
            for number, piece in enumerate(_split(paragraph, limit)):
                yield piece, number == 0


def _split(paragraph: str, limit: int) -> Iterator[str]:
    if len(paragraph) <= limit:
        yield paragraph
        return
    for sentence in SENTENCE_END.split(paragraph):
        if len(sentence) <= limit:
            yield sentence
            continue
        words, line = sentence.split(), ""
        for word in words:
            while len(word) > limit:  # one "word" longer than a passage (a URL, base64): hard cut
                if line:
                    yield line
                    line = ""
                yield word[:limit]
                word = word[limit:]
            if line and len(line) + 1 + len(word) > limit:
                yield line
                line = word
            else:
                line = f"{line} {word}" if line else word
        if line:
            yield line


def _tail(text: str, overlap: int) -> str:
    """The last `overlap` characters, starting at a word."""
    if overlap == 0:
        return ""
    tail = text[-overlap:]
    space = tail.find(" ")
    return tail[space + 1 :] if 0 <= space < len(tail) - 1 else tail
