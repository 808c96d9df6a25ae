"""Mixed precision to a size budget for a GGUF file: sensitivity of every tensor in every type, then
the exact allocation.

    model + calibration windows -> factored Fisher (budget/fisher.py)
      -> per (tensor, type): bytes and predicted dKL (budget/sensitivity.py)
      -> least total dKL under the budget (budget/solve.py)
      -> REGEX=TYPE overrides: lowbit's export writes the file, llama-quantize --tensor-type-file reproduces it

A file's size is its header (metadata and tensor table, padded) plus every tensor's data padded to 32
bytes; bits per weight are llama.cpp's: 8 x tensor bytes / weights, over every tensor.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from lowbit.budget.fisher import Fisher, TensorFisher, collect_fisher
from lowbit.budget.sensitivity import GGUF_CANDIDATES, Option, measure, sample_tensor
from lowbit.budget.solve import Budget, solve
from lowbit.errors import InputError
from lowbit.loaders.handle import ModelHandle
from lowbit.progress import track

log = logging.getLogger(__name__)
ALIGN = 32
# the file type a budget file declares (general.file_type): the mix named after its largest share of bytes
_FILE_TYPE = {"Q2_K": "Q2_K", "Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M", "Q6_K": "Q6_K", "IQ3_S": "IQ3_S",
              "IQ2_S": "IQ2_M", "F16": "Q8_0"}


def pad(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


@dataclass
class TensorRow:
    """One tensor of the file with its options (one F32 option for a tensor llama.cpp keeps as it is)."""

    name: str
    shape: tuple[int, ...]
    options: list[Option]
    quantizable: bool = True  # False: a norm or bias, F32 as llama.cpp keeps it (no override is written)


@dataclass
class Sensitivity:
    rows: list[TensorRow]
    header: int  # bytes before the first tensor's data
    tokens: int
    imatrix: bool
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def weights(self) -> int:
        return sum(int(np.prod(r.shape)) for r in self.rows)

    def size(self, choice: list[Option]) -> tuple[int, float]:
        """(file bytes, bits per weight) of one option per row."""
        data = sum(o.nbytes for o in choice)
        return self.header + sum(pad(o.nbytes) for o in choice), 8 * data / self.weights

    def float_choice(self) -> list[Option]:
        return [next((o for o in r.options if o.type == "F16"), r.options[0]) for r in self.rows]


@dataclass
class Allocation:
    budget: Budget
    rows: list[TensorRow]
    choice: list[Option]
    file_bytes: int
    bpw: float
    imatrix: bool
    seconds: dict[str, float]

    @property
    def predicted_dkl(self) -> float:
        return sum(o.dkl for o in self.choice)

    def table(self) -> list[tuple[str, str, int, float]]:
        """(tensor, type, bytes, predicted dKL) of every quantized tensor, in file order."""
        return [(r.name, o.type, o.nbytes, o.dkl) for r, o in zip(self.rows, self.choice, strict=True) if r.quantizable]

    def tensor_types(self) -> list[str]:
        """One exact-name override per quantized tensor, as llama-quantize's --tensor-type-file reads them."""
        return [f"^{re.escape(name)}$={t}" for name, t, _, _ in self.table()]

    def file_type(self) -> str:
        """A quantized llama.cpp file type to name the file by (overrides only apply under a quantized one)."""
        share = Counter()
        for _, t, n, _ in self.table():
            share[t] += n
        top = share.most_common(1)[0][0] if share else "Q8_0"
        return _FILE_TYPE.get(top, top)


def sensitivity(handle: ModelHandle, windows: torch.Tensor, imatrix: dict[str, np.ndarray] | None = None,
                types: tuple[str, ...] = GGUF_CANDIDATES, imatrix_kv: list | None = None,
                fisher: Fisher | None = None, pins: dict[str, str] | None = None, header: int | None = None) -> Sensitivity:
    """Every tensor's options (type, bytes, predicted dKL), from one Fisher pass over ``windows``;
    ``pins`` (GGUF name -> type) leaves a tensor one option (compare keeps embeddings as stored);
    ``header``: the file's header bytes, if :func:`size_only` already measured them."""
    from lowbit.writers.gguf import _float_tensor, _llama_rows, header_bytes, tensor_names
    from lowbit.writers.gguf_mix import quantizable

    t0 = time.perf_counter()
    _warn_if_on_a_grid(handle)
    head = header_bytes(handle, "Q8_0", imatrix_kv) if header is None else header
    t_head = time.perf_counter() - t0
    fisher = fisher or collect_fisher(handle.model, windows)
    t1 = time.perf_counter()
    rows, samples = [], []
    names = tensor_names(handle.model)
    mods = dict(handle.model.named_modules())
    for hf, name in track(names, f"sensitivity: sampling the rows of {len(names)} tensors"):
        w = _float_tensor(handle.model, mods, hf, name)
        if not quantizable(name, w.shape) or w.ndim != 2:
            rows.append(TensorRow(name, w.shape, [Option("F32", 4 * w.size, 0.0)], quantizable=False))
            continue
        f = fisher.tensors.get(hf)
        if f is None:
            raise InputError(f"{name}: calibration never reached this tensor, so its sensitivity is unknown")
        if f.g is not None:  # attn_q / attn_k rows in llama.cpp's rope order, as the file stores them
            f = TensorFisher(_llama_rows(f.g[:, None], name, handle.model.config)[:, 0], f.cov, f.emb)
        im = None if imatrix is None else imatrix.get(name)
        pinned = (pins or {}).get(name)
        samples.append(sample_tensor(w, f, (pinned,) if pinned else types, im))
        if pinned and not samples[-1].types:
            raise InputError(f"{name}: {pinned} cannot hold its {w.shape[1]}-wide rows")
        rows.append(TensorRow(name, w.shape, []))
    for r, opts in zip((r for r in rows if r.quantizable), measure(samples, fisher.tokens), strict=True):
        r.options = opts
    seconds = {"fisher": fisher.seconds, "types": time.perf_counter() - t1, "header": t_head}
    return Sensitivity(rows, head, fisher.tokens, imatrix is not None, seconds)


def size_only(handle: ModelHandle, has_imatrix: bool, types: tuple[str, ...] = GGUF_CANDIDATES,
              imatrix_kv: list | None = None) -> Sensitivity:
    """The sizes every tensor can take, without their sensitivity (a budget is checked before the Fisher pass)."""
    from lowbit.budget.sensitivity import type_bytes, usable
    from lowbit.writers.gguf import _shape, header_bytes, tensor_names
    from lowbit.writers.gguf_mix import quantizable

    mods = dict(handle.model.named_modules())
    rows = []
    for hf, name in tensor_names(handle.model):
        shape = tuple(_shape(handle.model, mods, hf))
        if not quantizable(name, shape) or len(shape) != 2:
            rows.append(TensorRow(name, shape, [Option("F32", 4 * int(np.prod(shape)), 0.0)], quantizable=False))
        else:
            ok = [t for t in types if usable(t, shape[-1], has_imatrix and name not in ("token_embd.weight", "output.weight"))]
            rows.append(TensorRow(name, shape, [Option(t, type_bytes(t, shape), 0.0) for t in ok]))
    return Sensitivity(rows, header_bytes(handle, "Q8_0", imatrix_kv), 0, has_imatrix)


def check_bounds(sens: Sensitivity, budget: Budget) -> None:
    """One clear error for a budget below the smallest file the types allow, or above the float16 file."""
    least = [min(r.options, key=lambda o: o.nbytes) for r in sens.rows]
    lo, hi = sens.size(least), sens.size(sens.float_choice())
    if (budget.nbytes is not None and budget.nbytes < lo[0]) or (budget.bpw is not None and budget.bpw < lo[1]):
        raise InputError(f"--budget {budget} is below the smallest file these tensors allow: {lo[0]:,} bytes "
                         f"({lo[1]:.3f} bpw){'' if sens.imatrix else '; an --imatrix unlocks the IQ1/IQ2 types'}")
    if (budget.nbytes or 0) > hi[0] or (budget.bpw or 0) > hi[1]:
        raise InputError(f"--budget {budget} is above the float16 file ({hi[0]:,} bytes, {hi[1]:.3f} bpw): "
                         f"nothing to allocate; export --type F16")


def grid_warning(handle: ModelHandle) -> str | None:
    """A model read from a quantized GGUF is its own reference: a type that can reproduce its grid
    (the same type, or a finer one with the same block layout) measures as nearly free against it."""
    if not getattr(handle, "gguf_source", None):
        return None
    import gguf

    kinds = Counter(t.tensor_type.name for t in gguf.GGUFReader(handle.gguf_source).tensors)
    grids = [k for k in kinds if k not in ("F32", "F16", "BF16")]
    if not grids:
        return None
    return (f"{handle.name} is stored in {'/'.join(sorted(grids))}: its weights lie on that grid, so types that reproduce "
            "it (the same type; a finer one with a step that divides it) measure as (nearly) lossless against it, and "
            "a budget allocation prefers them; against the original float model they would lose more")


def _warn_if_on_a_grid(handle: ModelHandle) -> None:
    msg = grid_warning(handle)
    if msg:
        log.warning("%s", msg)


def allocate(sens: Sensitivity, budget: Budget) -> Allocation:
    """The least predicted dKL within ``budget``; one clear error if it is below the smallest file the
    types allow or above the float16 file."""
    t0 = time.perf_counter()
    by_bytes = budget.nbytes is not None
    cost = (lambda o: pad(o.nbytes)) if by_bytes else (lambda o: o.nbytes)
    fixed = sum(cost(r.options[0]) for r in sens.rows if not r.quantizable)
    free = [r for r in sens.rows if r.quantizable]
    limit = (budget.nbytes - sens.header - fixed) if by_bytes else budget.bpw * sens.weights / 8 - fixed
    check_bounds(sens, budget)
    picks = solve([[cost(o) for o in r.options] for r in free], [[o.dkl for o in r.options] for r in free], limit)
    it = iter(picks)
    choice = [r.options[next(it)] if r.quantizable else r.options[0] for r in sens.rows]
    nbytes, bpw = sens.size(choice)
    seconds = {**sens.seconds, "solve": time.perf_counter() - t0}
    return Allocation(budget, sens.rows, choice, nbytes, bpw, sens.imatrix, seconds)


def export_allocation(handle: ModelHandle, out: str, alloc: Allocation, *, imatrix: dict[str, np.ndarray] | None = None,
                      imatrix_kv: list | None = None, tensor_type_file: str | None = None,
                      overwrite: bool = False) -> dict:
    """Write the allocation as a GGUF file (and, with ``tensor_type_file``, the overrides llama-quantize
    reads to write the same file from lowbit's F32 export: ``--tensor-type-file``, one per line)."""
    from pathlib import Path

    from lowbit.writers.gguf import export_gguf
    from lowbit.writers.guard import atomic_write, check_output

    if tensor_type_file is not None:  # both outputs checked before anything is written
        check_output(tensor_type_file, overwrite)
    summary = export_gguf(handle, out, alloc.file_type(), imatrix=imatrix, tensor_types=alloc.tensor_types(),
                          overwrite=overwrite, imatrix_kv=imatrix_kv)
    if tensor_type_file is not None:
        atomic_write(Path(tensor_type_file), "".join(f"{line}\n" for line in alloc.tensor_types()))
    return summary
