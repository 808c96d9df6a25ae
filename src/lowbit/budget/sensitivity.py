"""Predicted KL increase of every (tensor, GGML type) pair, from the factored Fisher (budget/fisher.py).

Each candidate type quantizes a sample of the tensor's rows, bit-exact with the file the export would
write (rows quantize independently in every GGML type, the importance matrix is per column). The
rows are drawn with probability proportional to their Fisher-weighted energy (mixed with a uniform
tenth), and the sum over all rows is the importance-sampling estimate; every type of a tensor sees the
same rows, so the types are compared on common ground. A tensor with few rows is computed whole.

    dKL(t, type) ~= 1/2 / T * sum_rows [ G_i * dW_i C dW_i^T + sum_d E_{i,d} dW_{i,d}^2 ]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gguf
import numpy as np

from lowbit.budget.fisher import TensorFisher
from lowbit.formats.ggml import GGML_TYPES

# llama-quantize's weight types as allocation candidates, largest first. The ternary types (TQ1_0,
# TQ2_0) are left out: they suit weights trained to three values, not a post-training allocation.
GGUF_CANDIDATES = ("F16", "Q8_0", "Q6_K", "Q5_K", "Q5_1", "Q5_0", "Q4_K", "Q4_1", "IQ4_XS", "IQ4_NL", "Q4_0",
                   "Q3_K", "IQ3_S", "IQ3_XXS", "Q2_K", "IQ2_S", "IQ2_XS", "IQ2_XXS", "IQ1_M", "IQ1_S")
SAMPLE_VALUES = 1 << 17  # values quantized per (tensor, type): rows = this / columns, at least MIN_ROWS
MIN_ROWS = 64
# The lattice-search types quantize 20-60x slower than the others (IQ1_M ~0.2 M values/s): they are
# estimated from a quarter of the rows (drawn the same way), which keeps the sensitivity pass within a
# few GPTQ runs; they are the options a budget above ~4 bpw never takes.
SLOW = ("IQ3_S", "IQ3_XXS", "IQ2_S", "IQ2_XS", "IQ2_XXS", "IQ1_M", "IQ1_S")


@dataclass(frozen=True)
class Option:
    type: str
    nbytes: int  # the tensor's data in this type
    dkl: float  # predicted mean per-token KL increase


def type_bytes(t: str, shape: tuple[int, ...]) -> int:
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[t]]
    rows = int(np.prod(shape[:-1]))
    return rows * (shape[-1] // block) * size


def usable(t: str, ncols: int, has_imatrix: bool) -> bool:
    """Whether llama.cpp takes type ``t`` for rows of ``ncols`` values (and, for the very low-bit types,
    whether the importance matrix it requires is there)."""
    block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[t]][0]
    if ncols % block:
        return False
    return t in ("F16", "F32") or has_imatrix or not GGML_TYPES.get(t).needs_imatrix


def sample_rows(w: np.ndarray, f: TensorFisher, seed: int, values: int = SAMPLE_VALUES,
                energy: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(row indices, importance weight of each draw): the estimate of a sum over rows is
    ``sum(cost[idx] * weight)``. All rows with weight 1 when the tensor is small. ``energy``: the rows'
    Fisher-weighted energy, if already computed."""
    rows, cols = w.shape
    m = max(MIN_ROWS // 4 if values < SAMPLE_VALUES else MIN_ROWS, values // cols)
    if rows <= m:
        return np.arange(rows), np.ones(rows)
    energy = _row_cost(w, f, np.arange(rows)) if energy is None else energy
    p = 0.1 / rows + (0.9 * energy / energy.sum() if energy.sum() > 0 else 0.9 / rows)
    p = p / p.sum()
    draws = np.random.default_rng(seed).choice(rows, size=m, p=p)
    idx, counts = np.unique(draws, return_counts=True)
    return idx, counts / (m * p[idx])


def _row_cost(dw: np.ndarray, f: TensorFisher, idx: np.ndarray) -> np.ndarray:
    """Per row of ``dw`` (already restricted to rows ``idx``, or all rows): G_i dW_i C dW_i^T + sum E dW^2."""
    cost = np.zeros(len(dw))
    if f.g is not None and f.cov is not None:
        d = dw.astype(np.float64)
        cost += f.g[idx] * np.einsum("ij,ij->i", d @ f.cov, d)
    if f.emb is not None:
        cost += np.einsum("ij,ij->i", f.emb[idx], dw.astype(np.float64) ** 2)
    return cost


def tensor_options(w: np.ndarray, f: TensorFisher, tokens: int, types: tuple[str, ...],
                   imatrix: np.ndarray | None, seed: int = 0) -> list[Option]:
    """Every usable type of ``types`` for tensor ``w`` (rows x columns, GGUF layout, float32) with its
    bytes and predicted KL increase; ``f`` in the same row order."""
    ok = [t for t in types if usable(t, w.shape[1], imatrix is not None)]
    energy = _row_cost(w, f, np.arange(len(w))) if len(w) > MIN_ROWS else None
    draws = {False: sample_rows(w, f, seed, energy=energy), True: sample_rows(w, f, seed, SAMPLE_VALUES // 4, energy)}
    subs = {k: np.ascontiguousarray(w[idx]) for k, (idx, _) in draws.items()}
    pending: dict[str, Callable[[], np.ndarray]] = {}
    for t in ok:
        if t not in ("F16", "F32"):
            pending[t] = GGML_TYPES.get(t).quantize_async(subs[t in SLOW], imatrix)
    out = []
    for t in ok:
        (idx, weight), sub = draws[t in SLOW], subs[t in SLOW]
        if t == "F32":
            back = sub
        elif t == "F16":
            back = sub.astype(np.float16).astype(np.float32)
        else:
            back = GGML_TYPES.get(t).dequantize(pending[t](), sub.shape)
        est = float((_row_cost(back - sub, f, idx) * weight).sum())
        out.append(Option(t, type_bytes(t, w.shape), 0.5 * est / max(tokens, 1)))
    return out
