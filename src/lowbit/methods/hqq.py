"""Half-Quadratic Quantization (HQQ): a calibration-free solver for each block's grid.

Paper: Badri & Shaji, "Half-Quadratic Quantization of Large Machine Learning Models" (2023),
https://mobiusml.github.io/hqq_blog/ ; reference code https://github.com/mobiusml/hqq
(``hqq/core/optimize.py``, ``optimize_weights_proximal_legacy``).

HQQ minimizes a sparsity-promoting lp norm (p < 1) of the weight error, ``sum |W - W_r|^p`` with
``W_r = (W_q - zero) * scale``, so a few weights may keep a large error (the outliers) while all the
others get a small one. Half-quadratic splitting adds the error as a variable ``W_e`` and alternates
two closed-form steps, tightening the coupling ``beta`` as it goes::

    W_e  <- shrink_p(W - W_r, beta)            # proximal step of |.|^p: generalized soft threshold
    zero <- mean(W_q - (W - W_e) / scale)      # least-squares zero point for the current codes W_q
    beta <- kappa * beta

The reference keeps the range scale fixed and returns a FLOAT zero point. lowbit stores one integer
(uint8) zero point per block, so that every export path works, and runs three stages per block:

1. HQQ as published (asymmetric specs): float zero, scale fixed at RTN's range scale.
2. The integer grid: the zero is rounded to the nearest integer in ``[0, qmax]`` and the same proximal
   iteration runs with the roles swapped, zero fixed and the scale updated in closed form,
   ``scale <- <W - W_e, W_q - zero> / <W_q - zero, W_q - zero>``, rounded to ``spec.scale_dtype`` at
   every step so the codes are those the stored scale gives. The refit recovers most of what rounding
   the zero loses; it may widen the range, but it narrows it only as far as the block's extremes stay
   on the grid: ``scale >= max(w_max / (qmax - zero + 1/2), -w_min / (zero + 1/2))`` (rounded up in
   ``spec.scale_dtype``), so no weight ends more than half a step from its grid point. The reference
   never narrows the range (its scale is fixed); see "Why the extremes stay" below.
3. A guard: the lp objective of the stored result (exact codes, stored scale) is compared with plain
   RTN's, and each block keeps whichever is lower, so HQQ is never worse than RTN in its own objective.

Symmetric specs fix the zero at ``spec.mid``: stage 1 has nothing to optimize, stage 2 refits the scale
from RTN's absmax scale, stage 3 guards against symmetric RTN.

Every stage works on all blocks at once; a block leaves an iteration the first time its error stops
improving (the reference's early stop, per block) and keeps its best iterate.

Measured (Student-t weights, 2-4 bits, g64): stage 1 moves the zero by ~0.1 of a step on average, so
rounding returns RTN's integer zero in over 99.9% of blocks; the gain over RTN comes from the stage 2
scale refit. ``iters=0`` skips stage 1 for about a third less time and (there) the same result.

Why the extremes stay: without the bound, the refit (an L2 fit, then the lp guard) narrows the range
of most blocks and clips the largest weight of 12-41% of them by one or more steps. Weight error drops
(L2 -12% at 3 bits on SmolLM2-135M) but the model gets worse: in q_proj/k_proj a block's largest weight
carries ~40% of the output energy (it tends to sit on a massive-activation channel), so the clipped
weights shrink the attention logits (output error +9% vs RTN there). KL to the float model, SmolLM2-135M,
pydoc:eval, 2 x 512 tokens, g64 (RTN / HQQ with the refit unbounded / HQQ as here)::

    int4-asym  0.278 / 0.265 / 0.276      int2-asym  11.2 / 9.55 / 8.47
    int3-asym  1.083 / 1.300 / 1.040      int4-sym   0.387 / 0.349 / 0.364

Looser bounds help at 2 and 4 bits but lose to RTN at 3 (clipping up to 3/4 step: 1.136; bounding only
the larger-magnitude end: 1.105, and 1.143 vs RTN's 1.142 on 8 windows), so the bound is the plain one.

Trade-offs: no data, and about as fast as a few RTN passes (5-10 s for a 135M model on 2 CPU cores);
the weight error drops below RTN's by ~5-10% at 3-4 bits and ~25% at 2 bits, but it minimizes weight
error, not output error, so GPTQ/AWQ (which see activations) still win at equal bits. ``beta`` is
in weight units, as in the reference: the shrink leaves only errors above ``beta ** (-1 / (2 - p))``
(0.17 by default) as outliers, so on typical LLM weights (|w| ~ 0.02) it is a least-squares grid fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from lowbit import grid
from lowbit.calib.stats import LayerStats
from lowbit.errors import InputError
from lowbit.methods.base import GridConfig, register_method
from lowbit.spec import QuantSpec
from lowbit.tensor import QuantizedTensor


@dataclass(frozen=True)
class HQQConfig(GridConfig):
    """HQQ options (the reference defaults).

    lp_norm      p of the objective ``sum |error|^p``, in (0, 1]; p < 1 promotes sparse errors
    beta, kappa  initial coupling of the half-quadratic split and its growth per iteration (>= 1)
    iters        most iterations of the float-zero solver (stage 1)
    refit_iters  most iterations of the integer-zero scale refit (stage 2); 0 rounds only
    tol          relative decrease of a block's L1 error needed to keep iterating it (early stop)
    """

    lp_norm: float = field(default=0.7, metadata={
        "help": "p of the objective sum |error|^p, in (0, 1]; p < 1 favours sparse errors."})
    beta: float = field(default=10.0, metadata={"help": "Initial coupling of the half-quadratic split."})
    kappa: float = field(default=1.01, metadata={"help": "Growth of the coupling per iteration (>= 1)."})
    iters: int = field(default=20, metadata={"help": "Most iterations of the float-zero solver (stage 1)."})
    refit_iters: int = field(default=10, metadata={
        "help": "Most iterations of the integer-zero scale refit (stage 2); 0 rounds only."})
    tol: float = field(default=1e-4, metadata={
        "help": "Relative decrease of a block's L1 error needed to keep iterating it (early stop)."})

    def __post_init__(self) -> None:
        checks = {
            "lp_norm": 0 < self.lp_norm <= 1,
            "beta": self.beta > 0 and math.isfinite(self.beta),
            "kappa": 1 <= self.kappa and math.isfinite(self.kappa),
            "iters": isinstance(self.iters, int) and self.iters >= 0,
            "refit_iters": isinstance(self.refit_iters, int) and self.refit_iters >= 0,
            "tol": 0 <= self.tol < 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise InputError(
                f"HQQ option(s) {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)} out of range: need "
                "0 < lp_norm <= 1, beta > 0, kappa >= 1, integer iters >= 0 and refit_iters >= 0, 0 <= tol < 1"
            )


def _stored(scale: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """``scale`` rounded to its storage dtype, back in float32 (so codes are computed as they are stored)."""
    return scale.to(grid.scale_dtype(spec)).float()


def _extremes_floor(blocks: torch.Tensor, zero: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """The least stored scale (n, 1) that keeps each block's extremes on the grid, for ``zero`` (n, 1).

    ``w_max`` rounds to a code <= qmax iff ``w_max / scale + zero <= qmax + 1/2``, and ``w_min`` to a
    code >= 0 iff ``w_min / scale + zero >= -1/2``; any larger scale also keeps them. Rounded UP to
    ``spec.scale_dtype``, so the stored value still satisfies both.
    """
    hi = blocks.amax(dim=1, keepdim=True).clamp(min=0)
    lo = blocks.amin(dim=1, keepdim=True).clamp(max=0)
    floor = torch.maximum(hi / (spec.qmax + 0.5 - zero), -lo / (zero + 0.5))  # zero in [0, qmax]: no 0/0
    s = floor.to(grid.scale_dtype(spec))
    s = torch.where(s.float() < floor, torch.nextafter(s, torch.full_like(s, math.inf)), s)
    return s.float()


def _absorbed(e: torch.Tensor, a: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    """``e - shrink_p(e, beta)``: the part of the error ``e`` (m, L) the grid should absorb; ``a = |e|``.

    ``shrink_p(x) = sign(x) * relu(|x| - |x|^(p-1) / beta)`` is nonzero exactly where
    ``|x| > tau = beta^(-1/(2-p))``: there the grid absorbs only ``sign(x) |x|^(p-1) / beta`` and the
    rest is left as an outlier; elsewhere it absorbs all of ``x``. Only the outliers need a ``pow``.
    """
    big = a > beta ** (-1 / (2 - p))
    if not bool(big.any()):
        return e
    r = e.clone()
    r[big] = e[big].sign() * a[big].pow(p - 1) / beta
    return r


def _solve(
    w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, cfg: HQQConfig, iters: int,
    free: Literal["zero", "scale"], floor: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The half-quadratic proximal iteration on blocks ``w`` (n, L), updating ``free`` in closed form.

    ``scale``, ``zero`` (n, 1) float32 are the starting point; returns each block's best (scale, zero).
    With ``c = W_q - zero`` and ``r = e - W_e`` (see :func:`_absorbed`), the least-squares updates for
    ``W - W_e ≈ c * scale`` are ``zero -= mean(r) / scale`` (scale fixed, the reference's step) and
    ``scale += <r, c> / <c, c>`` (zero fixed); each update is kept ``>= floor`` (n, 1, stored values)
    when given (the start is not moved: RTN's scale, rounded to nearest, may sit a hair below). As in
    the reference, progress is the L1 error ``sum |e|`` (no ``pow`` per weight); a block stops the
    first time it fails to improve by ``tol``.
    """
    qmax, p, beta = cfg.spec.qmax, cfg.lp_norm, cfg.beta
    best_s, best_z = scale.clone(), zero.clone()
    best = torch.full((w.shape[0],), math.inf)
    idx = torch.arange(w.shape[0])  # the blocks still iterating
    s, z = scale, zero
    for it in range(iters + 1):
        c = torch.round(w / s + z).clamp_(0, qmax).sub_(z)  # (m, L) codes minus the zero point
        e = w - c * s
        a = e.abs()
        err = a.sum(dim=1)
        better = err < best[idx] * (1 - cfg.tol)  # NaN never counts as better
        best[idx[better]], best_s[idx[better]], best_z[idx[better]] = err[better], s[better], z[better]
        if it == iters or not bool(better.any()):
            break
        r = _absorbed(e, a, beta, p)
        if free == "zero":
            z = z - r.mean(dim=1, keepdim=True) / s
        else:
            new = _stored(s + (r * c).sum(dim=1, keepdim=True) / (c * c).sum(dim=1, keepdim=True), cfg.spec)
            if floor is not None:
                new = torch.maximum(new, floor)  # NaN stays NaN
            s = torch.where(torch.isfinite(new) & (new > 0), new, s)  # all codes on the zero: keep
        beta *= cfg.kappa
        if not bool(better.all()):  # only the blocks that improved take another step
            w, s, z, idx = w[better], s[better], z[better], idx[better]
            floor = None if floor is None else floor[better]
    return best_s, best_z


def _lp_objective(
    blocks: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, spec: QuantSpec, p: float
) -> torch.Tensor:
    """``sum |W - dequant(quant(W))|^p`` per block (n,), exactly as the result would be stored; NaN -> inf."""
    codes = grid.quantize_blocks(blocks, scale, zero, spec)
    obj = (grid.dequantize_blocks(codes, scale, zero, spec) - blocks).abs().pow(p).sum(dim=1)
    return torch.nan_to_num(obj, nan=math.inf)


def _integer_grid(
    blocks: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, cfg: HQQConfig
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Stages 1-2 from RTN's grid: HQQ's (stored scale (n,), uint8 zero (n,) or None)."""
    spec = cfg.spec
    s = scale.float().unsqueeze(1)  # (n, 1)
    if zero is None:  # symmetric: the zero is fixed at spec.mid, only the scale moves
        zm = torch.full_like(s, spec.mid)
        s, _ = _solve(blocks, s, zm, cfg, cfg.refit_iters, "scale", _extremes_floor(blocks, zm, spec))
        return s.squeeze(1).to(scale.dtype), None
    _, zf = _solve(blocks, s, zero.float().unsqueeze(1), cfg, cfg.iters, "zero")  # float zero
    zi = torch.round(zf).clamp_(0, spec.qmax)
    s, zi = _solve(blocks, s, zi, cfg, cfg.refit_iters, "scale", _extremes_floor(blocks, zi, spec))
    return s.squeeze(1).to(scale.dtype), zi.squeeze(1).to(torch.uint8)


@register_method("hqq", HQQConfig, needs=(), summary="half-quadratic lp-norm solver for scale/zero, no data")
def hqq(weight: torch.Tensor, cfg: HQQConfig, stats: LayerStats | None = None) -> QuantizedTensor:
    """Quantize ``weight`` (out, in) to ``cfg.spec`` with the HQQ solver on lowbit's integer grid.

    >>> qt = hqq(torch.randn(8, 64), HQQConfig(spec=QuantSpec(3, False, 32)))
    >>> qt.dequantize().shape
    torch.Size([8, 64])
    """
    spec, p = cfg.spec, cfg.lp_norm
    blocks = grid.as_blocks(weight, spec)  # (n_blocks, block_len)
    scale, zero = grid.qparams(blocks, spec)  # RTN's grid; also rejects NaN/inf and float16 overflow
    h_scale, h_zero = _integer_grid(blocks, scale, zero, cfg)
    # stage 3: a block takes HQQ's grid only where its stored result beats RTN in the lp objective
    win = _lp_objective(blocks, h_scale, h_zero, spec, p) < _lp_objective(blocks, scale, zero, spec, p)
    scale = torch.where(win, h_scale, scale)
    zero = None if zero is None or h_zero is None else torch.where(win, h_zero, zero)
    codes = grid.quantize_blocks(blocks, scale, zero, spec)
    return QuantizedTensor.from_codes(codes, scale, zero, spec, tuple(weight.shape))
