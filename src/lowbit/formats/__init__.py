"""Storage formats: QuantizedTensor <-> bytes, one class per storage type, exact round trips."""

from lowbit.formats.base import FORMATS, StorageFormat
from lowbit.formats.intpack import IntPacked, pack_codes, unpack_codes

__all__ = ["FORMATS", "IntPacked", "StorageFormat", "pack_codes", "unpack_codes"]
