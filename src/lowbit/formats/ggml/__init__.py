"""llama.cpp (GGML) weight types, one class per type, registered in ``GGML_TYPES`` by name."""

from lowbit.formats.ggml import iq1, iq2, iq3, iq4, legacy, q2_k, q3_k, q4_k, q5_k, q6_k, ternary  # noqa: F401 - registration
from lowbit.formats.ggml.base import GGML_TYPES, GGMLType

__all__ = ["GGML_TYPES", "GGMLType"]
