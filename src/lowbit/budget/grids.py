"""Mixed precision to a size budget for torch and compressed-tensors output: one integer grid per
Linear layer (2 to 8 bits, group sizes, or kept as stored), least predicted KL within the budget; NF4
(bitsandbytes, block 64, double quant) joins when asked (``grids=[..., "nf4"]``): a lowbit checkpoint
holds it, compressed-tensors has no NF4 scheme (its export refuses such a layer).

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


NF4 = "nf4"  # bitsandbytes NF4 as QLoRA stores it: block 64, double-quantized constants
NF4_BLOCK = 64


def check_grids(names: list[str] | None) -> list[str]:
    """The grids an allocation may choose (default: every integer grid, the ones compressed-tensors holds)."""
    if names is None:
        return list(GRIDS)
    bad = [n for n in names if n not in GRIDS and n != NF4]
    if bad or not names:
        raise InputError(f"--grids {','.join(names)}: expected names among {', '.join([*GRIDS, NF4])}")
    return list(dict.fromkeys(names))


def nf4_bytes(shape: tuple[int, int]) -> int:
    """Bytes of a layer in NF4 with double quantization: codes, one uint8 constant per block, a float32
    scale per 256 blocks and one float32 offset (formats/bnb4.py's ``Bnb4.nbytes``)."""
    numel = shape[0] * shape[1]
    blocks = -(-numel // NF4_BLOCK)
    return (numel + 1) // 2 + blocks + 4 * -(-blocks // 256) + 4


def _dequantized(sub: torch.Tensor, name: str) -> np.ndarray:
    if name == NF4:
        from lowbit.formats.bnb4 import quantize_4bit

        return quantize_4bit(sub, NF4, NF4_BLOCK, double_quant=True).dequantize().numpy()
    return QuantizedTensor.round_to_nearest(sub, GRIDS[name]).dequantize().numpy()


def grid_bytes(spec: QuantSpec, shape: tuple[int, int]) -> int:
    """Bytes of a layer on ``spec``: packed codes, one scale per group, a zero point per group if asymmetric."""
    numel = shape[0] * shape[1]
    groups = numel // spec.block_len(shape)
    scale = torch.empty(0, dtype=getattr(torch, spec.scale_dtype)).element_size()
    return math.ceil(numel * spec.bits / 8) + groups * (scale + (0 if spec.symmetric else 1))


def layer_options(w: np.ndarray, f: TensorFisher, tokens: int, stored: int, seed: int = 0,
                  grids: list[str] | None = None) -> list[Option]:
    """Every grid of ``grids`` whose groups divide the rows, and the layer kept as stored (``stored``
    bytes per weight)."""
    idx, weight = sample_rows(w, f, seed)
    sub = torch.from_numpy(np.ascontiguousarray(w[idx]))
    out = [Option(KEEP, w.size * stored, 0.0)]
    for name in check_grids(grids):
        group = NF4_BLOCK if name == NF4 else GRIDS[name].group_size
        if w.shape[1] % group:
            continue
        est = float((_row_cost(_dequantized(sub, name) - sub.numpy(), f, idx) * weight).sum())
        nbytes = nf4_bytes(w.shape) if name == NF4 else grid_bytes(GRIDS[name], w.shape)
        out.append(Option(name, nbytes, 0.5 * est / max(tokens, 1)))
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


def allocate_grids(handle: ModelHandle, fisher: Fisher, budget: Budget, grids: list[str] | None = None) -> GridAllocation:
    """The grid of every Linear but the output head (what `lowbit quantize` selects by default), among
    ``grids`` (:func:`check_grids`)."""
    t0 = time.perf_counter()
    grids = check_grids(grids)
    model = handle.model
    head = model.get_output_embeddings()
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head}
    items = _items(fisher, linears)
    opts = []
    for item in track(items, f"sensitivity: {len(items)} layer groups x {len(grids) + 1} grids"):
        per = [layer_options(linears[m].weight.detach().float().numpy(), fisher.tensors[f"{m}.weight"], fisher.tokens,
                             linears[m].weight.element_size(), grids=grids) for m in item]
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
    time (layers of other grids untouched; NF4 layers by NF4 itself), and one quantization record over all
    of them."""
    from lowbit.methods import make_config
    from lowbit.pipeline import quantize

    work = ModelHandle(model=copy.deepcopy(handle.model), tokenizer=handle.tokenizer, kind=handle.kind, name=handle.name)
    layers: dict = {}
    record: dict = {}
    specs = alloc.specs()
    for grid in sorted({g for g in specs.values() if g != KEEP}):
        names = [f"^{re.escape(m)}$" for m, g in specs.items() if g == grid]
        cfg = make_config(NF4, double_quant=True, blocksize=NF4_BLOCK) if grid == NF4 else make_config(method, GRIDS[grid])
        out, _ = quantize(work, cfg, calib=calib if grid != NF4 else None, targets=names, inplace=True)
        layers.update(out.quant["layers"])
        record = out.quant
    if not layers:
        raise InputError(f"--budget {alloc.budget} keeps every layer as stored: nothing to quantize")
    record = {**record, "layers": layers, "budget": {"budget": str(alloc.budget), "bpw": alloc.bpw,
                                                     "predicted_kl": alloc.predicted_dkl, "grids": specs}}
    return ModelHandle(model=work.model, tokenizer=handle.tokenizer, kind=handle.kind, name=handle.name, quant=record)
