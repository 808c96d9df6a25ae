"""The two int8 grids of the int8 families, bit-exact with their references:

- LLM.int8 (Dettmers et al. 2022) vector-wise rows: :func:`int8_vectorwise_quant` reproduces
  ``bitsandbytes.functional.int8_vectorwise_quant`` (absmax per row, ``round(x * 127 / absmax)``, with
  outlier columns zeroed);
- W8A8 (SmoothQuant-style) weights and activations: :func:`int8_rows` (per output row, absmax / 127)
  and :func:`token_scales` (per token, absmax / 127).
"""

from __future__ import annotations

import torch

QMAX = 127.0


def int8_vectorwise_quant(a: torch.Tensor, threshold: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Row-wise int8 of a 2-D ``a``: (codes int8, row absmax float32, outlier columns or None). With a
    threshold, values at or above it are zeroed before the absmax (so they do not stretch the scale)
    and their whole columns are zeroed in the codes, as bitsandbytes does."""
    a = a.clone()
    outlier_cols = None
    if threshold > 0.0:
        outliers = a.abs() >= threshold
        outlier_cols = torch.argwhere(outliers.any(dim=0)).view(-1)
        a[outliers] = 0
    row_stats = torch.max(a.abs(), dim=1).values.float()
    codes = torch.round(a * (127.0 / row_stats.unsqueeze(-1))).to(torch.int8)
    if a.shape[0] > 1 and outlier_cols is not None:
        codes[:, outlier_cols] = 0
    return codes, row_stats, outlier_cols


def int8_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W8A8's weight grid: integer-valued codes in [-127, 127] per output row and the row scales
    (absmax / 127), both float32."""
    scale = (w.abs().amax(1) / QMAX).clamp_min(1e-12)
    return torch.clamp(torch.round(w / scale[:, None]), -QMAX, QMAX), scale


def token_scales(x: torch.Tensor) -> torch.Tensor:
    """Dynamic activation scales: one per token (row of the last dimension), absmax / 127."""
    return (x.abs().amax(-1, keepdim=True) / QMAX).clamp_min(1e-12)
