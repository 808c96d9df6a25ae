"""bitsandbytes-style NF4 / FP4 (QLoRA, Dettmers et al. 2023, https://arxiv.org/abs/2305.14314): the
guide's lowest-friction option, no calibration. Every selected Linear becomes a
:class:`~lowbit.modules.bnb4_linear.Linear4bit` whose codes and constants are bit-identical to
``bitsandbytes.functional.quantize_4bit``; double quantization re-quantizes the block constants (4.127
bits per weight for NF4 at block 64).

    qh, report = lowbit.quantize(model, lowbit.make_config("nf4", double_quant=True))

Trade-offs: seconds to run and no data, but round-to-nearest on a fixed 16-value grid: below GPTQ/AWQ
at 4 bits, and lowbit's layer dequantizes per forward on CPU (bitsandbytes' own kernels are the fast path).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from lowbit.calib.stats import LayerStats
from lowbit.errors import InputError
from lowbit.methods.base import MethodConfig, register_method
from lowbit.modules.bnb4_linear import Linear4bit


@dataclass(frozen=True)
class Bnb4Config(MethodConfig):
    double_quant: bool = field(default=False, metadata={"help": "re-quantize the block constants (QLoRA)."})
    blocksize: int = field(default=64, metadata={"help": "weights per absmax block."})

    def __post_init__(self) -> None:
        if self.blocksize not in (32, 64, 128, 256, 512, 1024, 2048, 4096):
            raise InputError(f"blocksize={self.blocksize}: bitsandbytes blocks are 32, 64, 128, ... 4096 weights")


@dataclass(frozen=True)
class NF4Config(Bnb4Config):
    """NF4: 16 quantiles of a normal distribution, absmax per block."""


@dataclass(frozen=True)
class FP4Config(Bnb4Config):
    """FP4: a 4-bit float (e2m1), absmax per block."""


@register_method("nf4", NF4Config, summary="bitsandbytes NF4 (QLoRA), block 64, optional double quant",
                 produces="layer")
def nf4(linear: nn.Linear, cfg: NF4Config, stats: LayerStats | None = None) -> nn.Module:
    return Linear4bit.from_linear(linear, "nf4", cfg.double_quant, cfg.blocksize)


@register_method("fp4", FP4Config, summary="bitsandbytes FP4, block 64, optional double quant", produces="layer")
def fp4(linear: nn.Linear, cfg: FP4Config, stats: LayerStats | None = None) -> nn.Module:
    return Linear4bit.from_linear(linear, "fp4", cfg.double_quant, cfg.blocksize)
