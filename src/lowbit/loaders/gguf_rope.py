"""A GGUF's rope scaling back into the transformers config, which its GGUF reader leaves at the default:
linear and YaRN from their keys, Gemma 3's sliding-layer pattern, Phi-3's long-rope factors from their
tensors, and Llama 3's rule fitted to the ``rope_freqs`` divisors llama.cpp's converter computed from it
(checked by recomputing them). Without this a Llama 3.x, Phi-3 128k or Gemma 3 GGUF would be evaluated
in torch with rope positions llama.cpp does not use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lowbit.errors import InputError


def _value(reader: Any, key: str) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return None
    part = f.parts[-1]
    return bytes(part).decode() if f.types and f.types[-1].name == "STRING" else part[0].item()


def _tensor(reader: Any, name: str) -> np.ndarray | None:
    t = next((t for t in reader.tensors if t.name == name), None)
    return None if t is None else np.asarray(t.data, dtype=np.float32).reshape(-1)


def _set(config: Any, params: dict[str, Any]) -> None:
    """Into the full-attention layers' parameters (Gemma 3 keeps one set per layer type), else the model's."""
    rope = dict(getattr(config, "rope_parameters", None) or {})
    if isinstance(rope.get("full_attention"), dict):
        rope["full_attention"] = {**rope["full_attention"], **params}
    else:
        rope.update(params)
    config.rope_parameters = rope


def rope_from_gguf(config: Any, reader: Any, arch: str, path: Path) -> None:
    kind = _value(reader, f"{arch}.rope.scaling.type")
    factor = _value(reader, f"{arch}.rope.scaling.factor")
    if kind == "linear" and factor:
        _set(config, {"rope_type": "linear", "factor": float(factor)})
    elif kind == "yarn" and factor:
        params = {"rope_type": "yarn", "factor": float(factor),
                  "original_max_position_embeddings": int(_value(reader, f"{arch}.rope.scaling.original_context_length"))}
        for key, name in (("yarn_ext_factor", "extrapolation_factor"), ("yarn_attn_factor", "attention_factor"),
                          ("yarn_beta_fast", "beta_fast"), ("yarn_beta_slow", "beta_slow")):
            if (v := _value(reader, f"{arch}.rope.scaling.{key}")) is not None:
                params[name] = float(v)
        _set(config, params)
    pattern = reader.fields.get(f"{arch}.attention.sliding_window_pattern")
    if arch == "gemma3" and pattern is not None and len(pattern.data) == config.num_hidden_layers:
        config.layer_types = ["sliding_attention" if bool(pattern.parts[i][0]) else "full_attention" for i in pattern.data]
    long, short = _tensor(reader, "rope_factors_long.weight"), _tensor(reader, "rope_factors_short.weight")
    if long is not None and short is not None:
        orig = int(_value(reader, f"{arch}.rope.scaling.original_context_length"))
        _set(config, {"rope_type": "longrope", "long_factor": long.tolist(), "short_factor": short.tolist(),
                      "original_max_position_embeddings": orig,
                      "attention_factor": float(_value(reader, f"{arch}.rope.scaling.attn_factor") or 1.0)})
        if hasattr(config, "original_max_position_embeddings"):  # where Phi-3 picks long or short
            config.original_max_position_embeddings = orig
    freqs = _tensor(reader, "rope_freqs.weight")
    if freqs is not None:
        _set(config, _llama3_params(config, freqs, path))


def _llama3_params(config: Any, divisors: np.ndarray, path: Path) -> dict[str, Any]:
    """Llama 3's rope parameters that give ``divisors``: the largest is ``factor``; the ramp between
    the kept and the divided frequencies, linear in 1 / wavelength, gives the band edges (with
    ``low_freq_factor`` 1: only the edges matter). Refused if the rule does not give them back."""
    from lowbit.formats.ggml.names import llama3_divisors

    dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
    theta = float((config.rope_parameters or {}).get("rope_theta", getattr(config, "rope_theta", 10000.0)))
    wavelen = 2 * np.pi * theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    factor = float(divisors.max())
    ramp = (divisors > 1 + 1e-6) & (divisors < factor - 1e-6)
    if factor <= 1 + 1e-6 or ramp.sum() < 2:
        raise InputError(f"{path}: its rope_freqs tensor is not Llama 3's rope rule (no ramp between the bands); "
                         "lowbit cannot evaluate it in torch as llama.cpp does")
    smooth = (1 / divisors[ramp] - 1 / factor) / (1 - 1 / factor)
    a, minus_b = np.polyfit(1 / wavelen[ramp], smooth, 1)
    b = -minus_b
    orig = float(a / b)
    params = {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": float(1 + 1 / b),
              "original_max_position_embeddings": round(orig) if abs(orig - round(orig)) < 1e-3 else orig, "rope_theta": theta}
    if not np.allclose(llama3_divisors(params, dim, theta), divisors, rtol=1e-4):
        raise InputError(f"{path}: its rope_freqs tensor does not follow Llama 3's rope rule; lowbit cannot "
                         "evaluate it in torch as llama.cpp does")
    return params
