"""INT8 weights and activations (W8A8), SmoothQuant-style (Xiao et al. 2023,
https://arxiv.org/abs/2211.10438): the guide's option for a tiny, latency-critical model, with the
integer matmul measured rather than assumed.

- weights: int8 per output channel, symmetric (absmax / 127);
- activations: int8 per token, computed at run time (``act="dynamic"``), or one static scale per
  layer from the calibration data (``act="static"``);
- smoothing (``smooth=True``): activation outliers are moved into the weights with
  ``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)``, folded into the module that produces the input (a
  norm, or up_proj for down_proj; found by modules/fold.py, only where the fold leaves the float model
  unchanged); ``alpha=None`` searches {0.3 .. 0.9} for the lowest error on a calibration window.

The statistics (max |x| per input channel) come from the float model (``calibration="float"``); the
runnable layer is :class:`~lowbit.modules.w8a8_linear.W8A8Linear`.

    qh, report = lowbit.quantize(model, lowbit.make_config("w8a8", act="static", smooth=True), calib="pydoc:calib")

Trade-offs: the only family here that also speeds up prefill on a CPU with an int8 GEMM; static
activations need smoothing to be usable; post-norm encoders (BERT) admit no exact fold, so they are
quantized unsmoothed (with a warning).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lowbit.calib.stats import LayerStats
from lowbit.errors import CalibrationError, InputError
from lowbit.formats.int8 import QMAX
from lowbit.methods.base import MethodConfig, Transform, register_method
from lowbit.modules.fold import apply_fold
from lowbit.modules.w8a8_linear import W8A8Linear

log = logging.getLogger(__name__)
ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class W8A8Config(MethodConfig):
    act: str = field(default="dynamic", metadata={"help": "dynamic (per token) or static (per tensor) activations."})
    smooth: bool = field(default=False, metadata={"help": "SmoothQuant scales folded into the norms."})
    alpha: float | None = field(default=None, metadata={
        "help": "With --smooth: migration strength in (0, 1); searched when not given."})

    def __post_init__(self) -> None:
        if self.act not in ("dynamic", "static"):
            raise InputError(f"act={self.act!r}: choose dynamic (per token) or static (per tensor)")
        if self.alpha is not None and not 0 < self.alpha < 1:
            raise InputError(f"alpha={self.alpha}: the migration strength must be in (0, 1)")


@torch.no_grad()
def smooth(model: nn.Module, stats: dict[str, LayerStats], folds: list[tuple[str, list[str]]],
           alpha: float) -> dict[str, LayerStats]:
    """Fold SmoothQuant scales into each producer and its consumers (in place); returns the statistics
    of the smoothed inputs."""
    out = dict(stats)
    for producer, consumers in folds:
        mods = [model.get_submodule(n) for n in consumers]
        act = stats[consumers[0]].act_absmax.clamp_min(1e-5)
        wmax = torch.stack([m.weight.detach().abs().amax(0) for m in mods]).amax(0).clamp_min(1e-5)
        s = (act.pow(alpha) / wmax.pow(1 - alpha)).clamp_min(1e-5)
        apply_fold(model.get_submodule(producer), mods, s)
        for n in consumers:
            out[n] = stats[n].scaled(s)
    return out


def _smoothed(ctx: Any, folds: list[tuple[str, list[str]]], model: nn.Module, alpha: float) -> dict[str, LayerStats]:
    stats = smooth(model, ctx.stats, folds, alpha)
    err = ctx.output_error(model)
    if err > 1e-3:  # folding is exact algebra; anything else means a wrong producer was found
        raise CalibrationError(f"smoothing changed the float model's output (relative error {err:.2e})")
    return stats


def smoothable(producer: nn.Module, width: int) -> bool:
    """SmoothQuant's mappings: a norm into the Linears it feeds, and an MLP's up projection into its down
    projection (wider than the model). A Linear that writes the model's own width (attention values into
    the output projection) is left alone, as SmoothQuant's reference mappings leave it."""
    return not isinstance(producer, nn.Linear) or producer.out_features != width


def smoothquant(ctx: Any, cfg: W8A8Config) -> tuple[dict[str, LayerStats], dict[str, Any]]:
    """The model-scope transform: pick alpha (given, or the lowest error of the quantized model on a
    calibration probe over ALPHAS) and fold the scales into ``ctx.model``. ``ctx`` is the pipeline's
    ModelContext (model, stats, folds, width, output_error, score, quantized)."""
    if not cfg.smooth:
        return ctx.stats, {"smoothed_layers": []}
    folds = [(p, c) for p, c in ctx.folds if smoothable(ctx.model.get_submodule(p), ctx.width)]
    if not folds:
        log.warning("no norm output feeds only Linears (e.g. post-norm residuals), so no smoothing scale can be "
                    "folded exactly; W8A8 without smoothing")
        return ctx.stats, {"smoothed_layers": []}
    details: dict[str, Any] = {}
    alpha = cfg.alpha
    if alpha is None:
        scores = {}
        for a in ALPHAS:
            trial = copy.deepcopy(ctx.model)
            scores[a] = ctx.score(ctx.quantized(trial, _smoothed(ctx, folds, trial, a)))
        alpha = min(scores, key=scores.get)
        details["alpha_search"] = scores
    stats = _smoothed(ctx, folds, ctx.model, alpha)
    details.update(alpha=alpha, smoothed_layers=sorted(n for _, consumers in folds for n in consumers))
    return stats, details


@register_method("w8a8", W8A8Config, needs=("act_absmax",), calibration="float",
                 transform=Transform("model", smoothquant), produces="layer",
                 summary="W8A8 int8 weights and activations, optional SmoothQuant folds")
def w8a8(linear: nn.Linear, cfg: W8A8Config, stats: LayerStats | None = None) -> nn.Module:
    scale = None
    if cfg.act == "static":
        if stats is None or stats.act_absmax is None:
            raise CalibrationError("static W8A8 activations need calibration data (the input maxima)")
        scale = float(stats.act_absmax.max()) / QMAX
    return W8A8Linear(linear, cfg.act, scale)
