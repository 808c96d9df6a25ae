"""bitsandbytes-style NF4 / FP4 (QLoRA): the guide's lowest-friction option, no calibration. Every
selected Linear becomes a :class:`~lowbit.modules.bnb4_linear.Linear4bit` whose codes and constants are
bit-identical to ``bitsandbytes.functional.quantize_4bit``; double quantization re-quantizes the block
constants (4.127 bits per weight for NF4 at block 64).

    qh, report = quantize_bnb4(load_model("smollm2"), "nf4", double_quant=True)

Joins `lowbit compare` as the "bitsandbytes" family (bnb-nf4, bnb-nf4-dq, bnb-fp4).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import Any

from torch import nn

from lowbit.compare.candidates import Built, Candidate, register_candidate
from lowbit.errors import InputError
from lowbit.load import ModelHandle, load_model
from lowbit.load.handle import CAUSAL_LM, ENCODER
from lowbit.modules.bnb4_linear import Linear4bit
from lowbit.modules.select import select_modules
from lowbit.modules.swap import replace_module
from lowbit.progress import track


def quantize_bnb4(model: ModelHandle | nn.Module | str, quant_type: str = "nf4", double_quant: bool = False,
                  blocksize: int = 64, targets: Sequence[str] | None = None,
                  ignore: Sequence[str] | None = None) -> tuple[ModelHandle, dict[str, Any]]:
    """A copy of ``model`` with its selected Linears (default: all but the output head) in NF4/FP4."""
    handle = load_model(model)
    selected, skipped = select_modules(handle.model, targets, ignore, False)
    names = [n for n, m in selected.items() if isinstance(m, nn.Linear)]
    if not names:
        raise InputError(f"{handle.name}: no nn.Linear layer selected; nothing to quantize")
    del selected
    net = copy.deepcopy(handle.model)
    t0 = time.perf_counter()
    nbytes = numel = 0
    for name in track(names, f"quantize {quant_type}{'+dq' if double_quant else ''}"):
        new = Linear4bit.from_linear(net.get_submodule(name), quant_type, double_quant, blocksize)
        nbytes, numel = nbytes + new.quant_nbytes, numel + new.in_features * new.out_features
        replace_module(net, name, new)
    report = {"method": quant_type, "double_quant": double_quant, "blocksize": blocksize, "layers": names,
              "skipped": skipped, "seconds": time.perf_counter() - t0, "bits_per_weight": 8 * nbytes / numel}
    from lowbit.methods.llm_int8 import quant_record

    quant = quant_record({"method": quant_type, "double_quant": double_quant, "blocksize": blocksize}, net, names,
                         skipped, handle, report["seconds"])
    out = ModelHandle(model=net.eval(), tokenizer=handle.tokenizer, kind=handle.kind, name=handle.name, path=None,
                      quant=quant)
    return out, report


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
