"""lowbit's native checkpoint: a Hugging Face directory whose Linear layers hold packed codes.

    DIR/config.json          the model's config + quantization_config {"quant_method": "lowbit", ...}
    DIR/model.safetensors    every tensor; QuantizedLinear layers as  <name>.qweight / .scale / .zero
                             (metadata "lowbit" repeats the quantization record)
    DIR/tokenizer*           the tokenizer, when the model has one

loaders/checkpoint.py reads it back (bit-identical logits).
The directory is written beside its final path and renamed into place: never half-written.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lowbit.errors import ExportError
from lowbit.loaders.checkpoint import FORMAT_VERSION
from lowbit.loaders.handle import ModelHandle
from lowbit.writers.guard import check_output
from lowbit.writers.hfdir import write_model_dir


def _dedupe(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Drop tensors that share storage with an earlier one (tied weights); return the tie map."""
    seen: dict[tuple[int, tuple[int, ...]], str] = {}
    out: dict[str, torch.Tensor] = {}
    ties: dict[str, str] = {}
    for k, v in state.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), v.stride()) if v.numel() else (id(v),)
        if key in seen:
            ties[k] = seen[key]
            continue
        seen[key] = k
        out[k] = v.detach().contiguous()
    return out, ties


def save_checkpoint(handle: ModelHandle, out: str | Path, overwrite: bool = False) -> Path:
    """Write ``handle`` (a quantized model) to ``out``; returns the path."""
    out = check_output(out, overwrite)
    if handle.quant is None:
        raise ExportError("this model is not quantized by lowbit; nothing to save as a lowbit checkpoint")
    tensors, ties = _dedupe(handle.model.state_dict())
    record = dict(handle.quant, quant_method="lowbit", format_version=FORMAT_VERSION, tied=ties, kind=handle.kind)
    config = getattr(handle.model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise ExportError("only models with a Hugging Face config can be saved as a reloadable checkpoint")
    cfg = dict(config.to_dict(), quantization_config=record)
    return write_model_dir(out, tensors, cfg, handle.tokenizer, metadata={"lowbit": json.dumps(record)})
