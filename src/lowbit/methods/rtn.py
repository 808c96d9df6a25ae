"""Round-to-nearest (RTN): the calibration-free baseline every other method is measured against.

Each block of ``spec.block_len`` weights gets a scale from its range and every weight is rounded to
the nearest grid point. Optionally an MSE clipping search shrinks each block's range by a factor in
``[clip_min, 1]`` and keeps the factor with the lowest squared reconstruction error (the same grid
search GPTQ's reference quantizer runs with ``mse=True``), trading a few clipped outliers for finer
steps everywhere else. Cost: one pass over the weights, times ``clip_grid`` with the search.

Trade-offs: no data needed and seconds to run, but at 4 bits and below it loses clearly to GPTQ/AWQ,
which use activations to decide which errors matter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lowbit import grid
from lowbit.calib.stats import LayerStats
from lowbit.errors import InputError
from lowbit.methods.base import GridConfig, register_method
from lowbit.tensor import QuantizedTensor


@dataclass(frozen=True)
class RTNConfig(GridConfig):
    """RTN options. ``clip_search`` enables the per-block MSE range search."""

    clip_search: bool = field(default=False, metadata={
        "help": "Search each block's clipping range for the least squared weight error."})
    clip_grid: int = field(default=20, metadata={"help": "How many range factors the clipping search tries, from 1 down to the smallest."})
    clip_min: float = field(default=0.5, metadata={"help": "Smallest range factor the clipping search tries, in (0, 1]."})

    def __post_init__(self) -> None:
        if self.clip_grid < 1 or not 0 < self.clip_min <= 1:
            raise InputError(
                f"clip_grid={self.clip_grid}, clip_min={self.clip_min}: need clip_grid >= 1 and 0 < clip_min <= 1"
            )


def _mse_shrink(blocks: torch.Tensor, cfg: RTNConfig) -> torch.Tensor:
    """Per-block range factor in [clip_min, 1] minimizing the squared error."""
    spec = cfg.spec
    best_err = torch.full((blocks.shape[0],), float("inf"), device=blocks.device)
    best = torch.ones(blocks.shape[0], device=blocks.device)
    for k in range(cfg.clip_grid):
        p = 1.0 - (1.0 - cfg.clip_min) * k / max(cfg.clip_grid - 1, 1)
        scale, zero = grid.qparams(blocks, spec, shrink=p, check=k == 0)
        deq = grid.dequantize_blocks(grid.quantize_blocks(blocks, scale, zero, spec), scale, zero, spec)
        err = (deq - blocks).pow(2).sum(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, torch.full_like(best, p), best)
    return best


@register_method("rtn", RTNConfig, needs=(), summary="round-to-nearest, optional MSE clipping search", on_device=True)
def rtn(weight: torch.Tensor, cfg: RTNConfig, stats: LayerStats | None = None) -> QuantizedTensor:
    """Quantize ``weight`` (out, in) to ``cfg.spec`` by rounding to nearest.

    >>> qt = rtn(torch.randn(8, 64), RTNConfig())
    >>> qt.dequantize().shape
    torch.Size([8, 64])
    """
    spec = cfg.spec
    blocks = grid.as_blocks(weight, spec)
    shrink = _mse_shrink(blocks, cfg) if cfg.clip_search else 1.0
    scale, zero = grid.qparams(blocks, spec, shrink=shrink)
    codes = grid.quantize_blocks(blocks, scale, zero, spec)
    return QuantizedTensor.from_codes(codes, scale, zero, spec, tuple(weight.shape))
