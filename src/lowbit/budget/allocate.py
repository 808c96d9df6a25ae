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

import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from lowbit.budget.fisher import Fisher, TensorFisher, collect_fisher
from lowbit.budget.sensitivity import GGUF_CANDIDATES, Option, tensor_options
from lowbit.budget.solve import Budget, solve
from lowbit.errors import InputError
from lowbit.loaders.handle import ModelHandle
from lowbit.progress import track

ALIGN = 32
# the file type a budget file declares (general.file_type): the mix named after its largest share of bytes
_FILE_TYPE = {"Q2_K": "Q2_K", "Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M", "Q6_K": "Q6_K", "IQ3_S": "IQ3_S",
              "IQ2_S": "IQ2_M", "F16": "Q8_0"}


def pad(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


@dataclass
class TensorRow:
    """One tensor of the file: fixed (kept in F32, as llama.cpp keeps norms) or with its options."""

    name: str
    shape: tuple[int, ...]
    options: list[Option]  # one F32 option for a fixed tensor

    @property
    def fixed(self) -> bool:
        return len(self.options) == 1 and self.options[0].type == "F32"


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
        return [(r.name, o.type, o.nbytes, o.dkl) for r, o in zip(self.rows, self.choice, strict=True) if not r.fixed]

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
                fisher: Fisher | None = None) -> Sensitivity:
    """Every tensor's options (type, bytes, predicted dKL), from one Fisher pass over ``windows``."""
    from lowbit.writers.gguf import _llama_rows, float_tensors, header_bytes, tensor_names
    from lowbit.writers.gguf_mix import quantizable

    t0 = time.perf_counter()
    head = header_bytes(handle, "Q8_0", imatrix_kv)
    fisher = fisher or collect_fisher(handle.model, windows)
    t1 = time.perf_counter()
    rows = []
    n = len(tensor_names(handle.model))
    for name, w in track(float_tensors(handle), f"sensitivity: {n} tensors x {len(types)} types", total=n):
        if not quantizable(name, w.shape) or w.ndim != 2:
            rows.append(TensorRow(name, w.shape, [Option("F32", 4 * w.size, 0.0)]))
            continue
        f = fisher.tensors.get(name)
        if f is None:
            raise InputError(f"{name}: calibration never reached this tensor, so its sensitivity is unknown")
        if f.g is not None:  # attn_q / attn_k rows in llama.cpp's rope order, as the file stores them
            f = TensorFisher(_llama_rows(f.g[:, None], name, handle.model.config)[:, 0], f.cov, f.emb)
        im = None if imatrix is None else imatrix.get(name)
        rows.append(TensorRow(name, w.shape, tensor_options(w, f, fisher.tokens, types, im)))
    seconds = {"fisher": fisher.seconds, "types": time.perf_counter() - t1, "header": t1 - t0 - fisher.seconds}
    return Sensitivity(rows, head, fisher.tokens, imatrix is not None, seconds)


def allocate(sens: Sensitivity, budget: Budget, progress: Callable[[str], None] | None = None) -> Allocation:
    """The least predicted dKL within ``budget``; one clear error if it is below the smallest file the
    types allow or above the float16 file."""
    t0 = time.perf_counter()
    by_bytes = budget.nbytes is not None
    cost = (lambda o: pad(o.nbytes)) if by_bytes else (lambda o: o.nbytes)
    fixed = sum(cost(r.options[0]) for r in sens.rows if r.fixed)
    free = [r for r in sens.rows if not r.fixed]
    limit = (budget.nbytes - sens.header - fixed) if by_bytes else budget.bpw * sens.weights / 8 - fixed
    least = [min(r.options, key=cost) for r in sens.rows]
    most = sens.float_choice()
    lo, hi = sens.size(least), sens.size(most)
    if limit < sum(cost(o) for r, o in zip(sens.rows, least, strict=True) if not r.fixed):
        raise InputError(f"--budget {budget}: the smallest file these tensors allow is {lo[0]:,} bytes "
                         f"({lo[1]:.3f} bpw{'' if sens.imatrix else '; an --imatrix unlocks the IQ1/IQ2 types'})")
    if (budget.nbytes or 0) > hi[0] or (budget.bpw or 0) > hi[1]:
        raise InputError(f"--budget {budget} is above the float16 file ({hi[0]:,} bytes, {hi[1]:.3f} bpw): "
                         f"nothing to allocate; export --type F16")
    picks = solve([[cost(o) for o in r.options] for r in free], [[o.dkl for o in r.options] for r in free], limit)
    it = iter(picks)
    choice = [r.options[0] if r.fixed else r.options[next(it)] for r in sens.rows]
    nbytes, bpw = sens.size(choice)
    seconds = {**sens.seconds, "solve": time.perf_counter() - t0}
    return Allocation(budget, sens.rows, choice, nbytes, bpw, sens.imatrix, seconds)
