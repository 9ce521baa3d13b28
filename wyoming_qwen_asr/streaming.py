"""Prefix rollback, the streaming strategy of Qwen3-ASR's official (vLLM-only) streaming.

Each step decodes all audio so far. Its prompt ends with the *committed* tokens: the previous output
minus its last K tokens, which the model may no longer change. Text that becomes committed is final
and goes out at once; the last K tokens stay open because new audio may still change them.

Unlike the official code this keeps token ids (no re-tokenizing of decoded text) and never lets the
committed prefix shrink, so the committed text only grows and the pieces sent out always add up to
the final transcript. Committed text that the official repetition fix could still cut is held back
(`committed_text`), and the final transcript is the official parse (`final_text`). No torch here: the
model is reached through the engine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

ASR_TEXT_TAG = "<asr_text>"
LANGUAGE_PREFIX = "language "


@dataclass
class CommittedPrefix:
    """Token ids the model has committed to, grown after each decode step."""

    unfixed_steps: int = 2  # the official `unfixed_chunk_num`: the first steps commit nothing
    rollback_tokens: int = 5  # the official `unfixed_token_num` (K)
    ids: List[int] = field(default_factory=list)
    steps: int = 0

    def after_step(self, generated: List[int]) -> None:
        """Take one step's output (the tokens generated after `ids`)."""
        self.steps += 1
        if self.steps < self.unfixed_steps:
            return
        output = self.ids + list(generated)
        keep = max(len(self.ids), len(output) - self.rollback_tokens)
        self.ids = output[:keep]


def split_output(raw: str, forced_language: Optional[str]) -> Tuple[Optional[str], Optional[str]]:
    """(language name, transcript text) of raw model output; None for what is not there yet.

    Without a forced language the model writes `language English<asr_text>text`; the text starts only
    after the tag. With one, the prompt already ends with that header and the output is all text.
    """
    if forced_language:
        return forced_language, raw.lstrip()
    if ASR_TEXT_TAG not in raw:
        return None, None
    meta, text = raw.split(ASR_TEXT_TAG, 1)
    language = None
    for line in meta.splitlines():
        line = line.strip()
        if line.lower().startswith(LANGUAGE_PREFIX):
            value = line[len(LANGUAGE_PREFIX) :].strip()
            if value and value.lower() != "none":
                language = value[:1].upper() + value[1:].lower()
            break
    return language, text.lstrip()


def committed_text(raw: str, forced_language: Optional[str]) -> Tuple[Optional[str], str]:
    """The part of committed output that is safe to send: no half character, no trailing space, and
    nothing the official repetition fix (`detect_and_fix_repetitions`) may yet remove.

    The fix keeps the first copy of a phrase repeated `REPEAT_THRESHOLD` times and drops the rest, so
    text is held back from the second copy of any pattern the output repeats at its end (it may go on
    repeating) or repeats `REPEAT_THRESHOLD` times anywhere. Text sent is never taken back.
    """
    raw = raw.lstrip().rstrip("\ufffd")
    language, text = split_output(raw[: repetition_safe_length(raw)], forced_language)
    return language, (text or "").rstrip("\ufffd").rstrip()


def final_text(raw: str, forced_language: Optional[str]) -> Tuple[Optional[str], str]:
    """Language (None when not detected) and transcript of a final output: the official parser,
    repetition fix included (no tag at all means the output is all text)."""
    from qwen_asr.inference.utils import parse_asr_output

    language, text = parse_asr_output(raw, user_language=forced_language)
    return language or None, text


# -- repetitions --------------------------------------------------------------------------------
# The defaults of qwen_asr's `detect_and_fix_repetitions`: a pattern of at most MAX_REPEAT_PATTERN
# characters repeated REPEAT_THRESHOLD times in a row is cut to one copy.
REPEAT_THRESHOLD = 20
MAX_REPEAT_PATTERN = 20


def _match_runs(text: str, period: int):
    """(start, end) of each maximal run of positions q with text[q] == text[q - period]."""
    start = None
    for q in range(period, len(text)):
        if text[q] == text[q - period]:
            if start is None:
                start = q
        elif start is not None:
            yield start, q
            start = None
    if start is not None:
        yield start, len(text)


def repetition_safe_length(text: str) -> int:
    """Length of the prefix of `text` that the repetition fix keeps as it is, however `text` goes on.

    A run of matches text[q] == text[q - k] starting at q means a k-character pattern repeats from
    q - k; the fix keeps that pattern's first copy (up to q) at most. Only runs long enough to be cut
    (REPEAT_THRESHOLD copies) or still open at the end of `text` (they may become long enough) count.
    """
    # The fix first cuts runs of one character to one copy; patterns are then found in what is left,
    # where they may start earlier (`ab b b b` after `abbbbbb...`): apply the rule to both.
    # A run still open at the end may grow long enough to be cut too.
    collapsed = re.sub(r"(.)\1{%d,}" % REPEAT_THRESHOLD, r"\1", text, flags=re.DOTALL)
    open_end = re.sub(r"(.)\1+$", r"\1", collapsed, flags=re.DOTALL)
    return min(_pattern_safe_length(text), _pattern_safe_length(collapsed), _pattern_safe_length(open_end))


def _pattern_safe_length(text: str) -> int:
    safe = len(text)
    for period in range(1, MAX_REPEAT_PATTERN + 1):
        for start, end in _match_runs(text, period):
            if end == len(text) or end - start >= (REPEAT_THRESHOLD - 1) * period:
                safe = min(safe, start)
                break
    return safe


def loops_at_end(text: str) -> bool:
    """True when `text` ends in a pattern repeated REPEAT_THRESHOLD times: a decode that has started
    to loop, whose further output the official repetition fix would cut anyway."""
    text = text.rstrip("\ufffd")
    for period in range(1, MAX_REPEAT_PATTERN + 1):
        run = 0
        q = len(text) - 1
        while q >= period and text[q] == text[q - period]:
            run += 1
            q -= 1
        if run >= (REPEAT_THRESHOLD - 1) * period:
            return True
    return False
