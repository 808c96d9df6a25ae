"""LLM.int8() (Dettmers et al. 2022), the guide's "load in 8-bit, no calibration" option:

- weights: int8 per output row, absmax / 127 (vector-wise), the arithmetic of
  ``bitsandbytes.functional.int8_vectorwise_quant``, reproduced exactly by :func:`int8_vectorwise_quant`;
- activations: int8 per token at run time, except the *outlier columns*, those where any token's
  |x| >= ``threshold`` (6.0): they are left out of the int8 product and multiplied in float32 against the
  dequantized weight columns. int8 x int8 -> int32 is an exact integer product (``torch._int_mm``).

    qh, report = quantize_llm_int8(load_model("smollm2"))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.compare.candidates import Built, Candidate, register_candidate
from lowbit.errors import InputError
from lowbit.loaders import ModelHandle
from lowbit.loaders.handle import CAUSAL_LM, ENCODER
from lowbit.methods.layers import swap_linears
from lowbit.modules.qlinear import QuantizedLinear


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


def int_mm(a: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
    """int8 (m, k) x int8 (k, n) -> int32 (m, n) through torch._int_mm, which wants more than 16 rows:
    fewer are padded with zero rows."""
    m = a.shape[0]
    return torch._int_mm(F.pad(a, (0, 0, 0, 17 - m)) if m <= 16 else a, b_t)[:m]


def _int_matmul(a: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
    """int8 (m, k) x int8 (k, n) -> exact int32/float64 result, as float64. The fast path is torch._int_mm;
    the exact float64 product is the fallback and the quality path."""
    if QuantizedLinear.kernel_mode != "dequant":
        try:
            return int_mm(a, b_t).double()
        except RuntimeError:
            pass
    return a.double() @ b_t.double()


class LinearInt8(nn.Module):
    def __init__(self, linear: nn.Linear, threshold: float = 6.0) -> None:
        super().__init__()
        self.in_features, self.out_features, self.threshold = linear.in_features, linear.out_features, threshold
        codes, scb, _ = int8_vectorwise_quant(linear.weight.detach().float())
        self.register_buffer("CB", codes)
        self.register_buffer("SCB", scb)
        self.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False) if linear.bias is not None else None
        self._cbt: torch.Tensor | None = None

    @classmethod
    def empty(cls, like: nn.Linear, info: dict) -> LinearInt8:
        return cls(nn.Linear(like.in_features, like.out_features, bias=like.bias is not None), info["threshold"])

    def record(self) -> dict:
        return {"module": "llm_int8", "shape": [self.out_features, self.in_features], "threshold": self.threshold,
                "format": f"int8 rows, outliers >= {self.threshold:g}"}

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.CB.float() * (self.SCB[:, None] / 127.0)).to(dtype)

    @property
    def quant_nbytes(self) -> int:
        return self.CB.numel() + 4 * self.SCB.numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        a = x.reshape(-1, self.in_features).float()
        ca, sca, cols = int8_vectorwise_quant(a, self.threshold)
        if self._cbt is None:
            self._cbt = self.CB.T.contiguous()
        acc = _int_matmul(ca, self._cbt)
        out = (acc * (sca.double()[:, None] * self.SCB.double()[None, :]) / (127.0 * 127.0)).float()
        if cols is not None and cols.numel():  # outlier columns in float32
            out += a[:, cols] @ self.dequantize()[:, cols].T
        if self.bias is not None:
            out += self.bias
        return out.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, threshold={self.threshold}"


def quantize_llm_int8(model: ModelHandle | nn.Module | str, threshold: float = 6.0,
                      targets: Sequence[str] | None = None, ignore: Sequence[str] | None = None) -> tuple[ModelHandle, dict[str, Any]]:
    """A copy of ``model`` with its selected Linears (default: all but the head) in LLM.int8."""
    if threshold < 0:
        raise InputError(f"threshold={threshold}: must be >= 0 (0 turns the outlier decomposition off)")
    return swap_linears(model, lambda lin: LinearInt8(lin, threshold), "LLM.int8",
                        {"method": "int8", "threshold": threshold}, targets, ignore)


def _build(ref: ModelHandle, ctx: Any) -> Built:
    qh, rep = quantize_llm_int8(ref)
    return Built(qh, extra={"quantize_seconds": rep["seconds"]})


register_candidate(Candidate("bnb-int8", "bitsandbytes", 8, "LLM.int8 (int8 rows, outlier columns >= 6 in float32)",
                             "bnb-int8", _build, kinds=(CAUSAL_LM, ENCODER), config="llm_int8:6.0", default=True,
                             plan_method="bnb-int8"))
