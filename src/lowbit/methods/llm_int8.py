"""LLM.int8() (Dettmers et al. 2022, https://arxiv.org/abs/2208.07339), the guide's "load in 8-bit, no
calibration" option: int8 weights per output row (vector-wise, bit-identical to bitsandbytes'
``int8_vectorwise_quant``), int8 activations per token at run time except the outlier columns
(|x| >= ``threshold``), which are multiplied in float32. The layer is
:class:`~lowbit.modules.int8_linear.LinearInt8`.

    qh, report = lowbit.quantize(model, lowbit.make_config("int8", threshold=6.0))

Trade-offs: near-lossless at 8 bits with no data; the outlier split costs speed, and the gain in memory
is 2x over 16-bit weights, not 4x.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from lowbit.calib.stats import LayerStats
from lowbit.errors import InputError
from lowbit.methods.base import MethodConfig, register_method
from lowbit.modules.int8_linear import LinearInt8


@dataclass(frozen=True)
class LLMInt8Config(MethodConfig):
    threshold: float = field(default=6.0, metadata={
        "help": "LLM.int8 activation outlier threshold; 0 turns the outlier decomposition off."})

    def __post_init__(self) -> None:
        if not self.threshold >= 0:
            raise InputError(f"threshold={self.threshold}: must be >= 0 (0 turns the outlier decomposition off)")


@register_method("int8", LLMInt8Config, summary="LLM.int8(): int8 rows, outlier activation columns in float32",
                 produces="layer")
def llm_int8(linear: nn.Linear, cfg: LLMInt8Config, stats: LayerStats | None = None) -> nn.Module:
    return LinearInt8(linear, cfg.threshold)
