"""QuantSpec: what an integer weight format is, independent of how it is computed.

Granularity is one number, ``group_size``, so per-tensor, per-channel and per-group are one code
path: a weight of shape (out, in) is viewed as blocks of ``block_len`` consecutive elements, each
with its own scale (and zero point when asymmetric)::

    group_size = 0   per-tensor   one block of out*in elements
    group_size = -1  per-channel  `out` blocks of `in` elements (one per output row)
    group_size = g   per-group    out*in/g blocks of g elements along the input dim

This module imports no torch: ``plan`` uses it to reason about formats instantly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from lowbit.errors import InputError, ShapeError

PER_TENSOR = 0
PER_CHANNEL = -1
SCALE_DTYPES = {"float16": 16, "float32": 32, "bfloat16": 16}


@dataclass(frozen=True)
class QuantSpec:
    """An affine integer grid: ``w ≈ (q - zero) * scale`` with ``q`` in ``[0, 2**bits - 1]``.

    Symmetric specs fix ``zero = 2**(bits-1)`` and set ``scale = absmax / ((2**bits - 1) / 2)``,
    the GPTQ / compressed-tensors convention that uses all ``2**bits`` levels. Asymmetric specs store
    one integer zero point per block, with the range widened to include 0 so that 0 is exact.

    >>> QuantSpec(bits=4, group_size=64).granularity
    'group64'
    """

    bits: int = 4
    symmetric: bool = True
    group_size: int = 64
    scale_dtype: str = "float16"

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise InputError(f"bits={self.bits!r} is not supported: integer specs take 2 to 8 bits")
        if self.group_size < -1:
            raise InputError(
                f"group_size={self.group_size} is invalid: use -1 (per-channel), 0 (per-tensor) "
                "or a positive group size such as 32 or 64"
            )
        if self.scale_dtype not in SCALE_DTYPES:
            raise InputError(f"scale_dtype={self.scale_dtype!r} is not one of {sorted(SCALE_DTYPES)}")

    # --- granularity -------------------------------------------------------------------------
    @property
    def granularity(self) -> str:
        if self.group_size == PER_TENSOR:
            return "tensor"
        if self.group_size == PER_CHANNEL:
            return "channel"
        return f"group{self.group_size}"

    @property
    def qmax(self) -> int:
        return (1 << self.bits) - 1

    @property
    def mid(self) -> int:
        """The implicit zero point of a symmetric spec."""
        return 1 << (self.bits - 1)

    def block_len(self, shape: tuple[int, ...], name: str = "weight") -> int:
        """Elements per scale block for a weight of ``shape`` (out, in, ...); checks divisibility."""
        if len(shape) < 2:
            raise ShapeError(f"{name} has shape {tuple(shape)}: only 2-D (or flattened N-D) weights quantize")
        width = math.prod(shape[1:])
        if self.group_size == PER_TENSOR:
            return shape[0] * width
        if self.group_size == PER_CHANNEL:
            return width
        if width % self.group_size:
            divisors = [g for g in (32, 64, 128, 256) if width % g == 0]
            fix = f"use one of {divisors}" if divisors else "use --group-size -1 (per-channel)"
            raise ShapeError(
                f"group size {self.group_size} does not divide the input width {width} of {name} "
                f"(shape {tuple(shape)}); {fix}"
            )
        return self.group_size

    def n_blocks(self, shape: tuple[int, ...], name: str = "weight") -> int:
        return math.prod(shape) // self.block_len(shape, name)

    def bits_per_weight(self, shape: tuple[int, ...]) -> float:
        """Storage cost per weight: codes + scale + (asym) one 8-bit zero point per block."""
        numel = math.prod(shape)
        per_block = SCALE_DTYPES[self.scale_dtype] + (0 if self.symmetric else 8)
        return self.bits + per_block * self.n_blocks(shape) / numel

    # --- serialization -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantSpec:
        return cls(**{k: d[k] for k in ("bits", "symmetric", "group_size", "scale_dtype") if k in d})

    def __str__(self) -> str:
        return f"int{self.bits}-{'sym' if self.symmetric else 'asym'}-{self.granularity}"
