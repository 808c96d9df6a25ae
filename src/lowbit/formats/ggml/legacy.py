"""The float and legacy 32-value block types, through gguf-py's numpy quantizers, which are
bit-identical to llama.cpp's reference ones without an importance matrix (checked against libggml in
tests/unit/test_ggml_types.py). Q4_0/Q4_1/Q5_0/Q5_1: 4/5-bit levels per 32 with a float16 scale (and
min); Q8_0: 8-bit symmetric per 32."""

from __future__ import annotations

import gguf
import numpy as np

from lowbit.formats.ggml.base import GGMLType


class _ViaGGUFPy(GGMLType, name="F32"):
    @classmethod
    def quantize_blocks(cls, blocks: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
        if qw is not None:
            raise NotImplementedError(f"{cls.name} with an importance matrix")
        with np.errstate(all="ignore"):  # subnormal blocks overflow inside gguf-py, exactly as in C
            raw = gguf.quants.quantize(blocks, cls.qtype)
        return np.ascontiguousarray(raw).view(np.uint8).reshape(blocks.shape[0], cls.type_size)


class F16(_ViaGGUFPy, name="F16"):
    pass


class BF16(_ViaGGUFPy, name="BF16"):
    pass


class Q4_0(_ViaGGUFPy, name="Q4_0"):  # noqa: N801 - llama.cpp's names
    pass


class Q4_1(_ViaGGUFPy, name="Q4_1"):  # noqa: N801
    pass


class Q5_0(_ViaGGUFPy, name="Q5_0"):  # noqa: N801
    pass


class Q5_1(_ViaGGUFPy, name="Q5_1"):  # noqa: N801
    pass


class Q8_0(_ViaGGUFPy, name="Q8_0"):  # noqa: N801
    pass
