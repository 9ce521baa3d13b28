"""Make the tiny random ASR model write what a trained Qwen3-ASR writes, for protocol tests.

Random weights never stop and never write the `language X<asr_text>` header. `ScriptedModel` wraps the
loaded engine's `model.generate` with a logits processor that forces a scripted token sequence, indexed
by position after the prompt (a forced committed prefix counts as script already written), and records
every call. The product code is unchanged: everything else about each generate call stays real.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, List

import pytest


@dataclass
class GenerateCall:
    prefix: int  # script tokens already in the prompt (the committed prefix)
    generated: int  # new tokens, EOS included
    max_new_tokens: int
    samples: int  # audio samples heard
    ids: List[int] = field(default_factory=list)  # prefix + generated, as script positions


class ScriptedModel:
    """Forces `script(position)` as the token at each position after the prompt; records each call."""

    def __init__(self, engine, script: Callable[[int], int]):
        self.engine = engine
        self.script = script
        self.calls: List[GenerateCall] = []
        self.lock = threading.Lock()
        tokenizer = engine.tokenizer
        self.eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self._im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
        self._assistant = len(tokenizer.encode("assistant\n", add_special_tokens=False))
        self._generate = engine.model.generate
        engine.model.generate = self._scripted
        # forcing tokens needs generate's logits processors: the static-cache loop (CUDA) steps aside
        self._loop, engine.loop = engine.loop, None

    def _prompt_end(self, ids: List[int]) -> int:
        last = len(ids) - 1 - ids[::-1].index(self._im_start)
        return last + 1 + self._assistant

    def _scripted(self, **inputs):
        ids = inputs["input_ids"][0].tolist()
        start = self._prompt_end(ids)
        script = self.script

        def force(input_ids, scores):
            position = input_ids.shape[1] - start
            forced = scores.new_full(scores.shape, float("-inf"))
            forced[:, script(position)] = 0.0
            return forced

        inputs.setdefault("logits_processor", []).append(force)
        # the tiny vocabulary's end of turn; real checkpoints use Qwen's ids (the model's default)
        inputs["eos_token_id"] = [self.eos_id]
        out = self._generate(**inputs)
        sequence = out.sequences[0].tolist()
        call = GenerateCall(
            prefix=len(ids) - start,
            generated=len(sequence) - len(ids),
            max_new_tokens=inputs["max_new_tokens"],
            samples=int(inputs["feature_attention_mask"].sum()) * 160,
            ids=sequence[start:],
        )
        with self.lock:
            self.calls.append(call)
        return out

    def restore(self) -> None:
        self.engine.model.generate = self._generate
        self.engine.loop = self._loop


def natural_script(engine, text: str, header: str = "language English<asr_text>") -> Callable[[int], int]:
    """(a) header, `text`, then end of turn, as a trained model transcribes clear speech."""
    tokens = engine.tokenizer.encode(header + text, add_special_tokens=False)
    eos = engine.tokenizer.convert_tokens_to_ids("<|im_end|>")
    return lambda position: tokens[position] if position < len(tokens) else eos


def looping_script(engine, text: str, phrase: str, header: str = "language English<asr_text>"):
    """(b) header, `text`, then `phrase` over and over: a trained model stuck in a loop."""
    head = engine.tokenizer.encode(header + text, add_special_tokens=False)
    loop = engine.tokenizer.encode(phrase, add_special_tokens=False)
    return lambda position: head[position] if position < len(head) else loop[(position - len(head)) % len(loop)]


@pytest.fixture
async def scripted_asr(start_asr):
    """`server, model = await scripted_asr(make_script, *server_args)`: an ASR server whose model
    writes `make_script(engine)`."""
    patched: List[ScriptedModel] = []

    async def start(make_script, *extra):
        server = await start_asr(*extra)
        engine = server.app.manager.loaded("asr")
        model = ScriptedModel(engine, make_script(engine))
        patched.append(model)
        return server, model

    yield start
    for model in patched:
        model.restore()
