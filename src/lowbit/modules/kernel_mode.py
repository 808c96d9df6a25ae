"""How the quantized layers of one model compute: a setting of that model, not of a class.

Every runnable layer that has a fast kernel beside its exact arithmetic carries ``kernel_mode``:

- ``"auto"`` (default): kernels where they pay (bfloat16 inputs, decode-sized float32 inputs);
- ``"dequant"``: always the exact arithmetic (what every quality metric uses);
- ``"kernel"``: kernels whenever the layer has one.

    with kernel_mode(model, "dequant"):
        logits = model(ids).logits
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

KERNEL_MODES = ("auto", "dequant", "kernel")


def check_mode(mode: str) -> str:
    if mode not in KERNEL_MODES:
        raise ValueError(f"kernel mode {mode!r}: choose one of {', '.join(KERNEL_MODES)}")
    return mode


def _layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(getattr(m, "kernel_mode", None), str)]


def set_kernel_mode(model: nn.Module, mode: str) -> None:
    """Set the kernel mode of every quantized layer of ``model`` (``model`` may be one layer)."""
    check_mode(mode)
    for m in _layers(model):
        m.kernel_mode = mode


@contextlib.contextmanager
def kernel_mode(model: nn.Module, mode: str) -> Iterator[nn.Module]:
    """Run ``model``'s quantized layers in ``mode`` inside the block; each layer's own mode is put back."""
    check_mode(mode)
    layers = _layers(model)
    old = [m.kernel_mode for m in layers]
    for m in layers:
        m.kernel_mode = mode
    try:
        yield model
    finally:
        for m, o in zip(layers, old):
            m.kernel_mode = o
