"""bitsandbytes-style NF4 / FP4 (QLoRA): the guide's lowest-friction option, no calibration. Every
selected Linear becomes a :class:`~lowbit.modules.bnb4_linear.Linear4bit` whose codes and constants are
bit-identical to ``bitsandbytes.functional.quantize_4bit``; double quantization re-quantizes the block
constants (4.127 bits per weight for NF4 at block 64).

    qh, report = quantize_bnb4(load_model("smollm2"), "nf4", double_quant=True)

Joins `lowbit compare` as the "bitsandbytes" family (bnb-nf4, bnb-nf4-dq, bnb-fp4).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from lowbit.compare.candidates import Built, Candidate, register_candidate
from lowbit.loaders import ModelHandle
from lowbit.loaders.handle import CAUSAL_LM, ENCODER
from lowbit.methods.layers import swap_linears
from lowbit.modules.bnb4_linear import Linear4bit


def quantize_bnb4(model: ModelHandle | nn.Module | str, quant_type: str = "nf4", double_quant: bool = False,
                  blocksize: int = 64, targets: Sequence[str] | None = None,
                  ignore: Sequence[str] | None = None) -> tuple[ModelHandle, dict[str, Any]]:
    """A copy of ``model`` with its selected Linears (default: all but the output head) in NF4/FP4."""
    return swap_linears(model, lambda lin: Linear4bit.from_linear(lin, quant_type, double_quant, blocksize),
                        f"{quant_type}{'+dq' if double_quant else ''}",
                        {"method": quant_type, "double_quant": double_quant, "blocksize": blocksize}, targets, ignore)


def _candidate(quant_type: str, dq: bool) -> Any:
    def build(ref: ModelHandle, ctx: Any) -> Built:
        qh, rep = quantize_bnb4(ref, quant_type, dq)
        return Built(qh, extra={"quantize_seconds": rep["seconds"]})

    return build


for _qt, _dq, _default in (("nf4", False, False), ("nf4", True, True), ("fp4", False, False)):
    register_candidate(Candidate(f"bnb-{_qt}{'-dq' if _dq else ''}", "bitsandbytes", 4,
                                 f"bitsandbytes-style {_qt.upper()}{' + double quant' if _dq else ''}, block 64",
                                 "bnb-nf4", _candidate(_qt, _dq), kinds=(CAUSAL_LM, ENCODER),
                                 config=f"bnb4:{_qt}:{_dq}:64", default=_default, plan_method="bnb-nf4"))
