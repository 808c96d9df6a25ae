"""NF4 / FP4 / LLM.int8 in bitsandbytes' own kernels, for timing them where they deploy: a copy of a
model whose lowbit bitsandbytes-format layers (modules/bnb4_linear.py, modules/int8_linear.py) are
bitsandbytes' ``Linear4bit`` / ``Linear8bitLt``, quantized by bitsandbytes from the layer's exact
dequantized weight. Every weight and block constant of a single-quantized 4-bit layer comes back the
same (each block's largest weight is its absmax times the codebook's 1.0, every other weight a codebook
value times it; NF4's codes too, FP4's up to its two codes for zero), and
the double-quantized and int8 layers keep their format, block size and threshold: the same work for the
kernels. Speed only: quality is always scored on lowbit's exact weights.
"""

from __future__ import annotations

import copy
import importlib.util

import torch
from torch import nn

from lowbit.modules.bnb4_linear import Linear4bit
from lowbit.modules.int8_linear import LinearInt8


def available() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def version() -> str:
    import bitsandbytes

    return bitsandbytes.__version__


def _linear4bit(mod: Linear4bit) -> nn.Module:
    import bitsandbytes as bnb

    new = bnb.nn.Linear4bit(mod.in_features, mod.out_features, bias=mod.bias is not None, compute_dtype=torch.float32,
                            compress_statistics=mod.double_quant, quant_type=mod.quant_type, device="meta")
    new.weight = bnb.nn.Params4bit(mod.dequantize(torch.float32), requires_grad=False, blocksize=mod.blocksize,
                                   compress_statistics=mod.double_quant, quant_type=mod.quant_type).to("cpu")
    if mod.bias is not None:
        new.bias = nn.Parameter(mod.bias.detach().clone(), requires_grad=False)
    return new


def _linear8bit(mod: LinearInt8) -> nn.Module:
    import bitsandbytes as bnb

    new = bnb.nn.Linear8bitLt(mod.in_features, mod.out_features, bias=mod.bias is not None, has_fp16_weights=False,
                              threshold=mod.threshold, device="meta")
    new.weight = bnb.nn.Int8Params(mod.dequantize(torch.float32), requires_grad=False, has_fp16_weights=False).to("cpu")
    if mod.bias is not None:
        new.bias = nn.Parameter(mod.bias.detach().clone(), requires_grad=False)
    return new


def to_bitsandbytes(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``model`` with its NF4/FP4 and LLM.int8 layers in bitsandbytes, and how many were swapped."""
    out, n = copy.deepcopy(model), 0
    for name, mod in list(out.named_modules()):
        if isinstance(mod, (Linear4bit, LinearInt8)):
            parent, _, child = name.rpartition(".")
            setattr(out.get_submodule(parent) if parent else out, child,
                    _linear4bit(mod) if isinstance(mod, Linear4bit) else _linear8bit(mod))
            n += 1
    return out.eval(), n
