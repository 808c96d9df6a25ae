"""GPTQ: one-shot weight quantization with second-order error feedback.

Frantar, Ashkboos, Hoefler, Alistarh, "GPTQ: Accurate Post-Training Quantization for Generative
Pre-trained Transformers", ICLR 2023, https://arxiv.org/abs/2210.17323 (reference code:
IST-DASLab/gptq).

Columns of W (out, in) are quantized one at a time; each column's rounding error is spread over the
columns not yet quantized, weighted by the inverse Hessian H = 2 X^T X / n of the layer's inputs, so
the layer's *output* error ||WX - QX|| is minimized rather than the weight error. Updates are applied
lazily in blocks of ``block_size`` columns (the paper's "lazy batch updates"), and the inverse is taken
once through a Cholesky factor. ``act_order`` quantizes columns in order of decreasing H diagonal
(most-used inputs first). Groups stay contiguous in the stored layout (no g_idx permutation): each
group's scale and zero are fixed when its first column comes up, from the group's weights as updated
by the error feedback so far, or, with ``static_groups``, from the original weights before the pass
(the reference code's static groups; updated weights can then overflow the grid, badly at 3 bits).

Trade-offs: needs calibration data and one forward pass per block; clearly better than RTN at 3-4
bits; a calibration set unlike the deployment data can hurt (the guide's calibration-set trap).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from lowbit import grid
from lowbit.calib.stats import LayerStats
from lowbit.errors import CalibrationError, InputError
from lowbit.methods.base import GridConfig, register_method
from lowbit.spec import PER_CHANNEL, PER_TENSOR, QuantSpec
from lowbit.tensor import QuantizedTensor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GPTQConfig(GridConfig):
    """GPTQ options.

    damp:        dampening, as a fraction of the mean Hessian diagonal added to the diagonal
    block_size:  columns per lazy batch update
    act_order:   quantize columns by decreasing Hessian diagonal (desc_act); on by default: it costs
                 nothing here and on smollm2 it roughly halves the KL of plain GPTQ
    static_groups: with act_order, fix every group's grid from the original weights before any update
                 (the reference code's static_groups, llm-compressor's "static" actorder). Off by default:
                 each group's grid is fixed when its first column is reached, from the weights as updated
                 so far. Groups stay contiguous either way (no g_idx). On smollm2 at 3-bit symmetric the
                 static grid is overflowed by the error-compensated weights (KL 1.52 vs 0.68).
    max_damp:    give up (CalibrationError) if the Hessian is still not positive definite at this damping
    """

    damp: float = field(default=0.01, metadata={
        "help": "Dampening added to the Hessian diagonal, as a fraction of its mean."})
    block_size: int = field(default=128, metadata={"help": "Columns per lazy batch update (speed only)."})
    act_order: bool = field(default=True, metadata={"help": (
        "Quantize the columns by decreasing Hessian diagonal, most-used inputs first. Each group's grid is "
        "fixed when the pass first reaches one of its columns, from the weights as updated so far "
        "(--static-groups: from the original weights, before the pass). Groups stay contiguous.")})
    static_groups: bool = field(default=False, metadata={"help": (
        "With act-order, fix every group's grid from the original weights before the pass (the reference "
        "code's static groups); the updated weights can then overflow it, badly at 3 bits.")})
    max_damp: float = field(default=10.0, metadata={
        "help": "Give up if the Hessian is still not positive definite at this dampening."})

    def __post_init__(self) -> None:
        if not 0 <= self.damp <= self.max_damp or self.block_size < 1:
            raise InputError(f"damp={self.damp} must lie in [0, max_damp={self.max_damp}] and block_size >= 1")


@dataclass
class GPTQInfo:
    damp_used: float
    retries: int
    dead_inputs: int
    loss: float


def _inverse_cholesky(flipped: torch.Tensor, mean_diag: float, cfg: GPTQConfig) -> tuple[torch.Tensor, float, int]:
    """Upper triangular U with U^T U = (H + damp)^-1, raising the damping until H is positive definite.
    Takes J H J (``flipped``, which it uses as its workspace) and the mean of H's diagonal.

    One Cholesky and one triangular inverse: with J the order-reversing permutation and
    J H J = L L^T, (H)^-1 = (J L^-1 J)^T (J L^-1 J), and J L^-1 J is upper triangular. (The reference
    code takes cholesky -> cholesky_inverse -> cholesky, about twice the work.)
    """
    damp, retries = cfg.damp, 0
    while True:
        added = damp * mean_diag
        flipped.diagonal().add_(added)
        chol, info = torch.linalg.cholesky_ex(flipped)
        flipped.diagonal().sub_(added)
        if int(info) == 0:
            eye = torch.eye(flipped.shape[0], dtype=flipped.dtype, device=flipped.device)
            linv = torch.linalg.solve_triangular(chol, eye, upper=False)
            del chol, eye
            upper = linv.flip(0, 1)
            del linv
            if bool(torch.isfinite(upper).all()):
                return upper, damp, retries
        retries += 1
        damp = max(damp * 10, 1e-4)
        if damp > cfg.max_damp:
            raise CalibrationError(
                f"Hessian not positive definite even with damping {damp / 10:g}; use more calibration samples"
            )


def _static_qparams(w: torch.Tensor, spec: QuantSpec, g: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scale/zero per block from the original weights, shaped (out, in/g) (one column for per-channel)."""
    blocks = grid.as_blocks(w, spec)
    scale, zero = grid.qparams(blocks, spec, check=False)  # the weight was checked on entry
    if spec.group_size == PER_TENSOR:
        n = w.shape[1] // g
        return scale.view(1, 1).expand(w.shape[0], n), None if zero is None else zero.view(1, 1).expand(w.shape[0], n)
    return scale.view(w.shape[0], -1), None if zero is None else zero.view(w.shape[0], -1)


def _solve_rows(wt: torch.Tensor, codes_t: torch.Tensor, hinv: torch.Tensor, diag: list[float], groups: list[int],
                g: int, spec: QuantSpec, block_size: int, scale_g: torch.Tensor, zero_g: torch.Tensor | None,
                static: bool) -> float:
    """GPTQ's column loop over the permuted, transposed weight ``wt`` (cols, rows), updated in place: on
    return each of its rows holds that column as it was rounded. Writes the codes into ``codes_t``
    (cols, rows) and, for dynamic groups, the grid into ``scale_g`` / ``zero_g``. Returns the GPTQ loss."""
    cols, rows = wt.shape
    loss = 0.0
    mid = float(spec.mid)
    # float copies of the grid, one contiguous row per group: (n_groups, rows)
    dev = wt.device
    scale_f = scale_g.float().t().contiguous() if static else torch.empty(cols // g, rows, device=dev)
    zero_f = (zero_g.float().t().contiguous() if static else torch.empty(cols // g, rows, device=dev)) if zero_g is not None else None
    qbuf = torch.empty(rows, device=dev)
    fixed: set[int] = set()
    members: dict[int, list[int]] = {}
    for pos, gi in enumerate(groups):
        members.setdefault(gi, []).append(pos)
    for b0 in range(0, cols, block_size):
        b1 = min(b0 + block_size, cols)
        w1 = wt[b0:b1].clone()  # (bs, rows)
        err1 = torch.empty_like(w1)
        hinv1 = hinv[b0:b1, b0:b1]
        for j in range(b1 - b0):
            col = b0 + j
            gi = groups[col]
            if not static and gi not in fixed:  # dynamic groups: fix the grid when the group is first
                # reached, from its columns as updated so far (with act-order they are scattered; all of
                # them are still ahead). The reference code reads the stale W here.
                fixed.add(gi)
                vals = torch.stack([w1[p - b0] if p < b1 else wt[p] for p in members[gi]])
                sc, zc = grid.qparams(vals.t(), spec, check=False)
                scale_g[:, gi] = sc
                scale_f[gi] = sc.float()
                if zero_g is not None:
                    zero_g[:, gi] = zc
                    zero_f[gi] = zc.float()
            s = scale_f[gi]
            z = zero_f[gi] if zero_f is not None else mid
            x, e = w1[j], err1[j]
            q = torch.div(x, s, out=qbuf).round_().add_(z).clamp_(0, spec.qmax)  # no allocations:
            codes_t[col] = q                                                     # this loop runs
            torch.addcmul(x, q.sub_(z), s, value=-1, out=e).div_(diag[col])    # ~10^5 times
            if j + 1 < b1 - b0:
                w1[j + 1 :].addr_(hinv1[j, j + 1 :], e, alpha=-1)
        loss += 0.5 * float((err1.pow(2).sum(1) * torch.tensor(diag[b0:b1], device=dev).pow(2)).sum())
        wt[b0:b1] = w1  # each column as it was rounded (error-compensated); not read again by the solver
        wt[b1:] -= hinv[b0:b1, b1:].t() @ err1
    return loss


def gptq_quantize(
    weight: torch.Tensor, hessian: torch.Tensor, cfg: GPTQConfig
) -> tuple[QuantizedTensor, GPTQInfo]:
    """Quantize ``weight`` (out, in) given the input Hessian (in, in); returns the tensor and solver info."""
    spec = cfg.spec
    w = weight.detach().to(torch.float32).clone()
    rows, cols = w.shape
    spec.block_len(tuple(w.shape))  # validates the group size
    g = cols if spec.group_size in (PER_CHANNEL, PER_TENSOR) else spec.group_size
    grid.qparams(grid.as_blocks(w, spec), spec)  # NaN / inf in the weight is a clear error, once
    h = hessian.to(w.device, torch.float32).clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0

    static = (cfg.act_order and cfg.static_groups) or spec.group_size in (PER_CHANNEL, PER_TENSOR)
    scale_g = zero_g = None  # (rows, n_groups)
    if static:
        scale_g, zero_g = _static_qparams(w, spec, g)
    else:
        scale_g = torch.empty(rows, cols // g, dtype=grid.scale_dtype(spec), device=w.device)
        zero_g = None if spec.symmetric else torch.empty(rows, cols // g, dtype=torch.uint8, device=w.device)

    perm = torch.argsort(torch.diag(h), descending=True) if cfg.act_order else torch.arange(cols, device=w.device)
    w = w[:, perm]
    h = h[perm]
    h = h[:, perm]
    group_of = perm // g  # group (in original order) of each permuted column
    n_dead = int(dead.sum())
    mean_diag = float(torch.diag(h).mean())
    h = h.flip(0, 1)  # n x n copies are the memory of a wide layer (13824^2: 764 MB): one at a time
    hinv, damp, retries = _inverse_cholesky(h, mean_diag, cfg)
    del h

    # The column loop is ~10^5 tiny ops: it runs single-threaded (thread hand-offs inside an op cost
    # more than the work, badly so on a busy machine); the block updates are matmuls. (Splitting the
    # rows across Python threads was tried: the GIL makes it twice as slow.)
    codes_t = torch.empty(cols, rows, dtype=torch.uint8, device=w.device)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        wt = w.t().contiguous()
        loss = _solve_rows(wt, codes_t, hinv, torch.diag(hinv).tolist(), group_of.tolist(), g, spec, cfg.block_size,
                           scale_g, zero_g, static)
    finally:
        torch.set_num_threads(threads)
    codes = codes_t.t()
    inv = torch.argsort(perm)
    codes = codes[:, inv].contiguous()
    if spec.group_size == PER_TENSOR:
        scale, zero = scale_g[:1, 0].contiguous(), None if zero_g is None else zero_g[:1, 0].contiguous()
    elif spec.group_size == PER_CHANNEL:
        scale, zero = scale_g[:, 0].contiguous(), None if zero_g is None else zero_g[:, 0].contiguous()
    else:
        scale, zero = scale_g.reshape(-1).contiguous(), None if zero_g is None else zero_g.reshape(-1).contiguous()
    block_codes = codes.reshape(-1, spec.block_len(tuple(weight.shape)))
    qt = QuantizedTensor.from_codes(block_codes, scale, zero, spec, tuple(weight.shape))
    qt.prerounding = wt.t()[:, inv].contiguous()
    return qt, GPTQInfo(damp, retries, n_dead, loss)


@register_method("gptq", GPTQConfig, needs=("hessian",), summary="GPTQ: Hessian-based error feedback (Frantar et al. 2022)",
                 on_device=True)
def gptq(weight: torch.Tensor, cfg: GPTQConfig, stats: LayerStats | None = None) -> QuantizedTensor:
    """Quantize ``weight`` with GPTQ; ``stats.hessian`` is 2 X^T X / n of its inputs."""
    if stats is None or stats.hessian is None:
        raise CalibrationError("GPTQ needs the layer's input Hessian: give calibration data")
    qt, info = gptq_quantize(weight, stats.hessian, cfg)
    if info.retries:
        log.warning("GPTQ: Hessian not positive definite, damping raised %d time(s) to %g", info.retries, info.damp_used)
    return qt
