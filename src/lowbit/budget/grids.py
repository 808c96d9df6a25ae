"""Mixed precision to a size budget for torch and compressed-tensors output: one integer grid per
Linear layer (2 to 8 bits, group sizes, or kept as stored), least predicted KL within the budget.

    factored Fisher (budget/fisher.py) -> per (layer, grid): bytes and predicted dKL, RTN on sampled rows
      -> Linears that runtimes fuse (q/k/v, gate/up: they read one input) merged into one item, one grid
      -> least total dKL under the budget (budget/solve.py)
      -> each grid's layers quantized by the chosen method, one lowbit checkpoint with per-layer specs,
         which `lowbit export --format compressed-tensors` writes as one config group per grid

Bits per weight are over the quantized Linear layers (as `lowbit quantize` reports them); a size is the
whole model's (the layers as allocated, everything else as stored).
"""

from __future__ import annotations

import copy
import math
import re
import time
from dataclasses import dataclass

import numpy as np
import torch

from lowbit.budget.fisher import Fisher, TensorFisher
from lowbit.budget.sensitivity import Option, _row_cost, sample_rows
from lowbit.budget.solve import Budget, solve
from lowbit.errors import InputError
from lowbit.loaders.handle import ModelHandle
from lowbit.progress import track
from lowbit.spec import QuantSpec
from lowbit.tensor import QuantizedTensor

KEEP = "keep"
# Symmetric grids only: transformers 5.24 loads a compressed-tensors checkpoint with several schemes
# per module only on its default path, which refuses asymmetric group grids (compressed-tensors 0.20
# builds their zero points unpacked; tests/unit/test_export_ct.py::test_asym_default_load_fails_upstream),
# and its dequantize=True path decompresses every dense module with one scheme.
GRIDS: dict[str, QuantSpec] = {
    "w8g64": QuantSpec(8, True, 64), "w6g64": QuantSpec(6, True, 64), "w5g64": QuantSpec(5, True, 64),
    "w4g128": QuantSpec(4, True, 128), "w4g64": QuantSpec(4, True, 64), "w4g32": QuantSpec(4, True, 32),
    "w3g64": QuantSpec(3, True, 64), "w3g32": QuantSpec(3, True, 32), "w2g32": QuantSpec(2, True, 32),
}


def grid_bytes(spec: QuantSpec, shape: tuple[int, int]) -> int:
    """Bytes of a layer on ``spec``: packed codes, one scale per group, a zero point per group if asymmetric."""
    numel = shape[0] * shape[1]
    groups = numel // spec.block_len(shape)
    scale = torch.empty(0, dtype=getattr(torch, spec.scale_dtype)).element_size()
    return math.ceil(numel * spec.bits / 8) + groups * (scale + (0 if spec.symmetric else 1))


def layer_options(w: np.ndarray, f: TensorFisher, tokens: int, stored: int, seed: int = 0) -> list[Option]:
    """Every grid whose groups divide the rows, and the layer kept as stored (``stored`` bytes per weight)."""
    idx, weight = sample_rows(w, f, seed)
    sub = torch.from_numpy(np.ascontiguousarray(w[idx]))
    out = [Option(KEEP, w.size * stored, 0.0)]
    for name, spec in GRIDS.items():
        if w.shape[1] % spec.group_size:
            continue
        back = QuantizedTensor.round_to_nearest(sub, spec).dequantize().numpy()
        est = float((_row_cost(back - sub.numpy(), f, idx) * weight).sum())
        out.append(Option(name, grid_bytes(spec, w.shape), 0.5 * est / max(tokens, 1)))
    return out


@dataclass
class GridAllocation:
    budget: Budget
    items: list[list[str]]  # module names per item (a fused group, or one Linear)
    choice: list[Option]  # summed over the item's layers
    bpw: float
    model_bytes: int
    seconds: float

    @property
    def predicted_dkl(self) -> float:
        return sum(o.dkl for o in self.choice)

    def specs(self) -> dict[str, str]:
        """module name -> grid name (KEEP for a layer left as stored)."""
        return {m: o.type for item, o in zip(self.items, self.choice, strict=True) for m in item}


def _items(fisher: Fisher, linears: dict[str, torch.nn.Module]) -> list[list[str]]:
    """Module names grouped as runtimes fuse them; every selected Linear in exactly one item."""
    seen: set[str] = set()
    items = []
    for group in fisher.shared:
        mods = [g.removesuffix(".weight") for g in group if g.removesuffix(".weight") in linears]
        if len(mods) == len(group):
            items.append(sorted(mods))
            seen.update(mods)
    items += [[m] for m in linears if m not in seen]
    return items


def allocate_grids(handle: ModelHandle, fisher: Fisher, budget: Budget) -> GridAllocation:
    """The grid of every Linear but the output head (what `lowbit quantize` selects by default)."""
    t0 = time.perf_counter()
    model = handle.model
    head = model.get_output_embeddings()
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head}
    items = _items(fisher, linears)
    opts = []
    for item in track(items, f"sensitivity: {len(items)} layer groups x {len(GRIDS) + 1} grids"):
        per = [layer_options(linears[m].weight.detach().float().numpy(), fisher.tensors[f"{m}.weight"], fisher.tokens,
                             linears[m].weight.element_size()) for m in item]
        common = set.intersection(*({o.type for o in p} for p in per))
        opts.append([Option(t, sum(o.nbytes for p in per for o in p if o.type == t),
                            sum(o.dkl for p in per for o in p if o.type == t)) for t in [o.type for o in per[0]] if t in common])
    numel = sum(m.weight.numel() for m in linears.values())
    stored = sum(p.numel() * p.element_size() for p in model.parameters())
    rest = stored - sum(m.weight.numel() * m.weight.element_size() for m in linears.values())
    limit = budget.bpw * numel / 8 if budget.bpw is not None else budget.nbytes - rest
    least = sum(min(o.nbytes for o in os_) for os_ in opts)
    most = sum(o.nbytes for os_ in opts for o in os_ if o.type == KEEP)
    if limit < least:
        raise InputError(f"--budget {budget} is below the smallest these layers allow: {8 * least / numel:.3f} bpw "
                         f"({rest + least:,} bytes for the whole model)")
    if limit > most:
        raise InputError(f"--budget {budget} is above the model as stored ({8 * most / numel:.3f} bpw, {stored:,} bytes): "
                         f"nothing to quantize")
    picks = solve([[o.nbytes for o in os_] for os_ in opts], [[o.dkl for o in os_] for os_ in opts], limit)
    choice = [os_[k] for os_, k in zip(opts, picks, strict=True)]
    used = sum(o.nbytes for o in choice)
    return GridAllocation(budget, items, choice, 8 * used / numel, rest + used, time.perf_counter() - t0)


def quantize_grids(handle: ModelHandle, alloc: GridAllocation, method: str = "rtn", calib: object = None) -> ModelHandle:
    """A copy of ``handle`` with every layer on its allocated grid, quantized by ``method`` one grid at a
    time (layers of other grids untouched), and one quantization record over all of them."""
    from lowbit.methods import make_config
    from lowbit.pipeline import quantize

    work = ModelHandle(model=copy.deepcopy(handle.model), tokenizer=handle.tokenizer, kind=handle.kind, name=handle.name)
    layers: dict = {}
    record: dict = {}
    specs = alloc.specs()
    for grid in sorted({g for g in specs.values() if g != KEEP}):
        names = [f"^{re.escape(m)}$" for m, g in specs.items() if g == grid]
        out, _ = quantize(work, make_config(method, GRIDS[grid]), calib=calib, targets=names, inplace=True)
        layers.update(out.quant["layers"])
        record = out.quant
    if not layers:
        raise InputError(f"--budget {alloc.budget} keeps every layer as stored: nothing to quantize")
    record = {**record, "layers": layers, "budget": {"budget": str(alloc.budget), "bpw": alloc.bpw,
                                                     "predicted_kl": alloc.predicted_dkl, "grids": specs}}
    return ModelHandle(model=work.model, tokenizer=handle.tokenizer, kind=handle.kind, name=handle.name, quant=record)
