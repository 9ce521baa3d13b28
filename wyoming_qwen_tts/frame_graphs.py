"""`--cuda-graphs`: the step loop's two steps captured once as CUDA graphs and replayed for every frame.

Stock generation launches hundreds of small kernels per 80 ms frame (16 forward passes), so on a GPU it is
bound by launch overhead. A replayed graph launches them all at once. The graphs are captured at load
time over `FrameSteps`' static buffers and a talker cache of fixed length (`CAPACITY`, prompt plus frames);
a longer sentence, or one asking for other code-predictor sampling settings than those captured, runs the
same steps eagerly. Off by default until a GPU run has shown the graphs to be correct and faster (README).
"""

from __future__ import annotations

import logging
import time

import torch

from .step_loop import FrameSteps, StepLoop, TokenSampler

_LOGGER = logging.getLogger(__name__)

CAPACITY = 2048  # talker positions: about a 600-character sentence at the frame cap, or 2.5 min of speech
WARMUP_RUNS = 2


class FrameGraphs:
    """predict_codes and talker_step of one `FrameSteps`, as replayable CUDA graphs."""

    def __init__(self, steps: FrameSteps, predictor_sampler: TokenSampler) -> None:
        self.steps = steps
        self.sampler = predictor_sampler
        self._predict = torch.cuda.CUDAGraph()
        self._step = torch.cuda.CUDAGraph()
        self._capture()

    def _capture(self) -> None:
        steps = self.steps
        steps.predictor_sampler = self.sampler
        config = steps.talker.config
        hidden = steps.past_hidden.shape[-1]
        device, dtype = steps.past_hidden.device, steps.past_hidden.dtype
        # a two-position prompt creates the caches' tensors (they are made on first use)
        steps.prefill(
            torch.zeros(1, 2, hidden, dtype=dtype, device=device),
            torch.ones(1, 2, dtype=torch.long, device=device),
            torch.zeros(1, 1, hidden, dtype=dtype, device=device),
            torch.zeros(1, 1, hidden, dtype=dtype, device=device),
        )
        steps.position.fill_(2)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                steps.predict_codes()
                steps.talker_step()
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(self._predict):
            steps.predict_codes()
        with torch.cuda.graph(self._step, pool=self._predict.pool()):
            steps.talker_step()
        steps.talker_cache.reset()
        _LOGGER.debug("Captured CUDA graphs for %d code groups", config.num_code_groups)

    def usable_with(self, sampler: TokenSampler) -> bool:
        """The captured graph has the code predictor's sampling settings built in."""
        return sampler.settings() == self.sampler.settings()

    def predict_codes(self) -> None:
        self._predict.replay()

    def talker_step(self) -> None:
        self._step.replay()


def graphed_step_loop(tts) -> StepLoop:
    """A StepLoop for `tts` (a Qwen3TTSModel on CUDA) whose steps replay CUDA graphs, captured now with the
    checkpoint's own code-predictor sampling settings."""
    started = time.monotonic()
    talker = tts.model.talker
    defaults = getattr(tts, "generate_defaults", None) or {}
    device = talker.get_input_embeddings().weight.device
    sampler = TokenSampler(
        talker.config.code_predictor_config.vocab_size,
        device,
        defaults.get("subtalker_dosample", True),
        defaults.get("subtalker_top_k", 50),
        defaults.get("subtalker_top_p", 1.0),
        defaults.get("subtalker_temperature", 0.9),
    )
    steps = FrameSteps(talker, CAPACITY)
    loop = StepLoop(talker, steps=steps, graphs=FrameGraphs(steps, sampler))
    _LOGGER.info("Captured the TTS frame loop as CUDA graphs in %.2f s", time.monotonic() - started)
    return loop
