"""Quantization methods: one file each (config dataclass + pure function + registration)."""

from lowbit.methods.base import METHODS, Method, MethodConfig, get_method
from lowbit.methods import awq, gptq, rtn  # noqa: F401  (register themselves)
from lowbit.methods import hqq  # noqa: F401  (registers itself)

__all__ = ["METHODS", "Method", "MethodConfig", "get_method"]
