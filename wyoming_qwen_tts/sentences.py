"""Sentences from streamed text: `sentence-stream` (as wyoming-piper uses it), plus what it misses.

sentence-stream handles CJK enders (。！？), closing quotes and one- to three-letter abbreviations
("Dr.", "Mrs."). On top of it this keeps longer abbreviations ("Prof.", "approx.", "z.B.") with the
next sentence, and cuts a sentence longer than MAX_SENTENCE_CHARS at a clause or word boundary, so
each piece stays within the generation cap.
"""

from __future__ import annotations

import re
from typing import Iterable, List

from sentence_stream import SentenceBoundaryDetector

MAX_SENTENCE_CHARS = 300
_ABBREVIATIONS = {
    "prof",
    "approx",
    "dept",
    "est",
    "etc",
    "vs",
    "no",
    "nr",
    "ca",
    "bzw",
    "usw",
    "ggf",
    "z.b",
    "u.a",
    "d.h",
    "e.g",
    "i.e",
    "gen",
    "col",
    "capt",
    "sgt",
    "lt",
    "gov",
    "sen",
    "rep",
    "st",
    "jr",
    "sr",
}
_LAST_WORD = re.compile(r"(\S+)\.$")
_CLAUSE_BREAK = re.compile(r"[,;:，；：、]\s*")


class SentenceSplitter:
    def __init__(self, max_chars: int = MAX_SENTENCE_CHARS) -> None:
        self._detector = SentenceBoundaryDetector()
        self._held = ""
        self.max_chars = max_chars

    def add(self, text: str) -> List[str]:
        """Complete sentences in the text received so far."""
        return self._emit(self._detector.add_chunk(text))

    def finish(self) -> List[str]:
        """The rest, at the end of the text."""
        rest = self._detector.finish()
        sentences = self._emit([rest] if rest else [])
        if self._held:
            sentences += split_long(self._held, self.max_chars)
            self._held = ""
        return sentences

    def _emit(self, sentences: Iterable[str]) -> List[str]:
        out: List[str] = []
        for sentence in sentences:
            if self._held:
                sentence, self._held = f"{self._held} {sentence}", ""
            match = _LAST_WORD.search(sentence)
            if match and match.group(1).lower().lstrip("(\"'") in _ABBREVIATIONS:
                self._held = sentence
                continue
            out += split_long(sentence, self.max_chars)
        return out


def split_text(text: str, max_chars: int = MAX_SENTENCE_CHARS) -> List[str]:
    splitter = SentenceSplitter(max_chars)
    return splitter.add(text) + splitter.finish()


def split_long(sentence: str, max_chars: int) -> List[str]:
    """Cut a sentence longer than max_chars at the last clause break (else space) before the limit."""
    pieces = []
    while len(sentence) > max_chars:
        window = sentence[:max_chars]
        cut = max((m.end() for m in _CLAUSE_BREAK.finditer(window)), default=0)
        if cut < max_chars // 3:
            space = window.rfind(" ")
            cut = space + 1 if space > max_chars // 3 else max_chars
        pieces.append(sentence[:cut].strip())
        sentence = sentence[cut:].strip()
    if sentence:
        pieces.append(sentence)
    return pieces
