"""GGUF (llama.cpp) weight types as a method: every selected Linear becomes a
:class:`~lowbit.modules.ggml_linear.GGMLLinear` holding the type's own blocks, bit-exact with
llama.cpp's ``ggml_quantize_chunk`` (formats/ggml/). `lowbit export --format gguf` writes those
blocks unchanged.

    qh, report = lowbit.quantize(model, lowbit.make_config("gguf", type="Q4_K"))

One type for every selected layer; the per-tensor mixes (Q4_K_M...) and importance matrices belong to
GGUF export (writers/gguf.py), which plans each tensor's type the way llama-quantize does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from torch import nn

from lowbit.calib.stats import LayerStats
from lowbit.errors import InputError
from lowbit.formats.ggml import GGML_TYPES
from lowbit.methods.base import MethodConfig, register_method
from lowbit.modules.ggml_linear import GGMLLinear


@dataclass(frozen=True)
class GGUFConfig(MethodConfig):
    type: str = field(default="Q4_K", metadata={"help": "The GGML weight type (Q8_0, Q4_0, Q4_K, Q6_K...)."})

    def __post_init__(self) -> None:
        if self.type.upper() not in GGML_TYPES:
            raise InputError(f"type={self.type!r}: not a GGML type; choose one of {', '.join(sorted(GGML_TYPES))}")
        object.__setattr__(self, "type", self.type.upper())

    def check_layer(self, shape: tuple[int, ...], name: str) -> None:
        GGML_TYPES.get(self.type).check(np.zeros((1, shape[-1]), dtype=np.float32), name)


@register_method("gguf", GGUFConfig, summary="one llama.cpp weight type for every layer (GGML blocks)",
                 produces="layer")
def gguf(linear: nn.Linear, cfg: GGUFConfig, stats: LayerStats | None = None) -> nn.Module:
    return GGMLLinear.from_linear(linear, cfg.type)
