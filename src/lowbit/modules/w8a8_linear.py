"""W8A8Linear: int8 weights (per output channel) and int8 activations (per token at run time, or one
static scale per layer from calibration), the SmoothQuant-style layer.

Quality numbers come from an exact emulation of the integer arithmetic (integer-valued float32 matmul,
scales applied after: kernel mode "dequant"). Speed comes from a real int8 GEMM: on CPU the x86 /
fbgemm engine behind ``torch.ops.quantized.linear_dynamic`` (its own activation quantization is per
tensor), on a GPU ``torch._int_mm`` with the emulation's own arithmetic.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from lowbit.formats.int8 import QMAX, int8_rows, token_scales
from lowbit.modules.int8_kernels import int8_engine, int_mm, select_int8_engine


class W8A8Linear(nn.Module):
    def __init__(self, linear: nn.Linear, act: str, act_scale: float | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features, self.act = linear.in_features, linear.out_features, act
        codes, wscale = int8_rows(linear.weight.detach().float())
        self.register_buffer("qweight", codes.to(torch.int8))
        self.register_buffer("wscale", wscale)
        self.register_buffer("act_scale", torch.tensor(act_scale if act_scale is not None else 0.0))
        self.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False) if linear.bias is not None else None
        self.kernel_mode = "auto"
        self._packed: Any = None

    @classmethod
    def empty(cls, like: nn.Linear, info: dict) -> W8A8Linear:
        return cls(nn.Linear(like.in_features, like.out_features, bias=like.bias is not None), info["act"],
                   0.0 if info["act"] == "static" else None)

    def record(self) -> dict:
        return {"module": "w8a8", "shape": [self.out_features, self.in_features], "act": self.act,
                "format": f"w8a8 int8, {self.act} activations"}

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.qweight.float() * self.wscale[:, None]).to(dtype)

    @property
    def quant_nbytes(self) -> int:
        return self.qweight.numel() + 4 * self.wscale.numel() + (4 if self.act == "static" else 0)

    def _act_codes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Integer-valued activation codes and their scale (static, or one per token)."""
        s = self.act_scale if self.act == "static" else token_scales(x)
        return torch.clamp(torch.round(x / s), -QMAX, QMAX), s

    def _emulate(self, x: torch.Tensor) -> torch.Tensor:
        xq, s = self._act_codes(x)
        y = (xq @ self.qweight.float().T) * (s * self.wscale)
        return y + self.bias if self.bias is not None else y

    def _int8_gemm(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed is None:
            select_int8_engine()  # the packed weights belong to the engine current when they are packed
            with warnings.catch_warnings():  # torch marks its quantized tensors deprecated (torchao is the successor);
                warnings.simplefilter("ignore")  # they are still the way to reach the x86 / fbgemm int8 GEMM
                qw = torch.quantize_per_channel(self.dequantize(), self.wscale.double(),
                                                torch.zeros(self.out_features, dtype=torch.long), 0, torch.qint8)
                self._packed = torch.ops.quantized.linear_prepack(qw, self.bias)
        y = torch.ops.quantized.linear_dynamic(x.reshape(-1, self.in_features).contiguous(), self._packed, True)
        return y.reshape(*x.shape[:-1], self.out_features)

    def _int_mm(self, x: torch.Tensor) -> torch.Tensor:
        """On a GPU: the same arithmetic as ``_emulate`` through torch._int_mm (int8 x int8 -> int32 on the
        tensor cores)."""
        xq, s = self._act_codes(x.reshape(-1, self.in_features).float())
        y = int_mm(xq.to(torch.int8), self.qweight.t()).float() * (s * self.wscale)
        y = y + self.bias if self.bias is not None else y
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel_mode == "dequant":
            return self._emulate(x)
        if x.is_cuda and self.in_features % 8 == 0 and self.out_features % 8 == 0:
            return self._int_mm(x)
        if x.dtype != torch.float32 or x.device.type != "cpu" or int8_engine() is None:
            return self._emulate(x)
        return self._int8_gemm(x)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, act={self.act}"
