"""Quantization-aware training's last step as a method: ``convert`` turns each fake-quantized layer
(modules/fake_quant.py, made by ``lowbit.qat.prepare`` and trained by ``lowbit.qat.train``) into the same
real module PTQ produces: QuantizedLinear / QuantizedConv2d for integer specs, Linear4bit for NF4/FP4,
W8A8Linear, GGMLLinear for the GGUF types (whose blocks GGUF export writes unchanged).

    q, report = lowbit.quantize(prepared, lowbit.make_config("qat", qat_spec="int3-asym-g64"))

Spec strings (``parse_spec``): ``int3-asym-g64``, ``int4-sym-ch``, ``int8-sym-tensor``, ``nf4``,
``fp4``, ``nf4-dq``, a GGUF type (``Q4_K``, ``Q3_K``, ``Q8_0``...), or ``w8a8`` (int8 per-channel
weights and int8 per-token activations).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch
from torch import nn

from lowbit.calib.stats import LayerStats
from lowbit.errors import InputError
from lowbit.methods.base import MethodConfig, register_method
from lowbit.modules.fake_quant import FakeQuantConv2d, FakeQuantLinear, RoundTrip
from lowbit.spec import PER_CHANNEL, PER_TENSOR, QuantSpec

_INT = re.compile(r"^int(?P<bits>[2-8])(?:-(?P<sym>sym|asym))?(?:-(?P<gran>ch|tensor|g\d+))?$")


@dataclass(frozen=True)
class QATSpec:
    """What the trained layers become: an integer ``QuantSpec``, a bitsandbytes 4-bit type, a GGUF
    type, or W8A8."""

    kind: str  # "int" | "bnb4" | "gguf" | "w8a8"
    text: str
    spec: QuantSpec | None = None
    double_quant: bool = False

    @property
    def quant_type(self) -> str:
        """nf4 / fp4 for the bitsandbytes types."""
        return self.text.removesuffix("-dq")

    @property
    def label(self) -> str:
        return str(self.spec) if self.spec is not None else self.text


def parse_spec(text: str) -> QATSpec:
    t = text.strip()
    m = _INT.match(t.lower())
    if m:
        gran = m["gran"] or "g64"
        group = PER_CHANNEL if gran == "ch" else PER_TENSOR if gran == "tensor" else int(gran[1:])
        return QATSpec("int", t.lower(), QuantSpec(int(m["bits"]), m["sym"] != "asym", group))
    if t.lower() in ("nf4", "fp4", "nf4-dq", "fp4-dq"):
        return QATSpec("bnb4", t.lower(), double_quant=t.lower().endswith("-dq"))
    if t.lower() == "w8a8":
        return QATSpec("w8a8", "w8a8")
    from lowbit.formats.ggml import GGML_TYPES

    if t.upper() in GGML_TYPES:
        return QATSpec("gguf", t.upper())
    raise InputError(f"--spec {text!r}: expected int<bits>[-sym|-asym][-g<N>|-ch|-tensor] (e.g. int3-asym-g64), "
                     f"nf4, fp4, nf4-dq, w8a8, or a GGUF type ({', '.join(sorted(GGML_TYPES))})")


def roundtrip(qs: QATSpec, shape: tuple[int, ...]) -> RoundTrip:
    """The weight fake-quantizer of a non-integer spec: the format's own quantize -> dequantize."""
    if qs.kind == "bnb4":
        from lowbit.formats.bnb4 import quantize_4bit

        return RoundTrip(lambda w: quantize_4bit(w, qs.quant_type, 64, qs.double_quant).dequantize(), qs.text)
    if qs.kind == "gguf":
        import numpy as np

        from lowbit.formats.ggml import GGML_TYPES

        t = GGML_TYPES.get(qs.text)
        t.check(np.zeros((shape[0], math.prod(shape[1:])), dtype=np.float32), "weight")
        if t.needs_imatrix:  # refused when prepared, not at the first training step
            raise InputError(f"--spec {t.name}: llama.cpp quantizes {t.name} only with an importance matrix, which "
                             "training against its grid does not have; train on IQ3_S, IQ4_XS or a k-quant, or "
                             f"quantize to {t.name} after training (lowbit export --type {t.name} --imatrix)")

        def fn(w: torch.Tensor) -> torch.Tensor:
            x = w.reshape(shape[0], -1).numpy()
            return torch.from_numpy(np.asarray(t.dequantize(t.quantize(x), x.shape), dtype=np.float32))

        return RoundTrip(fn, f"GGUF {qs.text} grid")
    from lowbit.formats.int8 import int8_rows

    def w8(w: torch.Tensor) -> torch.Tensor:  # W8A8Linear's own weight grid
        codes, s = int8_rows(w)
        return codes * s[:, None]

    return RoundTrip(w8, "int8 per-channel (W8A8 weights)")


@dataclass(frozen=True)
class QATConfig(MethodConfig):
    qat_spec: str = field(default="int4-asym-g64", metadata={"help": "The QAT spec the model was prepared with."})

    def __post_init__(self) -> None:
        parse_spec(self.qat_spec)


def is_fake_quant(mod: nn.Module) -> bool:
    return isinstance(mod, FakeQuantLinear | FakeQuantConv2d)


@register_method("qat", QATConfig, summary="convert a QAT-trained model's fake-quantized layers to real ones",
                 produces="layer", selects=is_fake_quant)
@torch.no_grad()
def convert_layer(layer: nn.Module, cfg: QATConfig, stats: LayerStats | None = None) -> nn.Module:
    """The real quantized module of one trained fake-quantized layer; its output equals the layer's to
    float tolerance."""
    qs = parse_spec(cfg.qat_spec)
    if qs.kind == "int":
        from lowbit.modules.qconv import QuantizedConv2d
        from lowbit.modules.qlinear import QuantizedLinear

        qt = layer.weight_quant.quantized_tensor(layer.weight)
        if isinstance(layer, FakeQuantConv2d):
            return QuantizedConv2d.from_conv(layer.float_conv(), qt)
        return QuantizedLinear.from_linear(layer.float_linear(), qt)
    if isinstance(layer, FakeQuantConv2d):
        raise InputError("convolutions convert only from integer specs")
    if qs.kind == "bnb4":
        from lowbit.modules.bnb4_linear import Linear4bit

        return Linear4bit.from_linear(layer.float_linear(), qs.quant_type, qs.double_quant)
    if qs.kind == "w8a8":
        from lowbit.modules.w8a8_linear import W8A8Linear

        return W8A8Linear(layer.float_linear(), "dynamic")
    from lowbit.modules.ggml_linear import GGMLLinear  # GGUF: the type's own blocks

    return GGMLLinear.from_linear(layer.float_linear(), qs.text)
