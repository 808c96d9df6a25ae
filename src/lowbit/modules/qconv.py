"""A Conv2d stored as a lowbit integer grid: the kernel viewed as (out, in*kh*kw) rows, packed like
QuantizedLinear's weight, dequantized for each forward."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.bitpack import packed_nbytes
from lowbit.grid import scale_dtype
from lowbit.spec import QuantSpec
from lowbit.tensor import QuantizedTensor


class QuantizedConv2d(nn.Module):
    def __init__(self, conv: nn.Conv2d, spec: QuantSpec) -> None:
        super().__init__()
        self.spec, self.shape = spec, tuple(conv.weight.shape)
        self.conv_args = {"stride": conv.stride, "padding": conv.padding, "dilation": conv.dilation,
                          "groups": conv.groups}
        n = conv.weight.numel()
        self.register_buffer("qweight", torch.zeros(packed_nbytes(n, spec.bits), dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(spec.n_blocks(self.shape), dtype=scale_dtype(spec)))
        if not spec.symmetric:
            self.register_buffer("zero", torch.zeros(spec.n_blocks(self.shape), dtype=torch.uint8))
        else:
            self.zero = None
        self.bias = nn.Parameter(conv.bias.detach().float().clone()) if conv.bias is not None else None

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, qt: QuantizedTensor) -> QuantizedConv2d:
        m = cls(conv, qt.spec)
        assert qt.shape == m.shape
        m.qweight, m.scale = qt.packed.clone(), qt.scale.clone()
        if m.zero is not None:
            m.zero = qt.zero.clone()
        return m

    def record(self) -> dict:
        """This layer in the checkpoint's record (export/checkpoint.py rebuilds it from this)."""
        return self.quantized_tensor().record("conv2d")

    def quantized_tensor(self) -> QuantizedTensor:
        return QuantizedTensor(self.qweight, self.scale, self.zero, self.spec, self.shape)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.quantized_tensor().dequantize(dtype)

    @property
    def quant_nbytes(self) -> int:
        return self.quantized_tensor().nbytes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.dequantize(x.dtype), self.bias, **self.conv_args)

    def extra_repr(self) -> str:
        return f"{self.shape[1]}, {self.shape[0]}, kernel_size={tuple(self.shape[2:])}, {self.spec}"
