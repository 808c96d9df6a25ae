"""Activation statistics at a layer's input: the one gatherer behind every calibrated path.

GPTQ's Hessians and AWQ's channel magnitudes (gathered block by block in calib/capture.py),
SmoothQuant's channel maxima (one pass of the float model) and llama.cpp importance matrices
(calib/imatrix.py) all come from :class:`StatsAccumulator`, fed by forward pre-hooks
(:func:`collecting`), and reach a method as a typed :class:`LayerStats`.

Statistics (``needs``): ``hessian`` (2 X^T X / n), ``act_absmean`` (mean |x| per input channel),
``act_absmax`` (max |x| per input channel), ``act_sqsum`` (sum of x^2 per input channel, in float64:
importance matrices; not a method statistic).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

ACCUMULATED = ("hessian", "act_absmean", "act_absmax", "act_sqsum")


@dataclass
class LayerStats:
    """What calibration saw at one layer's input (``d`` input features), over ``rows`` token rows."""

    rows: int = 0
    hessian: torch.Tensor | None = None  # (d, d) float32, 2 X^T X / rows (the GPTQ paper's H)
    act_absmean: torch.Tensor | None = None  # (d,) mean |x|
    act_absmax: torch.Tensor | None = None  # (d,) max |x|

    def to(self, device: torch.device | str) -> LayerStats:
        """The same statistics on ``device``."""
        return LayerStats(self.rows, *(None if t is None else t.to(device)
                                       for t in (self.hessian, self.act_absmean, self.act_absmax)))

    def scaled(self, s: torch.Tensor) -> LayerStats:
        """The statistics of the inputs x / s (after a fold moved diag(s) into the weights)."""
        return LayerStats(
            self.rows,
            None if self.hessian is None else self.hessian / (s.unsqueeze(0) * s.unsqueeze(1)),
            None if self.act_absmean is None else self.act_absmean / s,
            None if self.act_absmax is None else self.act_absmax / s,
        )


def gram(x: torch.Tensor) -> torch.Tensor:
    """X^T X (d, d) in float32. The Hessians cost as much as the forward pass itself, and numpy computes
    ``a.T @ a`` as a symmetric rank-k update (BLAS syrk): half the flops of torch's general matmul,
    ~1.8x faster here. (The CLI and the benches stop OpenBLAS's idle threads from spinning against torch's.)
    On a GPU: torch's matmul, where the inputs are."""
    if x.device.type != "cpu":
        return x.detach().T @ x.detach()
    a = x.detach().contiguous().numpy()
    return torch.from_numpy(a.T @ a)


class StatsAccumulator:
    """Running sums of the statistics in ``needs`` over every input row it is given."""

    def __init__(self, needs: Iterable[str]) -> None:
        self.needs = tuple(needs)
        assert set(self.needs) <= set(ACCUMULATED), self.needs
        self.rows = 0
        self.xtx: torch.Tensor | None = None  # (d, d) float32, sum of x^T x
        self.abs_sum: torch.Tensor | None = None  # (d,) float32
        self.abs_max: torch.Tensor | None = None  # (d,) float32
        self.sq_sum: torch.Tensor | None = None  # (d,) float64

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()
        self.rows += x.shape[0]
        if "hessian" in self.needs:
            xtx = gram(x)
            self.xtx = xtx if self.xtx is None else self.xtx.add_(xtx)
        if "act_absmean" in self.needs:
            a = x.abs().sum(0)
            self.abs_sum = a if self.abs_sum is None else self.abs_sum + a
        if "act_absmax" in self.needs:
            m = x.abs().amax(0)
            self.abs_max = m if self.abs_max is None else torch.maximum(self.abs_max, m)
        if "act_sqsum" in self.needs:
            s = x.double().pow(2).sum(0)
            self.sq_sum = s if self.sq_sum is None else self.sq_sum + s

    def stats(self) -> LayerStats:
        n = max(self.rows, 1)
        return LayerStats(
            self.rows,
            None if self.xtx is None else self.xtx * (2.0 / n),
            None if self.abs_sum is None else self.abs_sum / n,
            self.abs_max,
        )


def _hook(acc: StatsAccumulator, _mod: nn.Module, args: tuple) -> None:
    acc.add(args[0])


@contextlib.contextmanager
def collecting(modules: Mapping[str, nn.Module], needs: Iterable[str]) -> Iterator[dict[str, StatsAccumulator]]:
    """Accumulate ``needs`` at the input of each named module for every forward run inside the block.
    Modules given under several names share one accumulator per module."""
    needs = tuple(needs)
    by_module: dict[int, StatsAccumulator] = {}
    accs: dict[str, StatsAccumulator] = {}
    hooks = []
    for key, mod in modules.items():
        if id(mod) not in by_module:
            by_module[id(mod)] = StatsAccumulator(needs)
            hooks.append(mod.register_forward_pre_hook(functools.partial(_hook, by_module[id(mod)])))
        accs[key] = by_module[id(mod)]
    try:
        yield accs
    finally:
        for h in hooks:
            h.remove()


@torch.no_grad()
def gather(model: nn.Module, modules: Mapping[str, nn.Module], needs: Iterable[str], batches: Iterable[Any],
           run: Callable[[nn.Module, Any], Any] | None = None) -> dict[str, StatsAccumulator]:
    """Run every batch through ``model`` (``run(model, batch)``; default: ``model(**batch)`` for a dict,
    ``model(input_ids=batch)`` for a tensor) and return each named module's accumulated statistics."""
    run = run or _run
    with collecting(modules, needs) as accs:
        for b in batches:
            run(model, b)
    return accs


def _run(model: nn.Module, batch: Any) -> Any:
    return model(**batch) if isinstance(batch, dict) else model(input_ids=batch)
