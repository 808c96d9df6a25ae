"""LinearInt8: LLM.int8() (Dettmers et al. 2022) as a runnable layer.

- weights: int8 per output row, absmax / 127 (vector-wise, formats/int8.py);
- activations: int8 per token at run time, except the *outlier columns*, those where any token's
  |x| >= ``threshold`` (6.0): they are left out of the int8 product and multiplied in float32 against the
  dequantized weight columns. int8 x int8 -> int32 is an exact integer product (``torch._int_mm``
  unless the layer's kernel mode is "dequant", which takes the same product in float64).
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.formats.int8 import int8_vectorwise_quant
from lowbit.modules.int8_kernels import int_mm


class LinearInt8(nn.Module):
    def __init__(self, linear: nn.Linear, threshold: float = 6.0) -> None:
        super().__init__()
        self.in_features, self.out_features, self.threshold = linear.in_features, linear.out_features, threshold
        codes, scb, _ = int8_vectorwise_quant(linear.weight.detach().float())
        self.register_buffer("CB", codes)
        self.register_buffer("SCB", scb)
        self.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False) if linear.bias is not None else None
        self.kernel_mode = "auto"
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

    def _int_matmul(self, a: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
        """int8 (m, k) x int8 (k, n) -> the exact integer result, as float64: torch._int_mm when allowed
        and available, else the same product in float64 (exact for these sizes)."""
        if self.kernel_mode != "dequant":
            try:
                return int_mm(a, b_t).double()
            except RuntimeError:
                pass
        return a.double() @ b_t.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        a = x.reshape(-1, self.in_features).float()
        ca, sca, cols = int8_vectorwise_quant(a, self.threshold)
        if self._cbt is None:
            self._cbt = self.CB.T.contiguous()
        acc = self._int_matmul(ca, self._cbt)
        out = (acc * (sca.double()[:, None] * self.SCB.double()[None, :]) / (127.0 * 127.0)).float()
        if cols is not None and cols.numel():  # outlier columns in float32
            out += a[:, cols] @ self.dequantize()[:, cols].T
        if self.bias is not None:
            out += self.bias
        return out.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, threshold={self.threshold}"
