"""Greedy decoding of the Qwen3-ASR thinker on a static KV cache, one fixed-shape step per token.

The official `generate` costs about 22 ms per token on an H200: launch and Python overhead, not GPU work.
Here the prompt is prefilled eagerly (its length varies) by the thinker's own forward, called exactly as
`generate`'s first step calls it, so the thinker computes the multimodal rope positions and its
`rope_deltas` itself. Each further token is one step over fixed buffers (the input token, the cache
position, the rope delta): the thinker's forward for one token at an explicit position
(`cache position + rope_deltas`, what the thinker computes for generate's later steps), then the argmax
written back into the input buffer. A step reads nothing back to the host, so it is captured once as a
graph through `shared.graphs` and replayed for every token of every request. Between two steps the host
reads the one new token id and applies generate's stopping rules: the caller's check, EOS, the token cap.

The token choice is the official one only where the thinker's generation settings make `generate` greedy
with no logits processor and no stopping rule beyond EOS and the token cap; `official_choice_problem`
checks that before a loop is used.

A request longer than the resident caches (`CAPACITIES`) runs the same steps eagerly on a cache of its
own.
"""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch

from shared.graphs import Graph, GraphRuntime, capture_all

_LOGGER = logging.getLogger(__name__)

# Positions of the resident caches. A decode of s seconds takes about 64 + 24.5 s positions (prompt,
# 12.5 audio tokens and an output cap of 12 tokens per second): 512 hold a 15 s command, 2048 a 80 s
# dictation; longer ones run eagerly. Each step attends over its whole cache (sdpa with a mask, which
# also copies the cache once per layer to repeat the KV heads), so short requests get a short one. The
# 0.6B model in bfloat16 holds 112 KiB per position: 0.29 GB for both.
CAPACITIES = (512, 2048)


def official_eos_ids() -> List[int]:
    """The EOS ids `Qwen3ASRForConditionalGeneration.generate` passes to the thinker's `generate`: they are
    its parameter's default there, not the checkpoint's generation config."""
    from qwen_asr.core.transformers_backend.modeling_qwen3_asr import Qwen3ASRForConditionalGeneration

    default = inspect.signature(Qwen3ASRForConditionalGeneration.generate).parameters["eos_token_id"].default
    return [default] if isinstance(default, int) else list(default)


def official_choice_problem(thinker, eos_ids: Iterable[int]) -> Optional[str]:
    """Why the thinker's `generate` would not choose tokens as the loop does (greedy, no logits processor,
    stopping only at EOS or the token cap), or None when it would."""
    try:
        return _generate_setting_problem(thinker, eos_ids)
    except (AttributeError, TypeError) as error:  # generate's private helpers of another transformers
        return f"generate's settings cannot be inspected ({error})"


def _generate_setting_problem(thinker, eos_ids: Iterable[int]) -> Optional[str]:
    # what generate builds from the thinker's generation config and the wrapper's arguments
    config, _ = thinker._prepare_generation_config(None, max_new_tokens=1, eos_token_id=list(eos_ids))
    if config.do_sample or config.num_beams != 1:
        return f"generate samples or searches (do_sample={config.do_sample}, num_beams={config.num_beams})"
    device = thinker.get_input_embeddings().weight.device
    thinker._prepare_special_tokens(config, kwargs_has_attention_mask=True, device=device)
    processors = thinker._get_logits_processor(generation_config=config, input_ids_seq_length=1, device=device)
    if len(processors):
        return "generate applies " + ", ".join(type(p).__name__ for p in processors)
    if config.max_time is not None or config.stop_strings is not None:
        return "generate also stops on time or strings"
    return None


class StaticSteps:
    """A StaticCache of `capacity` positions and the fixed buffers one decode step reads and writes."""

    def __init__(self, thinker, capacity: int) -> None:
        from transformers import StaticCache

        text = thinker.config.get_text_config()
        weight = thinker.get_input_embeddings().weight
        device, dtype = weight.device, weight.dtype
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        self.thinker = thinker
        self.capacity = capacity
        self.used = 0  # positions written since the last clear
        # made in inference mode, as everything that touches them runs in it (an in-place change of an
        # inference tensor outside it fails)
        with torch.inference_mode():
            self.cache = StaticCache(config=thinker.config, max_cache_len=capacity)
            self.cache.early_initialization(1, text.num_key_value_heads, head_dim, dtype, device)
            self.token = torch.zeros((1, 1), dtype=torch.long, device=device)  # last chosen, next step's input
            self.cache_position = torch.zeros(1, dtype=torch.long, device=device)
            # float, as the thinker computes it (from a float cumsum of the attention mask)
            self.rope_delta = torch.zeros((1, 1), dtype=torch.float32, device=device)
            self.kv_index = torch.arange(capacity, device=device)

    def prefill(self, inputs: Mapping[str, torch.Tensor]) -> None:
        """The thinker's forward over the whole prompt, as generate's first step calls it; chooses a token."""
        self.clear()
        length = inputs["input_ids"].shape[1]
        if length >= self.capacity:
            raise ValueError(f"a prompt of {length} positions does not fit a cache of {self.capacity}")
        self.used = length
        positions = torch.arange(length, device=self.token.device)
        out = self.thinker(**inputs, past_key_values=self.cache, cache_position=positions, use_cache=True)
        self.rope_delta.copy_(self.thinker.rope_deltas)
        self.cache_position.fill_(length)
        self._choose(out.logits)

    def step(self) -> None:
        """One token: feeds `token` at `cache_position`, writes the next choice into `token`. No host read."""
        # what the thinker computes for generate's later steps: arange(1) + cache_position[0] + rope_deltas
        positions = (self.cache_position.view(1, 1) + self.rope_delta).unsqueeze(0).expand(3, -1, -1)
        # the sdpa mask transformers would build (causal over the cache, no padding), in one op instead
        # of its vmap, which costs more than the rest of a step on a CPU
        mask = (self.kv_index <= self.cache_position).view(1, 1, 1, -1)
        out = self.thinker(
            input_ids=self.token,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=self.cache,
            cache_position=self.cache_position,
            use_cache=True,
        )
        self._choose(out.logits)
        self.cache_position.add_(1)

    def stepped(self) -> None:
        """Account for one step run (eagerly or replayed)."""
        self.used += 1

    def _choose(self, logits: torch.Tensor) -> None:
        # generate's greedy choice: the last position's logits as float32, argmax
        self.token.copy_(logits[:, -1, :].float().argmax(dim=-1, keepdim=True))

    def clear(self, everything: bool = False) -> None:
        """Zero what earlier requests wrote (`everything`: the whole cache, after a capture). Masked
        positions weigh nothing, but a stale non-finite value would still poison the attention (0 * inf)."""
        end = self.capacity if everything else self.used
        with torch.inference_mode():
            for layer in self.cache.layers:
                layer.keys[:, :, :end].zero_()
                layer.values[:, :, :end].zero_()
            self.token.zero_()
            self.cache_position.zero_()
            self.rope_delta.zero_()
        self.used = 0


@dataclass
class Timing:
    """The last request's figures."""

    tokens: int = 0
    prefill_s: float = 0.0
    per_token_ms: float = 0.0
    positions: int = 0  # of the cache it ran on
    graphed: bool = False


class DecodeLoop:
    """Greedy decoding on static caches; with a `runtime`, each resident cache's step replays a graph
    captured here.

    capacities: the resident caches, in positions; a request takes the smallest that holds it. None or
    empty: each request gets a cache of exactly its size (eager only).
    """

    def __init__(
        self,
        thinker,
        eos_ids: Iterable[int],
        capacities: Optional[Sequence[int]] = CAPACITIES,
        runtime: Optional[GraphRuntime] = None,
    ) -> None:
        if runtime is not None and not capacities:
            raise ValueError("a captured step needs a resident cache: give capacities")
        self.thinker = thinker
        self.eos_ids = frozenset(eos_ids)
        self.resident = [StaticSteps(thinker, capacity) for capacity in sorted(capacities or ())]
        self.runtime = runtime
        self.graphs: List[Graph] = self._capture() if runtime is not None else []
        self.timing = Timing()

    def _capture(self) -> List[Graph]:
        started = time.monotonic()
        with torch.inference_mode():
            # one memory pool: the graphs never replay at the same time
            graphs = capture_all(self.runtime, [steps.step for steps in self.resident])
        for steps in self.resident:  # the warm-up runs (and the stand-in's capture) stepped from position 0
            steps.clear(everything=True)
        _LOGGER.info(
            "Captured the ASR decode step (%s graphs, caches of %s positions) in %.2f s",
            self.runtime.name,
            "/".join(str(steps.capacity) for steps in self.resident),
            time.monotonic() - started,
        )
        return graphs

    def _steps_for(self, positions: int) -> Tuple[StaticSteps, Callable[[], None], bool]:
        """The cache for a request of `positions`, its step, and whether that step is a graph."""
        for index, steps in enumerate(self.resident):
            if positions <= steps.capacity:
                if self.graphs:
                    return steps, self.graphs[index].replay, True
                return steps, steps.step, False
        steps = StaticSteps(self.thinker, positions)
        return steps, steps.step, False

    def generate(
        self,
        inputs: Mapping[str, torch.Tensor],
        max_new_tokens: int,
        after_token: Callable[[List[int]], bool],
    ) -> List[int]:
        """New token ids after the prompt in `inputs` (the processor's tensors on the model's device), as
        the official generate gives them: up to `max_new_tokens`, ending at an EOS id (kept) or where
        `after_token(tokens so far)`, called after each token like a stopping criterion, returns True."""
        steps, step, graphed = self._steps_for(inputs["input_ids"].shape[1] + max_new_tokens)
        started = time.perf_counter()
        with torch.inference_mode():
            steps.prefill(inputs)
            tokens = [steps.token.item()]  # the one host read per token
            prefilled = time.perf_counter()
            while not self._done(tokens, max_new_tokens, after_token):
                step()
                steps.stepped()
                tokens.append(steps.token.item())
        per_token = (time.perf_counter() - prefilled) / max(1, len(tokens) - 1)
        self.timing = Timing(len(tokens), prefilled - started, 1000 * per_token, steps.capacity, graphed)
        _LOGGER.debug(
            "Decoded %d tokens on a cache of %d positions (%s): prefill %.3f s, %.2f ms per token",
            len(tokens),
            steps.capacity,
            "graph" if graphed else "eager",
            prefilled - started,
            1000 * per_token,
        )
        return tokens

    def _done(self, tokens: List[int], max_new_tokens: int, after_token: Callable[[List[int]], bool]) -> bool:
        # generate evaluates every stopping criterion after each token, the caller's included
        stop = after_token(tokens)
        return stop or tokens[-1] in self.eos_ids or len(tokens) >= max_new_tokens
