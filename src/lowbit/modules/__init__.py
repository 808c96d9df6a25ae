"""Runnable quantized layers and the one module selector."""

from lowbit.modules.qembedding import QuantizedEmbedding
from lowbit.modules.qlinear import QuantizedLinear
from lowbit.modules.select import DEFAULT_IGNORE, select_linears, select_modules

__all__ = ["DEFAULT_IGNORE", "QuantizedEmbedding", "QuantizedLinear", "select_linears", "select_modules"]
