"""Prefix rollback, the streaming strategy of Qwen3-ASR's official (vLLM-only) streaming.

Each step decodes all audio so far. Its prompt ends with the *committed* tokens: the previous output
minus its last K tokens, which the model may no longer change. Text that becomes committed is final
and goes out at once; the last K tokens stay open because new audio may still change them.

Unlike the official code this keeps token ids (no re-tokenizing of decoded text) and never lets the
committed prefix shrink, so the committed text only grows and the pieces sent out always add up to
the final transcript. No torch here: the model is reached through the engine.
"""

from __future__ import annotations

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
    """The part of committed output that is safe to send: no half character, no trailing space."""
    language, text = split_output(raw, forced_language)
    return language, (text or "").rstrip("\ufffd").rstrip()


def final_text(raw: str, forced_language: Optional[str]) -> Tuple[Optional[str], str]:
    """Language and transcript of a final output (no tag at all means the output is all text)."""
    language, text = split_output(raw, forced_language)
    if text is None:
        return None, raw.strip()
    return language, text.rstrip()
