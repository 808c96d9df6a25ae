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
    if cfg.model_type == "gemma3_text" and getattr(cfg, "layer_types", None):  # llama.cpp assumes 5 sliding, 1 full
        w.add_sliding_window_pattern([t == "sliding_attention" for t in cfg.layer_types])


def _rope_params(cfg: Any) -> dict[str, Any]:
    """transformers' rope parameters (``rope_parameters``, or ``rope_scaling`` before 5.0); per layer type
    for Gemma 3, of which the full-attention layers' are the model's."""
    params = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    full = params.get("full_attention")
    return full if isinstance(full, dict) else params


def _rope_type(cfg: Any) -> str:
    return str(_rope_params(cfg).get("rope_type") or "default").lower()


def _orig_ctx(cfg: Any) -> int:
    return int(_rope_params(cfg).get("original_max_position_embeddings")
               or getattr(cfg, "original_max_position_embeddings", None) or cfg.max_position_embeddings)


def _rope_kv(w: gguf.GGUFWriter, cfg: Any) -> None:
    """Rope scaling as llama.cpp's converter writes it for most architectures: linear and YaRN by keys,
    Llama 3's by a tensor (see :func:`_llama3_freqs`); the sliding layers' own base (Gemma 3)."""
    p, kind = _rope_params(cfg), _rope_type(cfg)
    if kind == "linear" and p.get("factor"):
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(p["factor"]))
    elif kind == "yarn" and p.get("factor"):
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(float(p["factor"]))
        w.add_rope_scaling_orig_ctx_len(int(p["original_max_position_embeddings"]))
        for key, add in (("extrapolation_factor", w.add_rope_scaling_yarn_ext_factor),
                         ("attention_factor", w.add_rope_scaling_yarn_attn_factor),
                         ("beta_fast", w.add_rope_scaling_yarn_beta_fast), ("beta_slow", w.add_rope_scaling_yarn_beta_slow)):
            if p.get(key) is not None:
                add(float(p[key]))
    swa = (getattr(cfg, "rope_parameters", None) or {}).get("sliding_attention")
    if isinstance(swa, dict) and swa.get("rope_theta") is not None:
        w.add_rope_freq_base_swa(float(swa["rope_theta"]))


def _llama3_freqs(cfg: Any) -> dict[str, np.ndarray]:
    """Llama 3.1's rope scaling as llama.cpp takes it: one divisor per rotary frequency, in
    ``rope_freqs.weight`` (the frequency bands of Meta's rule: high ones kept, low ones divided by
    ``factor``, a smooth ramp between)."""
    if _rope_type(cfg) != "llama3":
        return {}
    return {"rope_freqs.weight": llama3_divisors(_rope_params(cfg), _head_dim(cfg), _rope_theta(cfg))}


def llama3_divisors(p: dict[str, Any], dim: int, theta: float) -> np.ndarray:
    """The divisors of Llama 3's rule with parameters ``p`` for a rotary size ``dim`` and base ``theta``."""
    freqs = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)))
    factor, lo, hi = float(p.get("factor", 8.0)), float(p.get("low_freq_factor", 1.0)), float(p.get("high_freq_factor", 4.0))
    old = float(p.get("original_max_position_embeddings", 8192))
    wavelen = 2 * np.pi / freqs.astype(np.float64)
    smooth = (old / wavelen - lo) / (hi - lo)
    out = np.where(wavelen < old / hi, 1.0, np.where(wavelen > old / lo, factor, 1 / ((1 - smooth) / factor + smooth)))
    return out.astype(np.float32)


def _phi3_kv(w: gguf.GGUFWriter, cfg: Any) -> None:
    """Phi-3's keys as its converter writes them: the original context, the sliding window (0 for none)
    and, for long-rope models, the attention factor transformers scales cos / sin by."""
    w.add_rope_scaling_orig_ctx_len(_orig_ctx(cfg))
    w.add_sliding_window(int(getattr(cfg, "sliding_window", None) or 0))
    if _rope_type(cfg) in ("longrope", "su"):
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        w.add_rope_scaling_attn_factors(float(ROPE_INIT_FUNCTIONS["longrope"](cfg, None)[1]))


def _phi3_factors(cfg: Any) -> dict[str, np.ndarray]:
    """Phi-3's long-rope frequency divisors (``n_rot / 2`` each): llama.cpp takes the long ones when its
    context exceeds the original one, as transformers does when the sequence does."""
    if _rope_type(cfg) not in ("longrope", "su"):
        return {}
    p = _rope_params(cfg)
    half = int(_head_dim(cfg) * float(p.get("partial_rotary_factor", 1.0))) // 2
    out = {f"rope_factors_{k}.weight": np.asarray(p[f"{k}_factor"], dtype=np.float32) for k in ("long", "short")}
    if any(a.shape != (half,) for a in out.values()):
        raise InputError(f"Phi-3 long-rope factors must have {half} values each; the config has "
                         f"{len(p['long_factor'])} and {len(p['short_factor'])}")
    return out


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
    ropes: tuple[str, ...] = ("default", "linear", "yarn")  # the rope types llama.cpp runs for it
    extras: Callable[[Any], dict[str, np.ndarray]] | None = None  # tensors made from the config (rope factors)

    @property
    def arch(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.gguf]


_LLAMA_ROPES = ("default", "linear", "yarn", "llama3")
ARCHS: dict[str, Arch] = {a.name: a for a in (
    Arch("llama", gguf.MODEL_ARCH.LLAMA, permute_qk=True, ropes=_LLAMA_ROPES, extras=_llama3_freqs),
    Arch("mistral", gguf.MODEL_ARCH.LLAMA, permute_qk=True, ropes=_LLAMA_ROPES, extras=_llama3_freqs),  # as "llama"
    Arch("qwen2", gguf.MODEL_ARCH.QWEN2),
    Arch("qwen3", gguf.MODEL_ARCH.QWEN3),
    Arch("phi3", gguf.MODEL_ARCH.PHI3, extra_kv=_phi3_kv, ropes=("default", "longrope", "su"),  # fused qkv, gate_up
         extras=_phi3_factors),
    Arch("gemma2", gguf.MODEL_ARCH.GEMMA2, norm_shift=1.0, extra_kv=_gemma_kv),
    Arch("gemma3_text", gguf.MODEL_ARCH.GEMMA3, norm_shift=1.0, extra_kv=_gemma_kv),
    Arch("bert", gguf.MODEL_ARCH.BERT, encoder=True, drops=("pooler.", "cls.")),
)}


def arch_of(cfg: Any, what: str = "the model") -> Arch:
    kind = getattr(cfg, "model_type", None)
    if kind not in ARCHS:
        raise InputError(f"GGUF export supports the architectures {', '.join(sorted(ARCHS))}; {what} is {kind!r}")
    arch = ARCHS[kind]
    if not arch.encoder and _rope_type(cfg) not in arch.ropes:
        raise InputError(f"GGUF export of {kind} supports the rope types {', '.join(arch.ropes)}; {what} has "
                         f"{_rope_type(cfg)!r}")
    return arch


# GGUF tensors llama.cpp computes with that no Hugging Face parameter holds
NOT_PARAMETERS = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")


def extra_tensors(cfg: Any) -> dict[str, np.ndarray]:
    """GGUF tensors llama.cpp computes with that the config, not a parameter, holds (rope factors)."""
    arch = arch_of(cfg)
    return arch.extras(cfg) if arch.extras is not None else {}


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
    if arch.gguf != gguf.MODEL_ARCH.PHI3:  # Phi-3's converter writes its own rope keys only
        _rope_kv(w, cfg)
