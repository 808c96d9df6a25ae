"""The storage-format registry: each subclass names itself (``class X(StorageFormat, name=...)``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from lowbit.registry import Registry

if TYPE_CHECKING:
    import torch

    from lowbit.tensor import QuantizedTensor

FORMATS: Registry[type[StorageFormat]] = Registry("storage format")


class StorageFormat:
    """Turns a :class:`QuantizedTensor` into named tensors for a checkpoint, and back, exactly."""

    name: ClassVar[str]

    def __init_subclass__(cls, name: str, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        cls.name = name
        FORMATS.add(name, cls)

    @classmethod
    def to_tensors(cls, qt: QuantizedTensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> QuantizedTensor:
        raise NotImplementedError
