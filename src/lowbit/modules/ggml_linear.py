"""A Linear layer stored as llama.cpp (GGML) blocks of one type: the raw bytes GGUF holds, dequantized
for each forward. GGUF export writes these bytes as they are when the tensor's planned type is the
layer's own, so a model trained on a GGUF grid (QAT) reaches llama.cpp without being quantized twice
(k-quants are not idempotent: quantizing dequantized Q4_K weights again can change them)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lowbit.formats.ggml import GGML_TYPES


class GGMLLinear(nn.Module):
    def __init__(self, ggml_type: str, raw: np.ndarray, shape: tuple[int, int], bias: torch.Tensor | None) -> None:
        super().__init__()
        self.ggml_type, (self.out_features, self.in_features) = ggml_type, shape
        self.register_buffer("blocks", torch.from_numpy(np.ascontiguousarray(raw).view(np.uint8).reshape(shape[0], -1).copy()))
        self.bias = nn.Parameter(bias.detach().float().clone(), requires_grad=False) if bias is not None else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, ggml_type: str) -> GGMLLinear:
        w = linear.weight.detach().float().numpy()
        return cls(ggml_type, GGML_TYPES.get(ggml_type).quantize(w), tuple(w.shape), linear.bias)

    @classmethod
    def empty(cls, like: nn.Linear, info: dict) -> GGMLLinear:
        return cls.from_linear(nn.Linear(like.in_features, like.out_features, bias=like.bias is not None), info["ggml_type"])

    def record(self) -> dict:
        return {"module": "ggml", "shape": [self.out_features, self.in_features], "ggml_type": self.ggml_type,
                "format": f"GGUF {self.ggml_type}"}

    def raw(self) -> np.ndarray:
        """The GGUF tensor data: (rows, bytes per row) uint8."""
        return self.blocks.numpy()

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        w = GGML_TYPES.get(self.ggml_type).dequantize(self.raw(), (self.out_features, self.in_features))
        return torch.from_numpy(np.asarray(w, dtype=np.float32)).to(dtype)

    @property
    def quant_nbytes(self) -> int:
        return self.blocks.numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantize(x.dtype).to(x.device), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.ggml_type}"
