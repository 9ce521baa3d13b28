"""Our own frame loop over the talker and the 15-step code predictor, with static KV caches.

It stands in for `talker.generate` only: the official wrapper still builds the prompt of every voice
kind (preset speaker, cloned voice, designed voice) and calls `talker.generate(**talker_kwargs)`. After
the prefill, each frame is one fixed-shape step over static buffers (`FrameSteps.frame`), which on CUDA is
captured once as a CUDA graph and replayed (`frame_graphs.py`):
- `predict_codes`: codebook 0 and the talker's last hidden state in; the 15 code-predictor forwards with
  their sampling, out come the frame's 16 codes and the sum of their embeddings;
- `talker_step`: that sum plus the frame's text embedding in; one talker forward, the choice of the next
  codebook 0, and the positions advanced.
Both run the models' own forward (`code_predictor(...)`, `talker.model(...)`, `talker.codec_head`), or with
`lean=True` on a CPU the same layers through `lean_decoder.LeanDecoder`, bit for bit the same without Hugging
Face's per-call machinery (the CPU's default, see `cpu_step_loop`).

The codes equal the official `generate`'s (greedy and seeded sampling; tests/test_step_loop.py):
`TokenSampler` applies the logits processors that Hugging Face's `generate` builds from the talker's
arguments, in the same order and with the same tensor operations, and draws a sample the way
`torch.multinomial` draws one (an exponential race: argmax of probs / Exp(1) noise), so the random stream
is consumed identically. Unlike `torch.multinomial`, that draw makes no host synchronisation, so sampling
stays on the GPU; the only host read in a frame is the one copy of its codes and the next codebook 0
(end-of-speech check) after the step.
"""

from __future__ import annotations

import math
from typing import Iterator, Optional, Sequence, Union

import torch
from transformers.cache_utils import StaticCache

from . import lean_decoder

CODE_PREDICTOR_POSITIONS = 16  # its prompt (talker hidden state, codebook 0) plus 14 steps


class TokenSampler:
    """Hugging Face `generate`'s choice of the next token for one sequence, for the arguments Qwen3-TTS
    passes, without host synchronisation. Processors in HF's order: repetition penalty, minimum new
    tokens, suppressed tokens; when sampling, temperature, top-k, top-p."""

    def __init__(
        self,
        vocab_size: int,
        device,
        do_sample: bool,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        temperature: Optional[float] = None,
        repetition_penalty: Optional[float] = None,
        suppress_tokens: Optional[Sequence[int]] = None,
        eos_token_id: Optional[int] = None,
        min_new_tokens: Optional[int] = None,
    ) -> None:
        self.do_sample = bool(do_sample)
        self.temperature = temperature if temperature not in (None, 1.0) else None
        self.top_k = min(max(top_k, 1), vocab_size) if top_k else None
        self.top_p = top_p if top_p is not None and top_p < 1.0 else None
        self.penalty = repetition_penalty if repetition_penalty not in (None, 1.0) else None
        self.seen = torch.zeros(1, vocab_size, dtype=torch.bool, device=device) if self.penalty else None
        self.suppressed = _mask(vocab_size, suppress_tokens, device) if suppress_tokens else None
        self.suppressed_ids = tuple(sorted(suppress_tokens or ()))
        self.min_new_tokens = min_new_tokens or 0
        self.eos_token_id = eos_token_id
        self.eos = _mask(vocab_size, [eos_token_id], device) if eos_token_id is not None else None

    def settings(self) -> tuple:
        return (
            self.do_sample, self.temperature, self.top_k, self.top_p, self.penalty, self.min_new_tokens,
            self.eos_token_id, self.suppressed_ids,
        )  # fmt: skip

    @torch.inference_mode()
    def reset(self) -> None:
        """Forget the tokens of the last sequence (the repetition penalty's memory), in place."""
        if self.seen is not None:
            self.seen.zero_()

    def __call__(self, logits: torch.Tensor, new_tokens: Union[int, torch.Tensor] = 0) -> torch.Tensor:
        """logits: (1, vocab) float32; new_tokens: how many tokens this sequence has already generated (an
        int, or a one-element tensor on the device, which a captured step reads). Returns the chosen token,
        shape (1, 1)."""
        scores = self.scores(logits, new_tokens)
        if self.do_sample:
            probs = torch.nn.functional.softmax(scores, dim=-1)
            token = torch.argmax(probs / torch.empty_like(probs).exponential_(1), dim=-1, keepdim=True)
        else:
            token = torch.argmax(scores, dim=-1, keepdim=True)
        if self.seen is not None:
            self.seen.scatter_(1, token, True)
        return token

    def scores(self, logits: torch.Tensor, new_tokens: Union[int, torch.Tensor] = 0) -> torch.Tensor:
        """The logits after the processors, as HF's processor list leaves them."""
        scores = logits
        if self.penalty is not None:
            penalized = torch.where(scores < 0, scores * self.penalty, scores / self.penalty)
            scores = torch.where(self.seen, penalized, scores)
        if self.eos is not None and self.min_new_tokens:
            if isinstance(new_tokens, torch.Tensor):  # decided on the device: the same operators every frame
                scores = torch.where(self.eos & (new_tokens < self.min_new_tokens), -math.inf, scores)
            elif new_tokens < self.min_new_tokens:
                scores = torch.where(self.eos, -math.inf, scores)
        if self.suppressed is not None:
            scores = torch.where(self.suppressed, -math.inf, scores)
        if not self.do_sample:
            return scores
        if self.temperature is not None:
            scores = scores / self.temperature
        if self.top_k is not None:
            scores = scores.masked_fill(scores < torch.topk(scores, self.top_k)[0][..., -1, None], -math.inf)
        if self.top_p is not None:
            sorted_logits, sorted_indices = torch.sort(scores, descending=False)
            remove = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= (1 - self.top_p)
            remove[..., -1:] = 0
            scores = scores.masked_fill(remove.scatter(1, sorted_indices, remove), -math.inf)
        return scores


def _mask(vocab_size: int, tokens: Sequence[int], device) -> torch.Tensor:
    mask = torch.zeros(1, vocab_size, dtype=torch.bool, device=device)
    mask[0, list(tokens)] = True
    return mask


class FrameSteps:
    """The steps of a frame over static buffers (see the module docstring). `capacity` is the talker cache
    length: prompt plus frames. The samplers are set per sentence (`start`); a captured frame keeps the
    ones it was captured with. lean: the layers run through `lean_decoder` where it is supported."""

    def __init__(self, talker, capacity: int, lean: bool = False) -> None:
        self.talker = talker
        self.predictor = talker.code_predictor
        self.capacity = capacity
        embedding = talker.get_input_embeddings().weight
        device, dtype, hidden = embedding.device, embedding.dtype, embedding.shape[1]
        self.talker_cache = StaticCache(config=talker.config, max_cache_len=capacity)
        self.predictor_cache = StaticCache(config=self.predictor.config, max_cache_len=CODE_PREDICTOR_POSITIONS)
        self.lean = lean and lean_decoder.supported(talker.model) and lean_decoder.supported(self.predictor.model)
        if self.lean:
            self.lean_talker = lean_decoder.LeanDecoder(talker.model, self.talker_cache)
            self.lean_predictor = lean_decoder.LeanDecoder(self.predictor.model, self.predictor_cache)
            with torch.inference_mode():
                self.predictor_cos, self.predictor_sin = lean_decoder.predictor_rotary(
                    self.predictor.model, CODE_PREDICTOR_POSITIONS, embedding
                )
                self.predictor_positions = torch.arange(CODE_PREDICTOR_POSITIONS, device=device)
        self.sampler: Optional[TokenSampler] = None  # the talker's (codebook 0)
        self.predictor_sampler: Optional[TokenSampler] = None
        groups = talker.config.num_code_groups
        with torch.inference_mode():
            # inputs and outputs of predict_codes
            self.token = torch.zeros(1, 1, dtype=torch.long, device=device)
            self.past_hidden = torch.zeros(1, 1, hidden, dtype=dtype, device=device)
            self.codes_embedding = torch.zeros(1, 1, hidden, dtype=dtype, device=device)
            # inputs of talker_step
            self.text = torch.zeros(1, 1, hidden, dtype=dtype, device=device)
            self.position = torch.zeros(1, dtype=torch.long, device=device)
            self.new_tokens = torch.zeros(1, dtype=torch.long, device=device)
            self.rope_delta = torch.zeros(1, 1, dtype=torch.long, device=device)
            self.logits = torch.zeros(1, talker.config.vocab_size, dtype=torch.float32, device=device)
            # what the host reads after a frame: its 16 codes, then the next codebook 0
            self.out = torch.zeros(groups + 1, dtype=torch.long, device=device)

    def start(self, sampler: TokenSampler, predictor_sampler: TokenSampler) -> None:
        self.sampler, self.predictor_sampler = sampler, predictor_sampler
        sampler.reset()
        predictor_sampler.reset()

    @torch.inference_mode()
    def prefill(self, inputs_embeds, attention_mask, trailing_text_hidden, tts_pad_embed) -> torch.Tensor:
        """The official talker forward over the prompt (it also sets the talker's rope deltas); chooses the
        first codebook 0 into `token`, sets the positions, leaves the hidden state in `past_hidden`, and
        returns the token."""
        self.talker_cache.reset()
        length = inputs_embeds.shape[1]
        out = self.talker(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            past_key_values=self.talker_cache,
            cache_position=torch.arange(length, device=inputs_embeds.device),
            use_cache=True,
            trailing_text_hidden=trailing_text_hidden,
            tts_pad_embed=tts_pad_embed,
        )
        self.past_hidden.copy_(out.past_hidden)
        self.rope_delta.copy_(self.talker.rope_deltas.reshape(1, 1))
        self.token.copy_(self.sampler(out.logits[:, -1, :].to(copy=True, dtype=torch.float32), new_tokens=0))
        self.position.fill_(length)
        self.new_tokens.fill_(1)
        return self.token

    @torch.inference_mode()
    def frame(self) -> None:
        """One frame: `predict_codes`, then `talker_step` (what a captured graph replays)."""
        self.predict_codes()
        self.talker_step()

    @torch.inference_mode()
    def predict_codes(self) -> None:
        """token, past_hidden -> out[:16] (the frame's codes), codes_embedding: the code predictor's 15 steps,
        as in the talker's official forward."""
        predictor, sampler = self.predictor, self.predictor_sampler
        self.predictor_cache.reset()
        first = self.talker.get_input_embeddings()(self.token)
        if self.lean:
            return self._predict_codes_lean(first)
        device = first.device
        out = predictor(
            inputs_embeds=torch.cat((self.past_hidden, first), dim=1),
            past_key_values=self.predictor_cache,
            cache_position=torch.arange(2, device=device),
            use_cache=True,
        )
        codes = [sampler(out.logits[:, -1, :].to(copy=True, dtype=torch.float32))]
        for step in range(1, self.talker.config.num_code_groups - 1):
            out = predictor(
                input_ids=codes[-1],
                generation_steps=step,
                past_key_values=self.predictor_cache,
                cache_position=torch.arange(step + 1, step + 2, device=device),
                use_cache=True,
            )
            codes.append(sampler(out.logits[:, -1, :].to(copy=True, dtype=torch.float32)))
        self._take_codes(first, codes)

    def _predict_codes_lean(self, first: torch.Tensor) -> None:
        """predict_codes through the lean decoder: the predictor's official forward, op for op (its input
        projection, layers, final norm, and the head of each step over every position it is given)."""
        predictor, sampler = self.predictor, self.predictor_sampler
        inputs = predictor.small_to_mtp_projection(torch.cat((self.past_hidden, first), dim=1))
        hidden = self._lean_predictor_step(inputs, 0, 2)
        codes = [sampler(predictor.lm_head[0](hidden)[:, -1, :].to(copy=True, dtype=torch.float32))]
        tables = predictor.model.get_input_embeddings()
        for step in range(1, self.talker.config.num_code_groups - 1):
            inputs = predictor.small_to_mtp_projection(tables[step - 1](codes[-1]))
            hidden = self._lean_predictor_step(inputs, step + 1, 1)
            codes.append(sampler(predictor.lm_head[step](hidden)[:, -1, :].to(copy=True, dtype=torch.float32)))
        self._take_codes(first, codes)

    def _lean_predictor_step(self, inputs: torch.Tensor, start: int, length: int) -> torch.Tensor:
        positions = slice(start, start + length)
        return self.lean_predictor(
            inputs, self.predictor_positions[positions],
            self.predictor_cos[:, positions], self.predictor_sin[:, positions],
        )  # fmt: skip

    def _take_codes(self, first: torch.Tensor, codes: list) -> None:
        embeddings = self.predictor.get_input_embeddings()
        hiddens = torch.cat([first] + [embeddings[i](code) for i, code in enumerate(codes)], dim=1)
        self.out[:-1].copy_(torch.cat([self.token] + codes, dim=1)[0])
        self.codes_embedding.copy_(hiddens.sum(1, keepdim=True))

    @torch.inference_mode()
    def talker_step(self) -> None:
        """codes_embedding + text at `position` -> past_hidden, logits, and the next codebook 0 into `token` and
        out[16]; the positions move on by one."""
        position_ids = (self.position + self.rope_delta).view(1, 1, 1).expand(3, 1, 1)
        inputs = self.codes_embedding + self.text
        if self.lean:
            cos, sin = lean_decoder.talker_rotary(self.talker.model, inputs, position_ids)
            hidden = self.lean_talker(inputs, self.position, cos, sin)
        else:
            out = self.talker.model(
                inputs_embeds=inputs,
                position_ids=position_ids,
                past_key_values=self.talker_cache,
                cache_position=self.position,
                use_cache=True,
            )
            hidden = out.last_hidden_state
        self.logits.copy_(self.talker.codec_head(hidden)[:, -1, :])
        self.past_hidden.copy_(hidden[:, -1:, :])
        token = self.sampler(self.logits, new_tokens=self.new_tokens)
        self.token.copy_(token)
        self.out[-1:].copy_(token[0])
        self.position.add_(1)
        self.new_tokens.add_(1)

    @torch.inference_mode()
    def reset(self) -> None:
        """Empty the caches and buffers in place (after a capture, whose warm-up runs wrote into them)."""
        self.talker_cache.reset()
        self.predictor_cache.reset()
        buffers = (self.token, self.past_hidden, self.codes_embedding, self.text, self.position, self.new_tokens)
        for buffer in (*buffers, self.rope_delta, self.logits, self.out):
            buffer.zero_()
        for sampler in (self.sampler, self.predictor_sampler):
            if sampler is not None:
                sampler.reset()


class StepLoop:
    """`talker.generate`'s frames, one at a time, from `FrameSteps` (eager, or a replayed graph)."""

    def __init__(self, talker, steps: Optional[FrameSteps] = None, graphs=None, lean: bool = False) -> None:
        """steps: kept across sentences, with a talker cache of fixed length (what graphs need); None makes
        steps with a cache of the right length for each sentence (lean: through `lean_decoder`). graphs: a
        `frame_graphs.FrameGraphs` over `steps`, or None."""
        self.talker = talker
        self.fixed = steps
        self.graphs = graphs
        self.lean = lean
        self.graphed_sentences = 0  # sentences that replayed the graphs (for logs and tests)

    def frames(
        self,
        inputs_embeds,
        attention_mask,
        trailing_text_hidden,
        tts_pad_embed,
        max_new_tokens,
        eos_token_id,
        do_sample=True,
        top_k=None,
        top_p=None,
        temperature=None,
        repetition_penalty=None,
        suppress_tokens=None,
        min_new_tokens=None,
        subtalker_dosample=True,
        subtalker_top_k=None,
        subtalker_top_p=None,
        subtalker_temperature=None,
        **_ignored,
    ) -> Iterator[torch.Tensor]:
        """Yields each frame's 16 codes (on the host) as the official `talker.generate` with these arguments
        would produce them: at most `max_new_tokens - 1`, none after end-of-speech."""
        if inputs_embeds.shape[0] != 1:
            raise ValueError("the step loop generates one sequence at a time")
        config = self.talker.config
        device = inputs_embeds.device
        length = inputs_embeds.shape[1]
        sampler = TokenSampler(
            config.vocab_size, device, do_sample, top_k, top_p, temperature, repetition_penalty,
            suppress_tokens, eos_token_id, min_new_tokens,
        )  # fmt: skip
        predictor_sampler = TokenSampler(
            config.code_predictor_config.vocab_size, device, subtalker_dosample,
            subtalker_top_k, subtalker_top_p, subtalker_temperature,
        )  # fmt: skip
        steps, frame = self._steps_for(length + max_new_tokens, sampler, predictor_sampler)
        token = int(steps.prefill(inputs_embeds, attention_mask, trailing_text_hidden, tts_pad_embed))
        text_frames = trailing_text_hidden.shape[1]
        for index in range(max_new_tokens - 1):
            if token == eos_token_id:
                return
            with torch.inference_mode():
                steps.text.copy_(trailing_text_hidden[:, index : index + 1] if index < text_frames else tts_pad_embed)
            frame()
            out = steps.out.tolist()  # the one host read of a frame
            yield torch.tensor(out[:-1])
            token = out[-1]

    def _steps_for(self, positions: int, sampler: TokenSampler, predictor_sampler: TokenSampler):
        """The steps and the frame callable for a sentence needing `positions` talker positions: the graphs
        when they fit it (cache length, sampling settings), else the same steps eagerly."""
        graphs, steps = self.graphs, self.fixed
        if graphs is not None and graphs.usable_with(positions, sampler, predictor_sampler):
            graphs.steps.start(graphs.sampler, graphs.predictor_sampler)  # the samplers the graphs read
            self.graphed_sentences += 1
            return graphs.steps, graphs.frame
        if steps is None or positions > steps.capacity or steps is getattr(graphs, "steps", None):
            steps = FrameSteps(self.talker, positions, lean=self.lean)
        steps.start(sampler, predictor_sampler)
        return steps, steps.frame


def cpu_step_loop(talker) -> Optional[StepLoop]:
    """The CPU's frame loop: our steps through the lean decoder, each sentence with a cache of its own length
    (the attention reads the whole static cache). None where the lean decoder is not supported: the official
    `generate` then streams, as fast as the step loop through the official forward."""
    if not (lean_decoder.supported(talker.model) and lean_decoder.supported(talker.code_predictor.model)):
        return None
    return StepLoop(talker, lean=True)
