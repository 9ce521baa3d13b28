"""The talker's and the code predictor's decoder layers over a static cache, bit for bit the official
forward, without Hugging Face's per-call machinery: for the step loop on a CPU.

On a CPU a frame is 16 one-token forwards of small models, and around their int8 products the official
forward spends its time in Python and in small operators: it builds a causal mask (`create_causal_mask`)
and the rotary tables on every call, the talker re-assembles its M-RoPE sections in each of its 28 layers,
and the q and k heads are normalised and rotated separately. Here the mask is one comparison, the rotary
tables are made once per forward (the predictor's 16 positions once per load), and q and k share one
norm and one rotation. Each fusion keeps every element's arithmetic:
- the q and k norms as one: each head row is reduced on its own, then multiplied by its own norm weight;
- rotate_half(x) * sin as flip(halves of x) * sin with its first half negated: negation is exact.
The attention is the official attention function, the norms' and layers' modules are the official ones.
`tests/test_lean_decoder.py` holds the logits equal to the official forward's, and the step loop's codes
stay the official `generate`'s (tests/test_tts_frames.py).

Only where it is measured and checked: the CPU (float32 and int8), full attention (no sliding window), the
`sdpa` and `eager` attention implementations. Elsewhere `supported` says no and the step loop runs the
official forward; on CUDA the frame graph removes the per-call costs anyway.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from transformers.cache_utils import StaticCache

ATTENTIONS = ("sdpa", "eager")


def supported(model) -> bool:
    """Whether `model` (a talker or code predictor decoder) can run here bit for bit."""
    config = model.config
    device = next(model.parameters()).device
    return (
        device.type == "cpu"
        and getattr(config, "sliding_window", None) is None
        and config._attn_implementation in ATTENTIONS
    )


def _attention_function(config):
    if config._attn_implementation == "eager":
        from qwen_tts.core.models import modeling_qwen3_tts

        return modeling_qwen3_tts.eager_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS[config._attn_implementation]


class LeanDecoder:
    """`model`'s layers and final norm for the tokens at `cache_position`, writing their keys and values into
    `cache` (a StaticCache of `model`'s config), with the rotary tables given (see `rotary_tables`)."""

    def __init__(self, model, cache: StaticCache) -> None:
        config = model.config
        self.layers = list(model.layers[: config.num_hidden_layers])
        self.norm = model.norm
        self.cache = cache
        self.attention = _attention_function(config)
        self.key_positions = torch.arange(cache.max_cache_len, device=next(model.parameters()).device)
        self.qk_weights = []
        for layer in self.layers:
            attention = layer.self_attn
            if attention.q_norm.variance_epsilon != attention.k_norm.variance_epsilon:
                raise ValueError("the q and k norms differ in epsilon")
            heads = attention.q_proj.out_features // attention.head_dim
            kv_heads = attention.k_proj.out_features // attention.head_dim
            weight = torch.cat(
                [
                    attention.q_norm.weight.detach()[None].expand(heads, -1),
                    attention.k_norm.weight.detach()[None].expand(kv_heads, -1),
                ]
            )
            self.qk_weights.append((weight, heads))

    @torch.inference_mode()
    def __call__(
        self, hidden: torch.Tensor, cache_position: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor:
        """hidden: (1, L, width); cache_position: (L,); cos, sin: (1, L, head_dim). Returns the normed hidden
        states, (1, L, width)."""
        mask = (self.key_positions[None, :] <= cache_position[:, None])[None, None]
        cos, sin = cos[:, None], sin[:, None]
        half = cos.shape[-1] // 2
        signed_sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
        length = hidden.shape[1]
        for index, layer in enumerate(self.layers):
            attention = layer.self_attn
            head_dim = attention.head_dim
            residual = hidden
            x = layer.input_layernorm(hidden)
            # q first: int8 siblings compute the fused q/k/v product in q_proj and hand out its columns
            queries = attention.q_proj(x).view(1, length, -1, head_dim)
            keys = attention.k_proj(x).view(1, length, -1, head_dim)
            values = attention.v_proj(x).view(1, length, -1, head_dim).transpose(1, 2)
            qk = torch.cat((queries, keys), dim=2)
            qk = self._norm_heads(qk, index, attention.q_norm.variance_epsilon).transpose(1, 2)
            qk = qk * cos + qk.unflatten(-1, (2, half)).flip(-2).flatten(-2) * signed_sin
            heads = self.qk_weights[index][1]
            cached = self.cache.layers[index]
            if not cached.is_initialized:
                cached.lazy_initialization(qk[:, heads:])
            cached.keys.index_copy_(2, cache_position, qk[:, heads:])
            cached.values.index_copy_(2, cache_position, values)
            out = self.attention(
                attention, qk[:, :heads], cached.keys, cached.values, mask,
                dropout=0.0, scaling=attention.scaling, sliding_window=None,
            )[0]  # fmt: skip
            hidden = residual + attention.o_proj(out.reshape(1, length, -1).contiguous())
            residual = hidden
            hidden = residual + layer.mlp(layer.post_attention_layernorm(hidden))
        return self.norm(hidden)

    def _norm_heads(self, heads: torch.Tensor, index: int, eps: float) -> torch.Tensor:
        """The official RMS norm of each head row, q heads with q_norm's weight and k heads with k_norm's."""
        dtype = heads.dtype
        heads = heads.to(torch.float32)
        heads = heads * torch.rsqrt(heads.pow(2).mean(-1, keepdim=True) + eps)
        return self.qk_weights[index][0] * heads.to(dtype)


def predictor_rotary(model, positions: int, like: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The code predictor's rotary tables for positions 0..positions-1, (1, positions, head_dim) each: its
    own rotary module's, made once (a position's row is the same whichever positions are asked with it)."""
    ids = torch.arange(positions, device=like.device)[None]
    return model.rotary_emb(like, ids)


def talker_rotary(model, hidden: torch.Tensor, position_ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The talker's M-RoPE tables for `position_ids` (3, 1, L), merged from its sections as the official
    `apply_multimodal_rotary_pos_emb` merges them in each layer: (1, L, head_dim) each."""
    cos, sin = model.rotary_emb(hidden, position_ids)
    scaling = model.config.rope_scaling
    section, interleaved = scaling["mrope_section"], scaling.get("interleaved", False)
    return _merge_sections(cos, section, interleaved), _merge_sections(sin, section, interleaved)


def _merge_sections(table: torch.Tensor, section, interleaved: Optional[bool]) -> torch.Tensor:
    if interleaved:
        half = table[..., : table.shape[-1] // 2]
        modalities = len(section)
        merged = half[0].clone()
        for index, count in enumerate(section[1:], 1):
            end = count * modalities
            merged[..., index:end:modalities] = half[index, ..., index:end:modalities]
        return torch.cat([merged] * 2, dim=-1)
    parts = table.split(list(section) * 2, dim=-1)
    return torch.cat([part[index % 3] for index, part in enumerate(parts)], dim=-1)
