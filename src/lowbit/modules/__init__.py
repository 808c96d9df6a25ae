"""Runnable quantized layers and the one module selector."""

from lowbit.modules.qlinear import QuantizedLinear
from lowbit.modules.select import DEFAULT_IGNORE, select_linears

__all__ = ["QuantizedLinear", "select_linears", "DEFAULT_IGNORE"]
