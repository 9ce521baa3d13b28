"""Qwen3-ASR on the transformers backend: the official model and prompt, one decode step at a time.

Everything here runs on the inference thread. The streaming strategy (which audio, which forced prefix)
lives in `streaming.py`; this module only knows how to run the model.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence

import numpy as np
import torch

from shared.inference import heartbeat
from shared.standby import EngineStandby, IdleTiers, pages_folder

from .decode_loop import CAPACITIES, DecodeLoop, official_choice_problem, official_eos_ids
from .model_io import SAMPLE_RATE, TOKEN_MARGIN
from .streaming import MAX_REPEAT_PATTERN, REPEAT_THRESHOLD, loops_at_end

if TYPE_CHECKING:
    from shared.graphs import GraphRuntime

_LOGGER = logging.getLogger(__name__)

# a loop spans at most REPEAT_THRESHOLD * MAX_REPEAT_PATTERN characters, so at most as many tokens
LOOP_WINDOW = REPEAT_THRESHOLD * MAX_REPEAT_PATTERN


class AsrEngine(IdleTiers):
    """A loaded Qwen3-ASR model (`qwen_asr.Qwen3ASRModel`) plus the few calls the server needs."""

    def __init__(
        self,
        asr,
        graphs: Optional["GraphRuntime"] = None,
        static_loop: bool = False,
        capacities: Optional[Sequence[int]] = CAPACITIES,
    ) -> None:
        """graphs: decode on the static-cache loop, its step captured now by this runtime
        (`shared.graphs.runtime_for(device)`: CUDA graphs, or the strict stand-in anywhere); static_loop:
        the same loop, run eagerly. Neither: the official `generate`. capacities: the loop's resident caches
        in positions; None (eager only) gives each request a cache of its own size."""
        self.asr = asr
        self.model = asr.model
        self.processor = asr.processor
        self.tokenizer = asr.processor.tokenizer
        self.device = asr.device
        self.dtype = asr.dtype
        self.eos_ids = official_eos_ids()
        self._special_ids = set(self.tokenizer.all_special_ids) | set(self.eos_ids)
        keep_last_logits_only(self.model.thinker)
        tower = self.model.thinker.audio_tower
        self.windowed_encoder = apply_encoder_windows(tower)
        # On a CPU the encoder's convolutions are most of a step's prefill; reuse what is unchanged.
        self.encoder_cache = None
        if str(self.device).startswith("cpu"):
            from .encoder_cache import EncoderCache

            self.encoder_cache = EncoderCache(tower)
        self.loop: Optional[DecodeLoop] = None
        if graphs is not None or static_loop:
            self.loop = self.decode_loop(graphs, capacities)
        self.standby_memory = EngineStandby([self.model], None)  # `load` gives it a folder for its pages

    @classmethod
    def load(
        cls,
        path: Path,
        device: str,
        dtype,
        attention: Optional[str] = None,
        quantize: str = "none",
        cuda_graphs: bool = True,
        int8_packing: str = "background",
    ) -> "AsrEngine":
        """attention: flash_attention_2 or sdpa; default: flash-attention where it is installed and can run.
        quantize "int8": the language model's linear layers and its output head in int8 (the audio encoder
        and the embeddings stay float; see shared/quantize.py). cuda_graphs: on a CUDA device, decode on
        the static-cache loop with its step captured as a CUDA graph now; elsewhere the official generate
        stays (measured faster on a CPU, see `decode_loop`). int8_packing: `--int8-packing`, when fbgemm's
        weights are packed (shared/quantize.py, KernelPacking)."""
        from qwen_asr import Qwen3ASRModel

        from shared.devices import load_pretrained

        asr, loaded = load_pretrained(
            Qwen3ASRModel.from_pretrained, path, device, dtype, attention, max_new_tokens=TOKEN_MARGIN
        )
        _LOGGER.info("Qwen3-ASR %s", loaded)
        packed: list = []
        packing = None
        if quantize == "int8":
            from shared.quantize import KernelPacking, cache_file, quantize_int8

            thinker = asr.model.thinker
            what = "the ASR language model and its head"
            later = int8_packing == "background"
            heads = [(thinker, "lm_head")]
            quantize_int8([thinker.model], what, heads, cache_file(path), packed, pack=not later)
            packing = KernelPacking([thinker.model, thinker], packed) if later else None
        graphs = None
        if cuda_graphs and str(device).startswith("cuda"):
            from shared.graphs import runtime_for

            graphs = runtime_for(device)
        engine = cls(asr, graphs=graphs)
        engine.standby_memory = EngineStandby([asr.model], pages_folder(path), packed)
        engine.packing = packing
        return engine

    def decode_loop(self, graphs: Optional["GraphRuntime"] = None, capacities: Optional[Sequence[int]] = CAPACITIES):
        """A static-cache decode loop on this model, or None (logged) where it would not choose the
        official generate's tokens."""
        thinker = self.model.thinker
        problem = official_choice_problem(thinker, self.eos_ids)
        if problem:
            _LOGGER.warning("Decoding with the official generate: %s, which the static-cache loop does not", problem)
            return None
        attend_over_static_cache(thinker)
        return DecodeLoop(thinker, self.eos_ids, capacities, graphs)

    # -- prompts --------------------------------------------------------------------------------

    def prompt(self, context: str, language: Optional[str]) -> str:
        """The official prompt: context in the system turn; a forced language ends it with its tag."""
        return self.asr._build_text_prompt(context=context, force_language=language)

    def text(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)

    # -- inference ------------------------------------------------------------------------------

    def drop_caches(self) -> None:
        if self.encoder_cache is not None:
            self.encoder_cache.clear()

    def warm_up(self) -> None:
        """One token for half a second of silence: the first inference of a process pays one-time costs."""
        self.decode(np.zeros(SAMPLE_RATE // 2, dtype=np.float32), self.prompt("", None), max_new_tokens=1)

    def decode(
        self,
        audio: np.ndarray,
        prompt: str,
        prefix_ids: Sequence[int] = (),
        max_new_tokens: int = TOKEN_MARGIN,
        should_stop: Optional[Callable[[], bool]] = None,
    ) -> List[int]:
        """Generate after `prompt` + `prefix_ids` for 16 kHz mono float audio; returns new token ids.

        `prefix_ids` are appended as ids (not re-tokenized text), so the model continues exactly the
        tokens it produced before. `should_stop` aborts generation between two tokens.
        """
        audio = pad_to_minimum(audio)
        inputs = self.processor(text=[prompt], audio=[audio], return_tensors="pt", padding=True)
        n_prompt = inputs["input_ids"].shape[1]
        if prefix_ids:
            ids = inputs["input_ids"]
            extra = torch.tensor([list(prefix_ids)], dtype=ids.dtype, device=ids.device)
            inputs["input_ids"] = torch.cat([ids, extra], dim=1)
            inputs["attention_mask"] = torch.cat(
                [inputs["attention_mask"], torch.ones_like(extra, dtype=inputs["attention_mask"].dtype)],
                dim=1,
            )
        inputs = inputs.to(self.device).to(self.dtype)
        max_new_tokens = max(1, max_new_tokens)
        if self.loop is not None:
            prefix = list(prefix_ids)[-LOOP_WINDOW:]
            check = self.token_check(should_stop)
            generated = self.loop.generate(inputs, max_new_tokens, lambda new: check((prefix + new)[-LOOP_WINDOW:]))
        else:
            generated = self._official_generate(inputs, n_prompt, max_new_tokens, should_stop)
        while generated and generated[-1] in self._special_ids:
            generated.pop()
        return generated

    def _official_generate(self, inputs, n_prompt: int, max_new_tokens: int, should_stop) -> List[int]:
        n_in = inputs["input_ids"].shape[1]
        kwargs = {"stopping_criteria": self.stopping_criteria(n_prompt, should_stop), "eos_token_id": self.eos_ids}
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, **kwargs)
        return out.sequences[0, n_in:].tolist()

    def token_check(self, should_stop: Optional[Callable[[], bool]] = None) -> Callable[[List[int]], bool]:
        """What to check after each new token: stop on `should_stop()`, or once the output (prefix included)
        ends in a loop. The check takes the output's last LOOP_WINDOW ids.

        Called once per generated token, so it also beats the inference thread's heartbeat: a decode
        of minutes shows progress to the health probe, a stuck one does not.

        A trained model can fall into repeating a phrase until the output cap; the official transcript
        keeps one copy of such a loop (`detect_and_fix_repetitions`), so decoding further only costs time.
        """

        def check(tail: List[int]) -> bool:
            heartbeat()
            if should_stop is not None and bool(should_stop()):
                return True
            if loops_at_end(self.text(tail)):
                _LOGGER.debug("Output loops; decoding stopped")
                return True
            return False

        return check

    def stopping_criteria(self, n_prompt: int, should_stop: Optional[Callable[[], bool]] = None):
        """`token_check` as a stopping criterion of the official generate. The flags are created on
        `input_ids`'s device: transformers ORs them with its own on that device."""
        from transformers import StoppingCriteria, StoppingCriteriaList

        check = self.token_check(should_stop)

        class _Stop(StoppingCriteria):
            def __call__(self, input_ids, scores, **_kw):
                start = max(n_prompt, input_ids.shape[1] - LOOP_WINDOW)
                stop = check(input_ids[0, start:].tolist())
                return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

        return StoppingCriteriaList([_Stop()])


def attend_over_static_cache(thinker) -> None:
    """The loop's step hands the language model an sdpa mask over the static cache. Flash-attention takes
    no such mask (and checks its own on the host), so the language model attends with sdpa; the audio
    encoder keeps its own attention."""
    text_model = thinker.model
    current = text_model.config._attn_implementation
    if current != "sdpa":
        _LOGGER.info("The ASR language model attends with sdpa instead of %s for the static cache", current)
        text_model.set_attn_implementation("sdpa")


def pad_to_minimum(audio: np.ndarray) -> np.ndarray:
    """Pad with silence to the official minimum input length (qwen_asr pads the same way)."""
    from qwen_asr.inference.utils import MIN_ASR_INPUT_SECONDS

    minimum = int(MIN_ASR_INPUT_SECONDS * SAMPLE_RATE)
    if len(audio) >= minimum:
        return audio
    return np.concatenate([audio, np.zeros(minimum - len(audio), dtype=audio.dtype)])


def split_long_audio(audio: np.ndarray):
    """The official split of audio longer than Qwen3-ASR's input limit, at low-energy points."""
    from qwen_asr.inference.utils import MAX_ASR_INPUT_SECONDS, split_audio_into_chunks

    return [
        part
        for part, _offset in split_audio_into_chunks(wav=audio, sr=SAMPLE_RATE, max_chunk_sec=MAX_ASR_INPUT_SECONDS)
    ]


def keep_last_logits_only(thinker) -> None:
    """Compute the LM head on the last position only.

    generate() reads only the last position's logits, but the thinker's forward has no
    `logits_to_keep`, so each prefill multiplies every prompt position by the 151936-word head:
    about 0.4 s of wasted CPU time per decode step on the 0.6B model. Same logits where they are used.
    """
    head = thinker.lm_head
    full_forward = head.forward
    head.forward = lambda hidden_states: full_forward(hidden_states[:, -1:, :])


def apply_encoder_windows(audio_tower) -> bool:
    """Make the audio encoder attend within its 8-second windows on every attention path.

    qwen-asr 0.0.6 passes the window boundaries (`cu_seqlens`) to each attention layer but builds no
    mask for them, so only flash-attention respects the windows; on sdpa/eager (CPU) all audio is
    attended globally (upstream Qwen3-ASR issue #213). Here each window's attention runs separately,
    which is what flash-attention's varlen kernel computes, on this model instance only.
    Returns True when the windows were applied.
    """
    if audio_tower.config._attn_implementation == "flash_attention_2":
        return False
    for layer in audio_tower.layers:
        attention = layer.self_attn
        attention.forward = _windowed(attention.forward)
    return True


def _windowed(forward):
    def windowed_forward(hidden_states, cu_seqlens=None, attention_mask=None, **kwargs):
        if cu_seqlens is None or attention_mask is not None or len(cu_seqlens) <= 2:
            return forward(hidden_states, cu_seqlens=cu_seqlens, attention_mask=attention_mask, **kwargs)
        bounds = cu_seqlens.tolist()
        outputs = []
        for start, end in zip(bounds[:-1], bounds[1:], strict=True):
            window = torch.tensor([0, end - start], dtype=cu_seqlens.dtype, device=cu_seqlens.device)
            outputs.append(forward(hidden_states[start:end], cu_seqlens=window, **kwargs))
        return torch.cat(outputs, dim=0)

    return windowed_forward
