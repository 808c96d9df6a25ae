"""A lowbit NF4/FP4 model as the checkpoint transformers + bitsandbytes load with
``AutoModelForCausalLM.from_pretrained(DIR)``: ``quantization_config`` as BitsAndBytesConfig serializes
it, and per quantized Linear the tensors ``Linear4bit`` writes: ``<name>.weight`` (packed codes,
(n/2, 1) uint8), ``.weight.absmax``, ``.weight.quant_map``, with double quantization
``.weight.nested_absmax`` / ``.weight.nested_quant_map``, and ``.weight.quant_state.bitsandbytes__<type>``
(the remaining fields as JSON bytes). The codes are bitsandbytes' own (formats/bnb4.py), so the loaded
layers dequantize to exactly lowbit's weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lowbit.errors import ExportError
from lowbit.formats.bnb4 import code4, dynamic_map
from lowbit.loaders.handle import ModelHandle
from lowbit.modules.bnb4_linear import Linear4bit
from lowbit.writers.checkpoint import _dedupe
from lowbit.writers.guard import check_output
from lowbit.writers.hfdir import write_model_dir


def _json_bytes(d: dict) -> torch.Tensor:
    return torch.tensor(list(json.dumps(d).encode("utf-8")), dtype=torch.uint8)


def export_bnb(handle: ModelHandle, out: str | Path, overwrite: bool = False) -> Path:
    out = check_output(out, overwrite)
    mods, cfg = plan(handle.model)
    tensors, _ = _dedupe(bnb_tensors(handle.model.state_dict(), mods))
    return write_model_dir(out, tensors, cfg, handle.tokenizer, metadata={"format": "pt"})


def plan(model: torch.nn.Module) -> tuple[dict[str, Linear4bit], dict[str, Any]]:
    """The 4-bit layers and config.json (checked: one 4-bit type, a Hugging Face config)."""
    mods = {n: m for n, m in model.named_modules() if isinstance(m, Linear4bit)}
    if not mods:
        raise ExportError("bitsandbytes export needs a model quantized with nf4 or fp4 (lowbit quantize --method nf4)")
    kinds = {(m.quant_type, m.double_quant, m.blocksize) for m in mods.values()}
    if len(kinds) != 1:
        raise ExportError(f"bitsandbytes checkpoints hold one 4-bit type; this model mixes {sorted(kinds)}")
    qt, dq, _block = kinds.pop()
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise ExportError("only models with a Hugging Face config can be exported for transformers")
    skipped = sorted(n for n, mod in model.named_modules() if isinstance(mod, torch.nn.Linear) and n not in mods)
    qcfg = {"quant_method": "bitsandbytes", "load_in_4bit": True, "load_in_8bit": False, "bnb_4bit_quant_type": qt,
            "bnb_4bit_use_double_quant": dq, "bnb_4bit_compute_dtype": "float32", "bnb_4bit_quant_storage": "uint8",
            "llm_int8_skip_modules": skipped or None, "llm_int8_threshold": 6.0, "llm_int8_has_fp16_weight": False}
    return mods, dict(config.to_dict(), quantization_config=qcfg, torch_dtype="float32")


def bnb_tensors(state: dict[str, torch.Tensor], mods: dict[str, Linear4bit]) -> dict[str, torch.Tensor]:
    """``state`` (a state dict, or part of one) as bitsandbytes stores it: each 4-bit layer of ``mods``
    whose tensors are in ``state`` as Linear4bit's serialized weight and quant state."""
    mine = {n: m for n, m in mods.items() if any(k.startswith(f"{n}.") for k in state)}
    state = {k: v for k, v in state.items()
             if not any(k.startswith(f"{n}.") and not k.endswith(".bias") for n in mine)}
    for name, m in mine.items():
        qt, dq, block = m.quant_type, m.double_quant, m.blocksize
        state[f"{name}.weight"] = m.packed.reshape(-1, 1)
        state[f"{name}.weight.absmax"] = m.absmax
        state[f"{name}.weight.quant_map"] = code4(qt).clone()
        meta = {"quant_type": qt, "blocksize": block, "dtype": "float32", "shape": [m.out_features, m.in_features]}
        if dq:
            state[f"{name}.weight.nested_absmax"] = m.absmax2
            state[f"{name}.weight.nested_quant_map"] = dynamic_map().clone()
            meta.update(nested_blocksize=256, nested_dtype="float32", nested_offset=float(m.offset))
        state[f"{name}.weight.quant_state.bitsandbytes__{qt}"] = _json_bytes(meta)
    return state
