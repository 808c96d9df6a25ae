"""Predicted KL increase of every (tensor, GGML type) pair, from the factored Fisher (budget/fisher.py).

Each candidate type quantizes a sample of the tensor's rows, bit-exact with the file the export would
write (rows quantize independently in every GGML type, the importance matrix is per column). The
rows are drawn with probability proportional to their Fisher-weighted energy (mixed with a uniform
tenth), and the sum over all rows is the importance-sampling estimate; every type of a tensor sees the
same rows, so the types are compared on common ground. A tensor with few rows is computed whole.
The sampled rows of all tensors of one width go to each type in one call (each row with its own
tensor's importance vector): the lattice searches cost per call as much as per row.

    dKL(t, type) ~= 1/2 / T * sum_rows [ G_i * dW_i C dW_i^T + sum_d E_{i,d} dW_{i,d}^2 ]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import gguf
import numpy as np

from lowbit.budget.fisher import TensorFisher
from lowbit.formats.ggml import GGML_TYPES
from lowbit.progress import track

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
    """Per row of ``dw`` (already restricted to rows ``idx``, or all rows): G_i dW_i C dW_i^T + sum E dW^2.
    In float32 (float64 sums): the estimate's sampling error is far above float32's rounding."""
    cost = np.zeros(len(dw))
    d = np.asarray(dw, dtype=np.float32)
    if f.g is not None and f.cov is not None:
        cov = f.cov if f.cov.dtype == np.float32 else f.cov.astype(np.float32)
        cost += f.g[idx] * np.einsum("ij,ij->i", d @ cov, d).astype(np.float64)
    if f.emb is not None:
        cost += np.einsum("ij,ij->i", f.emb[idx], d.astype(np.float64) ** 2)
    return cost


@dataclass
class Sampled:
    """One tensor's sampled rows, which every type of it quantizes: ``draws[slow]`` (row indices, weights)
    and ``subs[slow]`` the rows, for the fast types and (a quarter as many) for the lattice types."""

    shape: tuple[int, ...]
    f: TensorFisher
    types: list[str]
    imatrix: np.ndarray | None
    draws: dict[bool, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    subs: dict[bool, np.ndarray] = field(default_factory=dict)


def sample_tensor(w: np.ndarray, f: TensorFisher, types: tuple[str, ...], imatrix: np.ndarray | None,
                  seed: int = 0) -> Sampled:
    """Draw the rows of ``w`` (rows x columns, GGUF layout, float32; ``f`` in the same row order) that its
    usable types of ``types`` will be measured on."""
    ok = [t for t in types if usable(t, w.shape[1], imatrix is not None)]
    f = TensorFisher(f.g, None if f.cov is None else f.cov.astype(np.float32), f.emb)
    energy = _row_cost(w, f, np.arange(len(w))) if len(w) > MIN_ROWS else None
    s = Sampled(tuple(w.shape), f, ok, imatrix)
    for slow, values in ((False, SAMPLE_VALUES), (True, SAMPLE_VALUES // 4)):
        s.draws[slow] = sample_rows(w, f, seed, values, energy)
        s.subs[slow] = np.ascontiguousarray(w[s.draws[slow][0]])
    return s


def measure(samples: list[Sampled], tokens: int) -> list[list[Option]]:
    """Every usable type of every sampled tensor with its bytes and predicted KL increase, in the order
    of ``samples`` and of their types. Per type, the rows of all tensors of one width (and with or
    without an importance vector) quantize in one call; every call is in flight before the first is read."""
    groups: dict[tuple[str, int, bool], list[int]] = {}
    for t in dict.fromkeys(t for s in samples for t in s.types):
        for k, s in enumerate(samples):
            if t in s.types:
                groups.setdefault((t, s.shape[1], s.imatrix is not None), []).append(k)
    pending = {key: _round_trip(key[0], [samples[k].subs[key[0] in SLOW] for k in ks], [samples[k].imatrix for k in ks])
               for key, ks in groups.items()}
    found: dict[tuple[int, str], float] = {}
    for key, ks in track(list(groups.items()), f"sensitivity: {len(samples)} tensors in {len(groups)} (type, width) calls"):
        t, slow = key[0], key[0] in SLOW
        subs = [samples[k].subs[slow] for k in ks]
        back = np.split(pending.pop(key)(), np.cumsum([len(x) for x in subs])[:-1])
        for k, b, sub in zip(ks, back, subs, strict=True):
            idx, weight = samples[k].draws[slow]
            found[k, t] = 0.5 * float((_row_cost(b - sub, samples[k].f, idx) * weight).sum()) / max(tokens, 1)
    return [[Option(t, type_bytes(t, s.shape), found[k, t]) for t in s.types] for k, s in enumerate(samples)]


def _round_trip(t: str, subs: list[np.ndarray], ims: list[np.ndarray | None]) -> Callable[[], np.ndarray]:
    """The rows of ``subs`` stacked, quantized to type ``t`` (each row with its own tensor's importance)
    on the shared pool; the function returns them dequantized."""
    x = np.concatenate(subs)
    if t in ("F32", "F16"):
        return lambda: x if t == "F32" else x.astype(np.float16).astype(np.float32)
    im = None if ims[0] is None else np.concatenate([np.broadcast_to(m, s.shape) for m, s in zip(ims, subs, strict=True)])
    gt = GGML_TYPES.get(t)
    wait = gt.quantize_async(x, im)
    return lambda: gt.dequantize(wait(), x.shape)
