"""Checks on what a model file says before any library builds or fills a model from it: the config's
fields have the types and ranges transformers assumes, the layer count is what the weights hold, every
weight the architecture declares is in the file with its shape and nothing unknown is beside it, and
no weight is NaN or inf. Each violation is one InputError naming the file, the field or tensor, and
what was expected; nothing is ever filled in with random values.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from lowbit.errors import InputError

# integer fields of transformers configs: (largest sane value, whether null is allowed)
INT_FIELDS = {
    "hidden_size": (1 << 20, False), "intermediate_size": (1 << 22, False), "num_hidden_layers": (4096, False),
    "num_attention_heads": (1 << 14, False), "num_key_value_heads": (1 << 14, True), "vocab_size": (1 << 24, False),
    "max_position_embeddings": (1 << 24, True), "head_dim": (1 << 16, True), "type_vocab_size": (1 << 16, False),
    "n_layer": (4096, False), "n_head": (1 << 14, False), "n_embd": (1 << 20, False), "n_positions": (1 << 24, True),
    "num_layers": (4096, False), "d_model": (1 << 20, False), "ffn_dim": (1 << 22, False),
    "sliding_window": (1 << 24, True), "n_inner": (1 << 22, True),
}
FLOAT_FIELDS = ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "rope_theta", "initializer_range",
                "attention_dropout", "hidden_dropout_prob", "attention_probs_dropout_prob", "query_pre_attn_scalar",
                "final_logit_softcapping", "attn_logit_softcapping")
LAYER_FIELDS = ("num_hidden_layers", "n_layer", "num_layers")
LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")
# tensors a checkpoint may hold that no parameter takes (buffers transformers recomputes)
IGNORABLE = re.compile(r"(rotary_emb\.inv_freq|position_ids|\.attn\.bias|\.attn\.masked_bias|num_batches_tracked)$")


def check_config(raw: dict[str, Any], where: str) -> None:
    """Types and ranges of the fields transformers builds a model from."""
    for key, (limit, nullable) in INT_FIELDS.items():
        if key not in raw:
            continue
        v = raw[key]
        if v is None and nullable:
            continue
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= limit:
            raise InputError(f"{where}: {key} must be an integer from 1 to {limit}, got {v!r}")
    for key in FLOAT_FIELDS:
        v = raw.get(key)
        if v is None:
            continue
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
            raise InputError(f"{where}: {key} must be a finite number >= 0, got {v!r}")
    for key in ("model_type",):
        if key in raw and not isinstance(raw[key], str):
            raise InputError(f"{where}: {key} must be a string, got {raw[key]!r}")
    archs = raw.get("architectures")
    if archs is not None and not (isinstance(archs, list) and all(isinstance(a, str) for a in archs)):
        raise InputError(f"{where}: architectures must be a list of class names, got {archs!r}")
    qc = raw.get("quantization_config")
    if qc is not None and not isinstance(qc, dict):
        raise InputError(f"{where}: quantization_config must be a JSON object, got {type(qc).__name__} {qc!r}")


def check_layer_count(raw: dict[str, Any], names: Iterable[str], where: str) -> None:
    """The config's layer count against the layers the weights hold (before a model that size is built)."""
    key = next((k for k in LAYER_FIELDS if isinstance(raw.get(k), int)), None)
    if key is None:
        return
    held = {int(m.group(1)) for n in names if (m := LAYER_INDEX.search(n))}
    if held and raw[key] > len(held):  # (names it does not recognise: the weight check after the build decides)
        raise InputError(f"{where}: config.json says {key} = {raw[key]}, but the weights hold {len(held)} layer(s)")


def check_weights(model: nn.Module, shapes: dict[str, tuple[int, ...]], where: str,
                  resolve: Callable[[str], list[str]] | None = None) -> dict[str, str]:
    """Every parameter of ``model`` (on meta) in ``shapes`` (the file's tensor -> shape) with its shape,
    and every tensor of the file used by a parameter or buffer (or one transformers recomputes).
    Returns parameter name -> the file's key."""
    from lowbit.loaders.lazy import bind

    files, _ = bind(model, shapes, where, resolve)
    for name, p in model.named_parameters(remove_duplicate=False):
        got = tuple(shapes[files[name]])
        if got != tuple(p.shape):
            raise InputError(f"{where}: tensor {files[name]} has shape {list(got)}, the model config needs "
                             f"{list(p.shape)}")
    used = set(files.values())
    for name, _ in model.named_buffers():
        used.update(k for k in (resolve(name) if resolve else [name]) if k in shapes)
    extra = sorted(k for k in shapes if k not in used and not IGNORABLE.search(k))
    if extra:
        raise InputError(f"{where} holds {len(extra)} tensor(s) the model does not use (e.g. {', '.join(extra[:3])}); "
                         f"a renamed or foreign tensor, or a config that does not match the weights")
    return files


def allow_nonfinite() -> bool:
    """Whether NaN / inf weights and importances are accepted ($LOWBIT_ALLOW_NONFINITE, set by
    ``lowbit --allow-nonfinite``)."""
    return os.environ.get("LOWBIT_ALLOW_NONFINITE", "") not in ("", "0")


def check_finite(tensors: Iterable[tuple[str, torch.Tensor]], where: str) -> None:
    """NaN or inf in a floating-point weight is an error naming it, unless :func:`allow_nonfinite`."""
    if allow_nonfinite():
        return
    for name, t in tensors:
        if t.is_floating_point() and t.device.type != "meta" and t.numel() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise InputError(f"{where}: tensor {name} holds {bad} NaN/inf value(s); pass --allow-nonfinite to load "
                             f"it anyway")
