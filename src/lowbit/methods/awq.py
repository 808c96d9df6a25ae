"""AWQ: activation-aware weight quantization.

Lin, Tang, Tang, Yang, Dang, Gan, Han, "AWQ: Activation-aware Weight Quantization for LLM Compression
and Acceleration", MLSys 2024, https://arxiv.org/abs/2306.00978 (reference code: mit-han-lab/llm-awq,
casper-hansen/AutoAWQ).

A few input channels carry much larger activations than the rest, and the weights that multiply them
matter most. AWQ scales each input channel c of a group of Linears that read the same input by
``s_c = mean|x_c|^alpha`` (normalized), quantizes ``W diag(s)`` with plain RTN, and folds
``diag(s)^-1`` into the operation that produced x (a norm, or the previous Linear's rows), so the
float model is unchanged and the salient channels get finer steps. ``alpha`` is searched on a grid
to minimize the group's output error; here that error is measured exactly over every calibration
token through the input Hessian, ``tr(dW H dW^T)`` with ``H = 2 X^T X / n``, instead of on a
re-run of the module. An optional clipping search then shrinks each block's range, again scored by
the output error (``auto_clip``). Where no fold preserves the function (see modules/fold.py), the
group keeps its inputs unscaled and only the clipping search applies.

Trade-offs: needs calibration data (less sensitive to it than GPTQ: it only estimates per-channel
magnitudes), costs a grid search per group, and stores plain RTN weights, so every kernel and export
that takes RTN takes AWQ.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from lowbit import grid
from lowbit.calib.stats import LayerStats
from lowbit.errors import CalibrationError, InputError
from lowbit.methods.base import GridConfig, Transform, register_method
from lowbit.modules.fold import apply_fold
from lowbit.spec import PER_CHANNEL, PER_TENSOR, QuantSpec
from lowbit.tensor import QuantizedTensor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AWQConfig(GridConfig):
    """AWQ options: ``n_grid`` values of alpha in [0, 1); optional clipping search over ``clip_grid``
    range factors down to ``clip_min`` (AWQ's max_shrink 0.5)."""

    n_grid: int = field(default=20, metadata={
        "help": "How many values of alpha, from 0 up to 1, the search for the scales mean|x|^alpha tries."})
    clip_search: bool = field(default=True, metadata={
        "help": "After scaling, search each block's clipping range for the least output error."})
    clip_grid: int = field(default=20, metadata={"help": "How many range factors the clipping search tries, from 1 down to the smallest."})
    clip_min: float = field(default=0.5, metadata={"help": "Smallest range factor the clipping search tries, in (0, 1]."})

    def __post_init__(self) -> None:
        if self.n_grid < 1 or self.clip_grid < 1 or not 0 < self.clip_min <= 1:
            raise InputError("AWQ needs n_grid >= 1, clip_grid >= 1 and 0 < clip_min <= 1")


def _fake(w: torch.Tensor, spec: QuantSpec, shrink: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Quantize-dequantize ``w`` on ``spec``'s grid, the same arithmetic as grid.qparams /
    quantize_blocks / dequantize_blocks (scales rounded to their dtype), fused into a few float32 passes
    because the searches below call it 40 times per layer."""
    b = w.float().reshape(-1, spec.block_len(tuple(w.shape)))
    if torch.is_tensor(shrink):
        shrink = shrink.unsqueeze(1)
    sdt = grid.scale_dtype(spec)
    if spec.symmetric:
        s = (b.abs().amax(1, keepdim=True) * shrink / (spec.qmax / 2)).to(sdt).float()
        s = torch.where(s == 0, torch.ones_like(s), s)
        q = torch.round(b / s).clamp_(-spec.mid, spec.mid - 1)
        return (q * s).view(w.shape)
    lo = b.amin(1, keepdim=True).clamp(max=0) * shrink
    hi = b.amax(1, keepdim=True).clamp(min=0) * shrink
    s = ((hi - lo) / spec.qmax).to(sdt).float()
    s = torch.where(s == 0, torch.ones_like(s), s)
    z = torch.round(-lo / s).clamp_(0, spec.qmax)
    q = torch.round(b / s).add_(z).clamp_(0, spec.qmax)
    return ((q - z) * s).view(w.shape)


def output_error(dw: torch.Tensor, h: torch.Tensor) -> float:
    """sum over output rows of dw_r H dw_r^T: the squared output error over the calibration tokens."""
    return float(((dw @ h) * dw).sum())


def search_scale(w: torch.Tensor, act_absmean: torch.Tensor, h: torch.Tensor, cfg: AWQConfig) -> tuple[torch.Tensor, float]:
    """Best per-input-channel scale s (in,) for ``w`` (out, in) and its alpha; alpha = 0 (s = 1, plain
    RTN) is on the grid, so the result is never worse than RTN by this measure."""
    grid.qparams(grid.as_blocks(w, cfg.spec), cfg.spec)  # validates the weight once (NaN / inf)
    a = act_absmean.float().clamp(min=1e-4)
    best_err, best_s, best_alpha = float("inf"), torch.ones_like(a), 0.0
    for k in range(cfg.n_grid):
        alpha = k / cfg.n_grid
        s = a.pow(alpha)
        s = s / (s.max() * s.min()).sqrt()
        deq = _fake(w * s, cfg.spec) / s
        err = output_error(deq - w, h)
        if err < best_err:
            best_err, best_s, best_alpha = err, s, alpha
    return best_s, best_alpha


def clip_rtn(w: torch.Tensor, h: torch.Tensor, spec: QuantSpec, n: int, clip_min: float) -> QuantizedTensor:
    """RTN with a per-block range factor chosen to minimize the block's output error through H."""
    rows, cols = w.shape
    blocks = grid.as_blocks(w, spec)
    grid.qparams(blocks, spec)  # validates the weight once (NaN / inf)
    nb = blocks.shape[0]
    if spec.group_size not in (PER_CHANNEL, PER_TENSOR):
        g = spec.group_size
        hb = torch.stack([h[i : i + g, i : i + g] for i in range(0, cols, g)])  # (n_groups, g, g)
    best_err = torch.full((nb,), float("inf"), device=w.device)
    best = torch.ones(nb, device=w.device)
    for k in range(n):
        p = 1.0 - (1.0 - clip_min) * k / max(n - 1, 1)
        dw = _fake(w, spec, shrink=p) - w
        if spec.group_size == PER_TENSOR:
            err = (((dw @ h) * dw).sum()).view(1)
        elif spec.group_size == PER_CHANNEL:
            err = ((dw @ h) * dw).sum(1)
        else:
            d = dw.view(rows, cols // g, g)
            err = torch.einsum("rkg,kgh,rkh->rk", d, hb, d).reshape(-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, torch.full_like(best, p), best)
    scale, zero = grid.qparams(blocks, spec, shrink=best)
    return QuantizedTensor.from_codes(grid.quantize_blocks(blocks, scale, zero, spec), scale, zero, spec, tuple(w.shape))


def awq_block_transform(
    groups: list[tuple[list[str], list[nn.Linear], nn.Module | None]],
    stats: list[LayerStats],
    cfg: AWQConfig,
) -> list[LayerStats]:
    """Search and fold the scales of every group of one block; return each group's statistics as seen
    through the scaled inputs (x / s): H' = D^-1 H D^-1, mean|x|' = mean|x| / s."""
    out = []
    for (names, lins, producer), st in zip(groups, stats):
        if producer is None or st.rows == 0:
            out.append(st)
            continue
        w = torch.cat([m.weight.data.float() for m in lins])
        s, alpha = search_scale(w, st.act_absmean, st.hessian, cfg)
        if alpha > 0:
            apply_fold(producer, lins, s)
        log.debug("AWQ %s: alpha %.2f", names, alpha)
        out.append(st.scaled(s))
    return out


@register_method("awq", AWQConfig, needs=("hessian", "act_absmean"),
                 summary="AWQ: activation-aware scales folded into the previous op, then RTN (Lin et al. 2023)",
                 transform=Transform("block", awq_block_transform), on_device=True)
def awq(weight: torch.Tensor, cfg: AWQConfig, stats: LayerStats | None = None) -> QuantizedTensor:
    """Quantize an (already AWQ-scaled) weight: RTN, with the output-error clipping search if enabled."""
    if stats is None or stats.hessian is None:
        raise CalibrationError("AWQ needs the layer's input statistics: give calibration data")
    if not cfg.clip_search:
        blocks = grid.as_blocks(weight, cfg.spec)
        scale, zero = grid.qparams(blocks, cfg.spec)
        return QuantizedTensor.from_codes(grid.quantize_blocks(blocks, scale, zero, cfg.spec), scale, zero, cfg.spec,
                                          tuple(weight.shape))
    return clip_rtn(weight.float(), stats.hessian, cfg.spec, cfg.clip_grid, cfg.clip_min)
