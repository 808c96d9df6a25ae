"""Uncertainty of the quality figures: 95% intervals by a block bootstrap over the scored tokens, and
paired differences between two models scored on the same tokens.

The tokens of each window are cut into blocks of ``BLOCK`` consecutive positions (neighbouring tokens
are correlated; blocks are nearly independent), and only per-block sums are kept: token count, NLL,
KL and top-1 agreements. Resampling blocks with replacement gives the interval of each ratio statistic
(mean KL, PPL = exp(mean NLL), top-1 agreement). Two models scored on the same windows have the same
blocks, so one set of resampled indices serves both: the interval of the difference is paired, much
tighter than the two intervals side by side, as llama-perplexity's ± and its KL-divergence mode report.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

BLOCK = 64  # tokens per bootstrap block
RESAMPLES = 2000
SEED = 1234
KEYS = ("n", "nll", "kl", "agree", "cos")
STATS = ("kl_mean", "ppl", "top1_agreement", "cosine_mean")
_NEEDS = {"kl_mean": "kl", "ppl": "nll", "top1_agreement": "agree", "cosine_mean": "cos"}


def block_sums(nll: torch.Tensor, kl: torch.Tensor | None, agree: torch.Tensor | None, window_len: int) -> dict[str, list[float]]:
    """Per-token NLL / KL / top-1 agreement (n_windows * window_len,) -> per-block sums, blocks of
    ``BLOCK`` tokens that never cross a window."""
    n_win = nll.numel() // window_len
    starts = list(range(0, window_len, BLOCK))
    out: dict[str, list[float]] = {k: [] for k in ("n", "nll", "kl", "agree")}
    for w in range(n_win):
        for s in starts:
            sl = slice(w * window_len + s, w * window_len + min(s + BLOCK, window_len))
            out["n"].append(float(sl.stop - sl.start))
            out["nll"].append(float(nll[sl].double().sum()))
            out["kl"].append(float(kl[sl].double().sum()) if kl is not None else math.nan)
            out["agree"].append(float(agree[sl].sum()) if agree is not None else math.nan)
    return out


def cosine_blocks(cos: torch.Tensor) -> dict[str, list[float]]:
    """An encoder's per-passage cosines to the reference -> one block per passage."""
    return {"n": [1.0] * cos.numel(), "cos": [float(c) for c in cos.double()]}


def _stat(name: str, sums: dict[str, np.ndarray]) -> np.ndarray:
    n = sums["n"]
    if name == "ppl":
        return np.exp(sums["nll"] / n)
    return sums[_NEEDS[name]] / n


def _resampled(blocks: dict[str, list[float]], idx: np.ndarray) -> dict[str, np.ndarray]:
    return {k: np.asarray(blocks[k], dtype=np.float64)[idx].sum(axis=1) for k in KEYS if k in blocks}


def _indices(n_blocks: int) -> np.ndarray:
    return np.random.default_rng(SEED).integers(0, n_blocks, size=(RESAMPLES, n_blocks))


def ci95(blocks: dict[str, list[float]] | None) -> dict[str, list[float]] | None:
    """{stat: [lo, hi]} for mean KL, PPL and top-1 agreement (statistics that were not measured are left
    out); None without blocks."""
    if not blocks or not blocks.get("n"):
        return None
    sums = _resampled(blocks, _indices(len(blocks["n"])))
    out = {}
    for name in (s for s in STATS if _NEEDS[s] in sums):
        v = _stat(name, sums)
        if np.isfinite(v).all():
            lo, hi = np.percentile(v, [2.5, 97.5])
            out[name] = [float(lo), float(hi)]
    return out


def paired(a: dict[str, list[float]] | None, b: dict[str, list[float]] | None, name: str) -> dict[str, Any] | None:
    """The difference a - b of statistic ``name`` on the same blocks: {"diff", "ci95": [lo, hi],
    "distinguishable": whether the interval excludes 0, "blocks": how many}; None when the two were not scored
    on the same blocks. Where one was scored on more windows (``--until-decided``), the common first blocks
    are compared: windows are drawn prefix-stable, so they are the same tokens."""
    if not a or not b or not a.get("n") or not b.get("n") or _NEEDS[name] not in a or _NEEDS[name] not in b:
        return None
    k = min(len(a["n"]), len(b["n"]))  # one scored on more windows: the tokens both were scored on
    if a["n"][:k] != b["n"][:k]:
        return None
    a, b = ({key: v[:k] for key, v in x.items()} for x in (a, b))
    idx = _indices(len(a["n"]))
    full = np.arange(len(a["n"]))[None, :]
    diff = _stat(name, _resampled(a, idx)) - _stat(name, _resampled(b, idx))
    point = float((_stat(name, _resampled(a, full)) - _stat(name, _resampled(b, full)))[0])
    if not np.isfinite(diff).all():
        return None
    lo, hi = np.percentile(diff, [2.5, 97.5])
    return {"stat": name, "diff": point, "ci95": [float(lo), float(hi)], "distinguishable": bool(lo > 0 or hi < 0),
            "blocks": k}
