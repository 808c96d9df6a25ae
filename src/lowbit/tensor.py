"""QuantizedTensor: packed integer codes + scales (+ zero points) + the spec that produced them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from lowbit import grid
from lowbit.bitpack import pack_codes, packed_nbytes, unpack_codes
from lowbit.spec import QuantSpec


@dataclass
class QuantizedTensor:
    """A weight stored as ``bits``-bit codes.

    packed: uint8 (ceil(numel*bits/8),)  dense little-endian codes, see bitpack.py
    scale:  (n_blocks,) in spec.scale_dtype
    zero:   (n_blocks,) uint8 integer zero points, or None for a symmetric spec
    shape:  the original weight shape (out, in, ...)
    """

    packed: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None
    spec: QuantSpec
    shape: tuple[int, ...]
    #: the float weights the codes were rounded from, when a method changes them first (GPTQ's
    #: error-compensated columns); not stored, not compared. QAT starts its latent weights there.
    prerounding: torch.Tensor | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_codes(
        cls, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, spec: QuantSpec,
        shape: tuple[int, ...],
    ) -> QuantizedTensor:
        assert int(codes.max()) <= spec.qmax, "codes exceed the spec's range"
        return cls(pack_codes(codes.reshape(-1), spec.bits), scale, zero, spec, tuple(shape))

    @classmethod
    def round_to_nearest(cls, weight: torch.Tensor, spec: QuantSpec) -> QuantizedTensor:
        """``weight`` on ``spec``'s grid, each block's range from its own min / max (RTN, no search)."""
        blocks = grid.as_blocks(weight, spec)
        scale, zero = grid.qparams(blocks, spec)
        return cls.from_codes(grid.quantize_blocks(blocks, scale, zero, spec), scale, zero, spec, tuple(weight.shape))

    def record(self, module: str) -> dict:
        """The checkpoint record of a layer holding this tensor (``module``: linear, embedding, conv2d)."""
        return {"spec": self.spec.to_dict(), "shape": list(self.shape), "format": "intpack", "module": module}

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def codes(self) -> torch.Tensor:
        """Unpacked codes, shape (n_blocks, block_len)."""
        flat = unpack_codes(self.packed, self.spec.bits, self.numel)
        return flat.view(-1, self.spec.block_len(self.shape))

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        w = grid.dequantize_blocks(self.codes(), self.scale, self.zero, self.spec, dtype)
        return w.view(self.shape)

    def split_rows(self, sizes: list[int]) -> list[QuantizedTensor]:
        """Split a per-channel or per-group tensor along its output rows (e.g. stacked q/k/v)."""
        assert self.spec.group_size != 0 and sum(sizes) == self.shape[0], "only row-wise blocks split"
        per_row = self.scale.numel() // self.shape[0]
        codes = self.codes().reshape(self.shape[0], -1)
        out, r0 = [], 0
        for n in sizes:
            rows = slice(r0, r0 + n)
            sc = self.scale.view(self.shape[0], per_row)[rows].reshape(-1).clone()
            zr = None if self.zero is None else self.zero.view(self.shape[0], per_row)[rows].reshape(-1).clone()
            shape = (n, *self.shape[1:])
            part = QuantizedTensor.from_codes(codes[rows].reshape(-1), sc, zr, self.spec, shape)
            part.prerounding = None if self.prerounding is None else self.prerounding[rows].clone()
            out.append(part)
            r0 += n
        return out

    @property
    def nbytes(self) -> int:
        n = self.packed.numel() * self.packed.element_size() + self.scale.numel() * self.scale.element_size()
        if self.zero is not None:
            n += self.zero.numel() * self.zero.element_size()
        return n

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.nbytes / self.numel

    def __post_init__(self) -> None:
        assert self.packed.numel() == packed_nbytes(self.numel, self.spec.bits), "packed size mismatch"
