"""Quantization methods: one file each (config dataclass + pure function + registration)."""

from lowbit.methods import (  # noqa: F401  (register themselves)
    awq,
    bnb,
    gptq,
    hqq,
    llm_int8,
    qat,
    rtn,
    w8a8,
)
from lowbit.methods.base import METHODS, Method, MethodConfig, get_method

__all__ = ["METHODS", "Method", "MethodConfig", "get_method"]
