"""Is the predicted dKL worth trusting? Measured against the ground truth: the KL of the model with one
tensor quantized (the whole tensor, bit-exact with the file), and of whole allocations.

- ``proxy_check``: a stratified sample of (tensor, type) pairs, each measured alone; Spearman's rank
  correlation between predicted and measured dKL, over all pairs and within each type (the ranking of
  tensors the allocation relies on).
- ``measured_kl``: the KL of a model with every tensor in its allocated type; against the summed
  predictions it checks the additivity the allocation assumes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lowbit.budget.allocate import Sensitivity, TensorRow
from lowbit.budget.sensitivity import Option
from lowbit.formats.ggml import GGML_TYPES
from lowbit.loaders.handle import ModelHandle
from lowbit.metrics.lm import ReferenceLM, score_lm


def quantized_values(w: np.ndarray, t: str, imatrix: np.ndarray | None) -> np.ndarray:
    """``w`` (GGUF layout) as the file stores it in type ``t``, dequantized."""
    if t == "F32":
        return w
    if t == "F16":
        return w.astype(np.float16).astype(np.float32)
    g = GGML_TYPES.get(t)
    return g.dequantize(g.quantize(w, imatrix), w.shape)


class Perturber:
    """Swaps tensors of ``handle``'s model for their quantized values and scores KL against ``ref``."""

    def __init__(self, handle: ModelHandle, ref: ReferenceLM, windows: torch.Tensor,
                 imatrix: dict[str, np.ndarray] | None = None) -> None:
        from lowbit.writers.gguf import float_tensors, tensor_names

        self.handle, self.ref, self.windows, self.imatrix = handle, ref, windows, imatrix
        self.hf = {g: hf for hf, g in tensor_names(handle.model)}
        self.original = {g: np.array(a, copy=True) for g, a in float_tensors(handle)}  # not views of the parameters

    def kl(self) -> float:
        s = score_lm(self.handle.model, self.windows, self.ref, label="dKL")
        return float(s.kl.mean())

    def measure(self, types: dict[str, str]) -> float:
        """Mean KL with each named tensor in its type (the rest as they are), then restored."""
        from lowbit.writers.gguf import put_tensor

        m = self.handle.model
        try:
            for name, t in types.items():
                im = None if self.imatrix is None else self.imatrix.get(name)
                put_tensor(m, self.hf[name], name, quantized_values(self.original[name], t, im))
            return self.kl()
        finally:
            for name in types:
                put_tensor(m, self.hf[name], name, self.original[name])


@dataclass
class ProxyCheck:
    pairs: list[tuple[str, str, float, float]]  # tensor, type, predicted, measured
    spearman: float
    within_type: dict[str, float]  # type -> Spearman over the tensors sampled in it
    base_kl: float


def sample_pairs(sens: Sensitivity, n: int, seed: int = 0) -> list[tuple[TensorRow, Option]]:
    """``n`` (tensor, type) pairs: tensors spread over the roles and depths, each with types spread
    over its options (cheapest, dearest and between), so both orderings are tested."""
    rng = np.random.default_rng(seed)
    rows = [r for r in sens.rows if r.quantizable]
    per = 4
    picks = rng.choice(len(rows), size=min(len(rows), max(1, n // per)), replace=False)
    out = []
    for i in sorted(picks):
        r = rows[i]
        opts = sorted((o for o in r.options if o.type != "F16"), key=lambda o: o.nbytes)
        at = np.unique(np.linspace(0, len(opts) - 1, min(per, len(opts))).round().astype(int))
        out += [(r, opts[j]) for j in at]
    return out[:n]


def proxy_check(p: Perturber, sens: Sensitivity, n: int = 40, seed: int = 0) -> ProxyCheck:
    from scipy.stats import spearmanr

    base = p.kl()  # the unperturbed copy's KL (0 up to rounding): subtracted from each measurement
    pairs = [(r.name, o.type, o.dkl, p.measure({r.name: o.type}) - base) for r, o in sample_pairs(sens, n, seed)]
    pred, meas = np.array([x[2] for x in pairs]), np.array([x[3] for x in pairs])
    within = {}
    for t in sorted({x[1] for x in pairs}):
        idx = [i for i, x in enumerate(pairs) if x[1] == t]
        if len(idx) >= 4 and np.ptp(pred[idx]) > 0 and np.ptp(meas[idx]) > 0:  # a constant side has no ranking
            within[t] = float(spearmanr(pred[idx], meas[idx]).statistic)
    return ProxyCheck(pairs, float(spearmanr(pred, meas).statistic), within, base)
