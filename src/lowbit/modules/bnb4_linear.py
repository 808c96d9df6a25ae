"""A Linear layer stored in bitsandbytes' NF4/FP4 layout (formats/bnb4.py): packed codes and block
constants as buffers, dequantized to float32 for each forward (no 4-bit CPU kernel: memory first)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.formats.bnb4 import Bnb4, quantize_4bit


class Linear4bit(nn.Module):
    def __init__(self, q: Bnb4, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.quant_type, self.blocksize, self.double_quant = q.quant_type, q.blocksize, q.double_quant
        self.register_buffer("packed", q.packed)
        self.register_buffer("absmax", q.absmax)
        if q.double_quant:
            self.register_buffer("absmax2", q.absmax2)
            self.register_buffer("offset", q.offset.reshape(()))
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, quant_type: str = "nf4", double_quant: bool = False,
                    blocksize: int = 64) -> Linear4bit:
        return cls(quantize_4bit(linear.weight.data, quant_type, blocksize, double_quant), linear.bias)

    @classmethod
    def empty(cls, like: nn.Linear, info: dict) -> Linear4bit:
        """A module of the right shapes for a checkpoint's tensors to be loaded into (empty buffers, on the
        current default device: meta for a model opened lazily)."""
        n, block = like.in_features * like.out_features, info["blocksize"]
        blocks = -(-n // block)
        dq = info["double_quant"]
        q = Bnb4(torch.empty((n + 1) // 2, dtype=torch.uint8), torch.empty(blocks, dtype=torch.uint8 if dq else torch.float32),
                 (like.out_features, like.in_features), info["quant_type"], block,
                 torch.empty((), dtype=torch.float32) if dq else None,
                 torch.empty(-(-blocks // 256), dtype=torch.float32) if dq else None)
        return cls(q, torch.zeros(like.out_features) if like.bias is not None else None)

    def record(self) -> dict:
        return {"module": "bnb4", "shape": [self.out_features, self.in_features], "quant_type": self.quant_type,
                "double_quant": self.double_quant, "blocksize": self.blocksize,
                "format": f"{self.quant_type}{'+dq' if self.double_quant else ''}"}

    def bnb4(self) -> Bnb4:
        return Bnb4(self.packed, self.absmax, (self.out_features, self.in_features), self.quant_type, self.blocksize,
                    self.offset if self.double_quant else None, self.absmax2 if self.double_quant else None)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.bnb4().dequantize().to(dtype)

    @property
    def quant_nbytes(self) -> int:
        return self.bnb4().nbytes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantize(x.dtype), self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, {self.quant_type}"
                f"{'+dq' if self.double_quant else ''}, block {self.blocksize}")
