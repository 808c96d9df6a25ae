"""Fake-quantized layers for quantization-aware training.

A fake-quantized layer keeps a float ("latent") weight that the optimizer updates, and computes its
forward with the weight rounded onto a quantization grid. Rounding has zero gradient almost
everywhere, so the backward pass treats it as the identity: the straight-through estimator (STE,
Bengio et al. 2013). Weights rounded outside the grid's range get no gradient (they are clipped).

Two kinds of weight quantizer, for the two kinds of lowbit format:

- ``IntQuantizer``: a lowbit ``QuantSpec`` (int, per-tensor / per-channel / per-group, sym or asym).
  Its scale and zero point are kept explicitly, initialised from a PTQ result (RTN or GPTQ), so the
  first forward reproduces that PTQ model exactly. With ``lsq=True`` the scale is a parameter too,
  learned through the same rounding (LSQ, Esser et al. 2020: ``d w_hat / d s = round(w/s) - w/s``
  inside the range, the clip level outside). Scales are rounded to the spec's scale dtype in the
  forward, so ``convert`` stores exactly the grid that was trained.
- ``RoundTrip``: any format lowbit has a quantizer for (NF4/FP4, the GGUF types, W8A8's int8 rows):
  the forward is the format's own quantize -> dequantize, so training sees exactly the grid that
  export writes.

Activations can be fake-quantized too (``ActQuantizer``: int8 per token, as W8A8 runs them).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lowbit import grid
from lowbit.spec import QuantSpec
from lowbit.tensor import QuantizedTensor


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x)

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        return grad


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward (exact integers), identity backward."""
    return _RoundSTE.apply(x)


class IntQuantizer(nn.Module):
    """``w_hat = (clamp(round(w / s) + z, 0, qmax) - z) * s`` per block of ``spec``."""

    def __init__(self, spec: QuantSpec, start: QuantizedTensor, lsq: bool = False) -> None:
        super().__init__()
        self.spec, self.shape, self.lsq = spec, tuple(start.shape), lsq
        scale = start.scale.detach().float().clone()
        self.scale = nn.Parameter(scale, requires_grad=lsq) if lsq else nn.Parameter(scale, requires_grad=False)
        zero = start.zero.float() if start.zero is not None else torch.full_like(scale, spec.mid)
        self.register_buffer("zero", zero.clone())

    def _scale(self) -> torch.Tensor:
        s = self.scale.abs().clamp_min(1e-8)
        stored = s.to(grid.scale_dtype(self.spec)).float()  # what convert will store
        return (s + (stored - s).detach()).unsqueeze(1)

    def codes(self, w: torch.Tensor) -> torch.Tensor:
        blocks = w.reshape(-1, self.spec.block_len(self.shape))
        return torch.clamp(torch.round(blocks / self._scale()) + self.zero[:, None], 0, self.spec.qmax)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        blocks = w.reshape(-1, self.spec.block_len(self.shape))
        s, z = self._scale(), self.zero[:, None]
        q = torch.clamp(round_ste(blocks / s) + z, 0, self.spec.qmax)
        return ((q - z) * s).reshape(w.shape)

    @torch.no_grad()
    def quantized_tensor(self, w: torch.Tensor) -> QuantizedTensor:
        """The real quantized weight: the codes and the stored-dtype scale the forward used."""
        codes = self.codes(w.float()).to(torch.uint8)
        scale = self.scale.abs().clamp_min(1e-8).to(grid.scale_dtype(self.spec))
        zero = None if self.spec.symmetric else self.zero.to(torch.uint8)
        return QuantizedTensor.from_codes(codes, scale, zero, self.spec, self.shape)

    def extra_repr(self) -> str:
        return f"{self.spec}{', LSQ scales' if self.lsq else ''}"


class RoundTrip(nn.Module):
    """``w_hat = dequantize(quantize(w))`` with a format's own functions; STE backward."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], label: str) -> None:
        super().__init__()
        self.fn, self.label = fn, label

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            w_hat = self.fn(w.detach().float()).to(w.dtype).reshape(w.shape)
        return w + (w_hat - w).detach()

    def extra_repr(self) -> str:
        return self.label


class ActQuantizer(nn.Module):
    """Symmetric int8 activations with one scale per token (dynamic), as W8A8Linear runs them; STE backward."""

    qmax = 127.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x.detach().abs().amax(-1, keepdim=True) / self.qmax).clamp_min(1e-12)
        return torch.clamp(round_ste(x / s), -self.qmax, self.qmax) * s

    def extra_repr(self) -> str:
        return "int8 per-token dynamic"


class _FakeQuantLayer(nn.Module):
    """The trainable latent weight (float32; ``latent`` overrides the layer's own), the bias and the
    quantizers shared by the fake-quantized layers."""

    def __init__(self, layer: nn.Linear | nn.Conv2d, weight_quant: nn.Module, act_quant: nn.Module | None,
                 latent: torch.Tensor | None) -> None:
        super().__init__()
        w = layer.weight.detach() if latent is None else latent
        self.weight = nn.Parameter(w.float().clone())
        self.bias = nn.Parameter(layer.bias.detach().float().clone()) if layer.bias is not None else None
        self.weight_quant, self.act_quant = weight_quant, act_quant

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return self.act_quant(x) if self.act_quant is not None else x

    def _copy_into(self, layer: nn.Module) -> nn.Module:
        """``layer`` (a fresh float layer of the same shape) holding the latent weight and the bias."""
        with torch.no_grad():
            layer.weight.copy_(self.weight)
            if self.bias is not None:
                layer.bias.copy_(self.bias)
        return layer


class FakeQuantLinear(_FakeQuantLayer):
    """A Linear whose forward uses ``weight_quant(weight)`` (and ``act_quant(x)`` when given)."""

    def __init__(self, linear: nn.Linear, weight_quant: nn.Module, act_quant: nn.Module | None = None,
                 latent: torch.Tensor | None = None) -> None:
        super().__init__(linear, weight_quant, act_quant, latent)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self._input(x), self.weight_quant(self.weight), self.bias)

    def float_linear(self) -> nn.Linear:
        """A plain Linear holding the latent weight (what the round-trip formats quantize at convert)."""
        return self._copy_into(nn.Linear(self.in_features, self.out_features, bias=self.bias is not None))


class FakeQuantConv2d(_FakeQuantLayer):
    """A Conv2d whose forward uses ``weight_quant(weight)``; the weight is quantized as (out, in*kh*kw)."""

    def __init__(self, conv: nn.Conv2d, weight_quant: nn.Module, act_quant: nn.Module | None = None,
                 latent: torch.Tensor | None = None) -> None:
        super().__init__(conv, weight_quant, act_quant, latent)
        self.conv_args = {"stride": conv.stride, "padding": conv.padding, "dilation": conv.dilation,
                          "groups": conv.groups}
        self.in_channels, self.out_channels, self.kernel_size = conv.in_channels, conv.out_channels, conv.kernel_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self._input(x), self.weight_quant(self.weight), self.bias, **self.conv_args)

    def float_conv(self) -> nn.Conv2d:
        """A plain Conv2d holding the latent weight."""
        return self._copy_into(nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size,
                                         bias=self.bias is not None, **self.conv_args))
