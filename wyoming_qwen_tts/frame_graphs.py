"""The step loop's frame captured once as a graph and replayed for every frame (on by default on CUDA).

Stock generation launches hundreds of small kernels per 80 ms frame (16 forward passes and their
sampling), each from Python, so on a GPU it is bound by launch overhead, not by the GPU. A replayed graph
launches a whole frame (the 15 code-predictor steps, the talker step and both samplings) at once. The
graph is captured at load time, through the `shared.graphs` seam, over `FrameSteps`' static buffers, a
talker cache of fixed length (`CAPACITY`: prompt plus frames) and the checkpoint's own sampling settings.
A longer sentence, or one asking for other sampling settings, runs the same steps eagerly.

`granularity="steps"` captures the code predictor and the talker step as two graphs instead of one, and
`compile_frame` compiles the frame with torch.compile before capturing it: both for `script/bench
tts-graphs` to measure what they gain.
"""

from __future__ import annotations

import logging
import time
from typing import Optional

import torch

from shared.graphs import GraphRuntime, capture_all, runtime_for

from .step_loop import FrameSteps, StepLoop, TokenSampler

_LOGGER = logging.getLogger(__name__)

CAPACITY = 2048  # talker positions: about a 600-character sentence at the frame cap, or 2.5 min of speech
GRANULARITIES = ("frame", "steps")


class FrameGraphs:
    """`FrameSteps.frame` of one `FrameSteps`, captured with these samplers."""

    def __init__(
        self,
        steps: FrameSteps,
        sampler: TokenSampler,
        predictor_sampler: TokenSampler,
        runtime: GraphRuntime,
        granularity: str = "frame",
        compile_frame: bool = False,
    ) -> None:
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, not {granularity!r}")
        self.steps = steps
        self.sampler = sampler
        self.predictor_sampler = predictor_sampler
        self.runtime = runtime
        self.granularity = granularity
        self.compile_frame = compile_frame
        self._graphs = self._capture()

    def _capture(self):
        steps = self.steps
        steps.start(self.sampler, self.predictor_sampler)
        hidden = steps.past_hidden.shape[-1]
        device, dtype = steps.past_hidden.device, steps.past_hidden.dtype
        # a two-position prompt creates the talker cache's tensors (a StaticCache makes them on first use)
        with torch.inference_mode():
            steps.prefill(
                torch.zeros(1, 2, hidden, dtype=dtype, device=device),
                torch.ones(1, 2, dtype=torch.long, device=device),
                torch.zeros(1, 1, hidden, dtype=dtype, device=device),
                torch.zeros(1, 1, hidden, dtype=dtype, device=device),
            )
        parts = [steps.frame] if self.granularity == "frame" else [steps.predict_codes, steps.talker_step]
        if self.compile_frame:  # compiled by the first warm-up run, before the capture
            parts = [torch.compile(part, dynamic=False) for part in parts]
        graphs = capture_all(self.runtime, parts)
        # the warm-up runs (and the stand-in's capture) wrote into the caches and buffers
        steps.reset()
        return graphs

    def usable_with(self, positions: int, sampler: TokenSampler, predictor_sampler: TokenSampler) -> bool:
        """The graph has the cache length and both samplers' settings built in."""
        return (
            positions <= self.steps.capacity
            and sampler.settings() == self.sampler.settings()
            and predictor_sampler.settings() == self.predictor_sampler.settings()
        )

    def frame(self) -> None:
        for graph in self._graphs:
            graph.replay()


def checkpoint_samplers(tts, device):
    """The talker's and the code predictor's samplers for the checkpoint's own generation defaults, with the
    arguments the official wrapper passes to `talker.generate` (suppressed control tokens, at least 2 new)."""
    talker = tts.model.talker
    config = talker.config
    # the wrapper's own merge of its hard defaults with the checkpoint's generate_config.json
    defaults = tts._merge_generate_kwargs()
    eos = config.codec_eos_token_id
    suppressed = [i for i in range(config.vocab_size - 1024, config.vocab_size) if i != eos]
    sampler = TokenSampler(
        config.vocab_size, device, defaults["do_sample"], defaults["top_k"], defaults["top_p"],
        defaults["temperature"], defaults["repetition_penalty"], suppressed, eos, 2,
    )  # fmt: skip
    predictor_sampler = TokenSampler(
        config.code_predictor_config.vocab_size, device, defaults["subtalker_dosample"],
        defaults["subtalker_top_k"], defaults["subtalker_top_p"], defaults["subtalker_temperature"],
    )  # fmt: skip
    return sampler, predictor_sampler


def graphed_step_loop(
    tts,
    runtime: Optional[GraphRuntime] = None,
    granularity: str = "frame",
    capacity: int = CAPACITY,
    compile_frame: bool = False,
) -> StepLoop:
    """A StepLoop for `tts` (a Qwen3TTSModel) whose frames replay a graph captured now with the checkpoint's
    own sampling settings. runtime: default the device's (`shared.graphs.runtime_for`)."""
    started = time.monotonic()
    talker = tts.model.talker
    device = talker.get_input_embeddings().weight.device
    runtime = runtime or runtime_for(device)
    sampler, predictor_sampler = checkpoint_samplers(tts, device)
    steps = FrameSteps(talker, capacity)
    graphs = FrameGraphs(steps, sampler, predictor_sampler, runtime, granularity, compile_frame)
    _LOGGER.info(
        "Captured the TTS frame loop (%s graphs, %s) in %.2f s", runtime.name, granularity, time.monotonic() - started
    )
    return StepLoop(talker, steps=steps, graphs=graphs)
