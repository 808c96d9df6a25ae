"""lowbit's native checkpoint layout for a QuantizedTensor: ``qweight`` (codes packed densely,
see bitpack.py), ``scale``, ``zero`` (asymmetric specs only)."""

from __future__ import annotations

from typing import Any

import torch

from lowbit.bitpack import pack_codes, packed_nbytes, unpack_codes
from lowbit.formats.base import StorageFormat
from lowbit.spec import QuantSpec
from lowbit.tensor import QuantizedTensor

__all__ = ["IntPacked", "pack_codes", "packed_nbytes", "unpack_codes"]


class IntPacked(StorageFormat, name="intpack"):
    """lowbit's native checkpoint layout: ``qweight`` (packed codes), ``scale``, ``zero`` (asym)."""

    @classmethod
    def to_tensors(cls, qt: Any) -> dict[str, torch.Tensor]:
        out = {"qweight": qt.packed, "scale": qt.scale}
        if qt.zero is not None:
            out["zero"] = qt.zero
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Any:
        return QuantizedTensor(
            packed=tensors["qweight"],
            scale=tensors["scale"],
            zero=tensors.get("zero"),
            spec=QuantSpec.from_dict(meta["spec"]),
            shape=tuple(meta["shape"]),
        )
