"""Shared by the methods whose layers are their own module kinds (NF4/FP4, LLM.int8, W8A8) rather than
integer grids of QuantizedLinear: swap the selected Linears of a copy of the model, measure their bits,
and write the checkpoint record that writers/checkpoint.py reloads from each layer's ``record()``."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from lowbit.errors import InputError
from lowbit.loaders import ModelHandle, load_model
from lowbit.modules.select import select_modules
from lowbit.modules.swap import replace_module
from lowbit.progress import track


def quant_record(method: dict, net: nn.Module, names: list[str], skipped: list[str], handle: ModelHandle,
                 seconds: float) -> dict:
    """The checkpoint record of a model whose layers carry their own ``record()``."""
    return {"method": method, "layers": {n: net.get_submodule(n).record() for n in names}, "skipped": skipped,
            "source": handle.reference_name or handle.name, "quantize_seconds": round(seconds, 3)}


def layer_bits(net: nn.Module, names: list[str]) -> float:
    """Bits per weight over the named layers (each exposes ``quant_nbytes``)."""
    mods = [net.get_submodule(n) for n in names]
    return 8 * sum(m.quant_nbytes for m in mods) / sum(m.in_features * m.out_features for m in mods)


def selected_linears(handle: ModelHandle, targets: Sequence[str] | None, ignore: Sequence[str] | None) -> tuple[list[str], list[str]]:
    selected, skipped = select_modules(handle.model, targets, ignore, False)
    names = [n for n, m in selected.items() if isinstance(m, nn.Linear)]
    if not names:
        raise InputError(f"{handle.name}: no nn.Linear layer selected; nothing to quantize")
    return names, skipped


def swap_linears(model: ModelHandle | nn.Module | str, make: Callable[[nn.Linear], nn.Module], label: str,
                 method: dict[str, Any], targets: Sequence[str] | None = None,
                 ignore: Sequence[str] | None = None) -> tuple[ModelHandle, dict[str, Any]]:
    """A copy of ``model`` whose selected Linears (default: all but the head) are ``make(linear)``.
    Returns the handle (with its checkpoint record) and a report: ``method``'s fields, the layers,
    those kept in float, seconds and bits per weight."""
    handle = load_model(model)
    names, skipped = selected_linears(handle, targets, ignore)
    net = copy.deepcopy(handle.model)
    t0 = time.perf_counter()
    for name in track(names, f"quantize {label}"):
        replace_module(net, name, make(net.get_submodule(name)))
    seconds = time.perf_counter() - t0
    report = {**method, "layers": names, "skipped": skipped, "seconds": seconds, "bits_per_weight": layer_bits(net, names)}
    quant = quant_record(method, net, names, skipped, handle, seconds)
    return ModelHandle(model=net.eval(), tokenizer=handle.tokenizer, kind=handle.kind, name=handle.name,
                       quant=quant), report
