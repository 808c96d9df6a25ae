"""Architectures in GGUF: tensor names from gguf-py's own name maps (llama.cpp's ``TensorNameMap``),
the layout changes llama.cpp's converter makes, and each architecture's hyperparameter keys.

    arch = arch_of(model.config)                  # "qwen3" -> QWEN3, or one error listing the supported
    gguf_name("model.layers.3.mlp.down_proj.weight", model.config)   # "blk.3.ffn_down.weight"

Layout, as ``convert_hf_to_gguf.py`` writes it: Llama-family q/k rows permuted into llama.cpp's rotary
order (Hugging Face keeps the two halves apart); Gemma's RMSNorm weights stored as 1 + w (Hugging Face
multiplies by 1 + w, llama.cpp by w).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gguf
import numpy as np

from lowbit.errors import InputError


def _head_dim(cfg: Any) -> int:
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def _rope_theta(cfg: Any, default: float = 10000.0) -> float:
    theta = getattr(cfg, "rope_theta", None)
    return float(theta if theta is not None else _rope_params(cfg).get("rope_theta", default))


def _gemma_kv(w: gguf.GGUFWriter, cfg: Any) -> None:
    if getattr(cfg, "sliding_window", None):
        w.add_sliding_window(int(cfg.sliding_window))
    if getattr(cfg, "attn_logit_softcapping", None):
        w.add_attn_logit_softcapping(float(cfg.attn_logit_softcapping))
    if getattr(cfg, "final_logit_softcapping", None):
        w.add_final_logit_softcapping(float(cfg.final_logit_softcapping))


def _rope_params(cfg: Any) -> dict[str, Any]:
    """transformers' rope parameters (``rope_parameters``, or ``rope_scaling`` before 5.0); per layer type
    for Gemma 3, of which the full-attention layers' are the model's."""
    params = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    full = params.get("full_attention")
    return full if isinstance(full, dict) else params


def _phi3_kv(w: gguf.GGUFWriter, cfg: Any) -> None:
    if _rope_params(cfg).get("rope_type", "default") != "default":
        raise InputError("GGUF export of Phi-3 with rope scaling (its long-context factors) is not supported yet")
    w.add_rope_scaling_orig_ctx_len(int(getattr(cfg, "original_max_position_embeddings", None)
                                        or cfg.max_position_embeddings))
    w.add_sliding_window(int(getattr(cfg, "sliding_window", None) or 0))


@dataclass(frozen=True)
class Arch:
    """How one Hugging Face ``model_type`` is written: its llama.cpp architecture and the converter's
    changes to its tensors."""

    name: str  # the Hugging Face model_type
    gguf: gguf.MODEL_ARCH
    permute_qk: bool = False
    norm_shift: float = 0.0
    extra_kv: Callable[[gguf.GGUFWriter, Any], None] | None = None
    encoder: bool = False  # BERT: layer norms, absolute positions, no causal mask, pooled embeddings
    drops: tuple[str, ...] = ()  # Hugging Face modules the converter leaves out (BERT's pooler)

    @property
    def arch(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.gguf]


ARCHS: dict[str, Arch] = {a.name: a for a in (
    Arch("llama", gguf.MODEL_ARCH.LLAMA, permute_qk=True),
    Arch("mistral", gguf.MODEL_ARCH.LLAMA, permute_qk=True),  # llama.cpp runs Mistral as "llama"
    Arch("qwen2", gguf.MODEL_ARCH.QWEN2),
    Arch("qwen3", gguf.MODEL_ARCH.QWEN3),
    Arch("phi3", gguf.MODEL_ARCH.PHI3, extra_kv=_phi3_kv),  # fused qkv_proj and gate_up_proj, as llama.cpp reads them
    Arch("gemma2", gguf.MODEL_ARCH.GEMMA2, norm_shift=1.0, extra_kv=_gemma_kv),
    Arch("gemma3_text", gguf.MODEL_ARCH.GEMMA3, norm_shift=1.0, extra_kv=_gemma_kv),
    Arch("bert", gguf.MODEL_ARCH.BERT, encoder=True, drops=("pooler.", "cls.")),
)}


def arch_of(cfg: Any, what: str = "the model") -> Arch:
    kind = getattr(cfg, "model_type", None)
    if kind not in ARCHS:
        raise InputError(f"GGUF export supports the architectures {', '.join(sorted(ARCHS))}; {what} is {kind!r}")
    return ARCHS[kind]


@functools.lru_cache(maxsize=16)
def _name_map(arch: gguf.MODEL_ARCH, n_blocks: int) -> gguf.TensorNameMap:
    return gguf.get_tensor_name_map(arch, n_blocks)


def gguf_name(hf_name: str, cfg: Any) -> str | None:
    """``model.layers.3.mlp.down_proj.weight`` -> ``blk.3.ffn_down.weight``, by gguf-py's map for the
    architecture of ``cfg`` (None: a tensor llama.cpp's architecture has no place for)."""
    tmap = _name_map(arch_of(cfg).gguf, int(cfg.num_hidden_layers))
    return tmap.get_name(hf_name, try_suffixes=(".weight", ".bias"))


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face's rotary layout -> llama.cpp's (interleaved pairs), for attn_q / attn_k rows."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's rotary row order back to Hugging Face's (the inverse of :func:`permute_qk`)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def arch_kv(w: gguf.GGUFWriter, cfg: Any, name: str) -> None:
    """The hyperparameters llama.cpp reads for ``cfg``'s architecture (keys under ``{arch}.``)."""
    arch = arch_of(cfg)
    w.add_name(name)
    w.add_context_length(int(cfg.max_position_embeddings))
    w.add_embedding_length(int(cfg.hidden_size))
    w.add_block_count(int(cfg.num_hidden_layers))
    w.add_feed_forward_length(int(cfg.intermediate_size))
    w.add_head_count(int(cfg.num_attention_heads))
    if arch.encoder:  # pooled as lowbit evaluates encoders (and sentence-transformers' MiniLM): mean
        w.add_layer_norm_eps(float(cfg.layer_norm_eps))
        w.add_causal_attention(False)
        w.add_pooling_type(gguf.PoolingType.MEAN)
        w.add_token_type_count(int(getattr(cfg, "type_vocab_size", None) or 1))
        w.add_vocab_size(int(cfg.vocab_size))
        return
    head_dim = _head_dim(cfg)
    w.add_head_count_kv(int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads))
    w.add_rope_freq_base(_rope_theta(cfg))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    if head_dim != cfg.hidden_size // cfg.num_attention_heads or arch.gguf != gguf.MODEL_ARCH.LLAMA:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_rope_dimension_count(int(head_dim * float(_rope_params(cfg).get("partial_rotary_factor", 1.0))))
    w.add_vocab_size(int(cfg.vocab_size))
    if arch.extra_kv is not None:
        arch.extra_kv(w, cfg)
