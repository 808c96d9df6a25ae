"""The allocation: one type per tensor, least total predicted KL within a byte budget.

A multiple-choice knapsack, solved exactly as a 0/1 integer program by HiGHS (``scipy.optimize.milp``):

    minimize   sum_{t,k} dkl[t,k] x[t,k]
    subject to sum_k x[t,k] = 1 for every item t        (one type per tensor, or per group of tensors
               sum_{t,k} cost[t,k] x[t,k] <= budget      that must share one, merged into one item)
               x binary

Options that another option of the same item beats on both cost and KL are dropped first: they can
never be chosen, and the program shrinks to the convex-ish frontier of each tensor.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lowbit.errors import InputError

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


@dataclass(frozen=True)
class Budget:
    """A size budget: ``bpw`` bits per weight over every tensor, or ``nbytes`` of file."""

    bpw: float | None = None
    nbytes: int | None = None

    def __str__(self) -> str:
        return f"{self.bpw:g} bpw" if self.bpw is not None else f"{self.nbytes:,} bytes"


def parse_budget(text: str | float) -> Budget:
    """``4.5`` (bits per weight), ``95MB``, ``90MiB``, ``1.5GB``: one clear error for anything else."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _UNITS:
        raise InputError(f"--budget {text!r}: give bits per weight (4.5) or a size (95MB, 90MiB, 1.5GB)")
    value = float(m.group(1))
    if not unit:
        if not 0 < value <= 32:
            raise InputError(f"--budget {text!r}: bits per weight must be in (0, 32]; a size needs a unit (MB, GiB)")
        return Budget(bpw=value)
    return Budget(nbytes=int(value * _UNITS[unit]))


def frontier(costs: np.ndarray, dkls: np.ndarray) -> list[int]:
    """Indices of the options no other option beats on both cost and predicted KL (ties: the first)."""
    keep = []
    for i in np.lexsort((dkls, costs)):
        if not keep or dkls[i] < dkls[keep[-1]]:
            keep.append(int(i))
    return keep


def solve(costs: Sequence[Sequence[float]], dkls: Sequence[Sequence[float]], budget: float) -> list[int]:
    """The option index chosen for each item: least sum of ``dkls`` with sum of ``costs`` <= ``budget``.
    The caller checks feasibility (sum of each item's cheapest cost <= budget) first."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csr_array

    keep = [frontier(np.asarray(c, float), np.asarray(d, float)) for c, d in zip(costs, dkls, strict=True)]
    c_all = np.concatenate([np.asarray(c, float)[k] for c, k in zip(costs, keep, strict=True)])
    d_all = np.concatenate([np.asarray(d, float)[k] for d, k in zip(dkls, keep, strict=True)])
    item = np.repeat(np.arange(len(keep)), [len(k) for k in keep])
    n = len(c_all)
    one = csr_array((np.ones(n), (item, np.arange(n))), shape=(len(keep), n))
    scale = max(float(np.abs(d_all).max()), 1e-30)  # objective of order 1 for the solver's tolerances
    unit = max(float(c_all.max()), 1.0)
    budget = budget - 64  # HiGHS's feasibility tolerance is a few bytes of the scaled row: never over
    res = milp(d_all / scale, integrality=np.ones(n), bounds=Bounds(0, 1),
               constraints=[LinearConstraint(one, 1, 1), LinearConstraint(c_all[None, :] / unit, -np.inf, budget / unit)],
               options={"mip_rel_gap": 1e-9})
    if res.x is None:
        raise InputError(f"no allocation fits {budget:,.0f} bytes ({res.message})")
    chosen = np.round(res.x).astype(int)
    out = []
    start = 0
    for k in keep:
        sel = chosen[start : start + len(k)]
        out.append(k[int(np.argmax(sel))])
        start += len(k)
    return out
