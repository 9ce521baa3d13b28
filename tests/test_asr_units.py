"""Pieces of the ASR server that need no socket: prefix rollback, output parsing, languages, context."""

from __future__ import annotations

import pytest

from shared.languages import ASR_LANGUAGES, UnsupportedLanguage
from wyoming_qwen_asr.context import MAX_CONTEXT_CHARS, build_context
from wyoming_qwen_asr.streaming import CommittedPrefix, committed_text, final_text, split_output


def test_committed_prefix_waits_then_rolls_back_k_tokens():
    prefix = CommittedPrefix(unfixed_steps=2, rollback_tokens=2)
    prefix.after_step([1, 2, 3])
    assert prefix.ids == []  # first step: nothing fixed yet
    prefix.after_step([1, 2, 3, 4])
    assert prefix.ids == [1, 2]
    prefix.after_step([3, 5, 6, 7])
    assert prefix.ids == [1, 2, 3, 5]


def test_committed_prefix_never_shrinks():
    prefix = CommittedPrefix(unfixed_steps=1, rollback_tokens=5)
    prefix.after_step(list(range(10)))
    assert prefix.ids == list(range(5))
    prefix.after_step([42])  # a step that adds less than K tokens keeps what was committed
    assert prefix.ids == list(range(5))


def test_split_output_with_and_without_forced_language():
    assert split_output("language German<asr_text> Hallo Welt", None) == ("German", "Hallo Welt")
    assert split_output("language Ger", None) == (None, None)  # header not complete yet
    assert split_output(" Hallo", "German") == ("German", "Hallo")
    assert split_output("language None<asr_text>", None) == (None, "")


def test_committed_text_holds_back_half_characters_and_trailing_space():
    assert committed_text("language Chinese<asr_text>你好\ufffd", None) == ("Chinese", "你好")
    assert committed_text("Hello ", "English") == ("English", "Hello")
    assert final_text("no tag at all ", None) == (None, "no tag at all")


def test_language_codes_and_names():
    to_qwen_name, to_code = ASR_LANGUAGES.to_qwen_name, ASR_LANGUAGES.to_code
    assert to_qwen_name("en") == "English"
    assert to_qwen_name("en-US") == "English"
    assert to_qwen_name("zh_CN") == "Chinese"
    assert to_qwen_name("zh-HK") == "Cantonese"
    assert to_qwen_name("german") == "German"
    assert to_qwen_name(None) is None and to_qwen_name("auto") is None
    assert to_code("Chinese,English") == "zh"
    assert to_code("") is None
    with pytest.raises(UnsupportedLanguage, match="Klingon.*en \\(English\\)"):
        to_qwen_name("Klingon")


def test_context_combines_all_parts_names_first():
    context = build_context("Server text.", "Request text.", ["Kitchen", "Kitchen", "Hall"], ["dimmer"])
    assert context == "Server text.\nRequest text.\nNames: Kitchen, Hall\nTerms: dimmer"
    assert build_context(request_context={"text": "From a dict"}) == "From a dict"
    assert build_context(request_context={"conversation_id": "x"}) == ""
    assert len(build_context(names=[f"name {i} " * 10 for i in range(100)])) == MAX_CONTEXT_CHARS
