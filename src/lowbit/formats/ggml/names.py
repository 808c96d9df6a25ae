"""Llama tensor names and layout in GGUF (llama.cpp's convert_hf_to_gguf conventions)."""

from __future__ import annotations

import re

import numpy as np

_BLOCK = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}
_TOP = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")


def gguf_name(hf_name: str) -> str | None:
    """``model.layers.3.mlp.down_proj.weight`` -> ``blk.3.ffn_down.weight`` (None: not a llama tensor)."""
    base, _, leaf = hf_name.rpartition(".")
    if base in _TOP:
        return f"{_TOP[base]}.{leaf}"
    m = _LAYER.fullmatch(base)
    if m and m.group(2) in _BLOCK:
        return f"blk.{m.group(1)}.{_BLOCK[m.group(2)]}.{leaf}"
    return None


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face's rotary layout -> llama.cpp's (interleaved pairs), for attn_q / attn_k rows."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
