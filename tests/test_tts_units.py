"""TTS pieces that need no socket: sentence splitting, PCM conversion, generation caps, voices."""

from __future__ import annotations

import numpy as np
import pytest

from shared.audio import float_to_pcm16
from shared.languages import TTS_LANGUAGES, UnsupportedLanguage
from wyoming_qwen_tts.engine import max_frames_for
from wyoming_qwen_tts.sentences import SentenceSplitter, split_text
from wyoming_qwen_tts.voices import OFFICIAL_SPEAKERS, catalogue, find_voice


def test_cjk_sentences():
    assert split_text("你好。今天天气很好！我们去公园吧？") == ["你好。", "今天天气很好！", "我们去公园吧？"]
    assert split_text("こんにちは。元気ですか？") == ["こんにちは。", "元気ですか？"]
    assert split_text("他说：“走吧。”然后走了。") == ["他说：“走吧。”", "然后走了。"]


def test_abbreviations_do_not_end_sentences():
    assert split_text("Dr. Smith met Prof. Miller at 5 p.m. today. Then they left!") == [
        "Dr. Smith met Prof. Miller at 5 p.m. today.",
        "Then they left!",
    ]
    assert split_text("Wir kaufen z.B. Äpfel. Danach gehen wir.") == ["Wir kaufen z.B. Äpfel.", "Danach gehen wir."]


def test_streamed_text_yields_sentences_as_soon_as_they_are_complete():
    splitter = SentenceSplitter()
    seen = []
    for ch in "Hello there. How are you doing today? Fine.":
        seen += splitter.add(ch)
    # a sentence is complete once the next one starts
    assert seen == ["Hello there.", "How are you doing today?"]
    assert splitter.finish() == ["Fine."]


def test_long_sentences_are_cut_at_clause_breaks():
    text = ", ".join(["this clause is part of a very long sentence"] * 20) + "."
    pieces = split_text(text, max_chars=120)
    assert all(len(p) <= 120 for p in pieces) and len(pieces) > 5
    assert " ".join(pieces).replace(" ,", ",") == text


def test_pcm_is_clipped_not_normalised():
    pcm = np.frombuffer(float_to_pcm16(np.array([0.0, 0.25, 1.7, -3.0], dtype=np.float32)), dtype="<i2")
    assert pcm.tolist() == [0, 8191, 32767, -32767]
    quiet = np.frombuffer(float_to_pcm16(np.full(4, 0.01, dtype=np.float32)), dtype="<i2")
    assert quiet.max() == 327  # a quiet chunk stays quiet


def test_generation_cap_grows_with_text_and_counts_wide_characters():
    assert max_frames_for("Hi.") < max_frames_for("Hello there, how are you?")
    assert max_frames_for("你好") > max_frames_for("ab")


def test_languages_share_the_asr_contract_on_their_own_subset():
    to_qwen_name = TTS_LANGUAGES.to_qwen_name
    assert to_qwen_name("de-DE") == "German" and to_qwen_name("japanese") == "Japanese"
    assert to_qwen_name("auto") is None and to_qwen_name(None) is None
    # zh-HK is Cantonese where the model has it (ASR), Chinese where it does not (TTS)
    assert to_qwen_name("zh-HK") == "Chinese"
    for unsupported in ("xx", "nl", "yue"):  # nl and yue: Qwen3-ASR languages that Qwen3-TTS lacks
        with pytest.raises(UnsupportedLanguage, match="Qwen3-TTS.*en \\(English\\)"):
            to_qwen_name(unsupported)
    # the model config lists lower-case names and dialects, which are no request language
    assert TTS_LANGUAGES.codes_of(["auto", "english", "chinese", "beijing_dialect"]) == ["en", "zh"]


def test_catalogue_without_the_model_lists_the_official_speakers(tmp_path):
    voices = catalogue("Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice", str(tmp_path / "missing"), [str(tmp_path)])
    assert set(voices) == set(OFFICIAL_SPEAKERS)
    assert find_voice(voices, "Ryan").name == "ryan"
