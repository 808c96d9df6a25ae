"""Quantization methods: one file each (config dataclass + the per-layer function + one
``@register_method`` line). The pipeline (pipeline/) runs every one of them the same way."""

from lowbit.methods import (  # noqa: F401  (register themselves)
    awq,
    bnb,
    gguf,
    gptq,
    hqq,
    llm_int8,
    qat,
    rtn,
    w8a8,
)
from lowbit.methods.base import METHODS, GridConfig, Method, MethodConfig, Transform, get_method, make_config

__all__ = ["METHODS", "GridConfig", "Method", "MethodConfig", "Transform", "get_method", "make_config"]
