"""GGML block types: one class per llama.cpp weight type, bytes identical to llama.cpp's quantizer.

A type quantizes a float32 array whose last axis is a multiple of its block size into the bytes
llama.cpp stores (``(..., n // block_size * type_size)`` uint8), optionally weighted by an importance
matrix (one weight per input column). Decoding goes through gguf-py, llama.cpp's own package, so
every type is checked against an independent decoder.

    t = GGML_TYPES.get("Q4_K")
    raw = t.quantize(w)             # (rows, cols // 256 * 144) uint8, as llama.cpp writes it
    back = t.dequantize(raw, w.shape)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import gguf
import numpy as np

from lowbit.errors import InputError
from lowbit.registry import Registry

GGML_TYPES: Registry[type[GGMLType]] = Registry("GGML type")
CHUNK_VALUES = 1 << 18  # values per work unit: numpy calls long enough that two threads rarely wait for the GIL


_POOL: ThreadPoolExecutor | None = None


def pool() -> ThreadPoolExecutor:
    """The process-wide quantizing pool, ``workers()`` threads (numpy releases the GIL in its loops).
    Its tasks never wait on it, so it cannot deadlock; a forked child (whose copy of the pool has no
    threads) starts its own."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=workers(), thread_name_prefix="lowbit-ggml")
    return _POOL


def _forget_pool() -> None:
    global _POOL
    _POOL = None


os.register_at_fork(after_in_child=_forget_pool)


def workers() -> int:
    """Threads for quantizing: $LOWBIT_THREADS, else torch's intra-op thread count."""
    env = os.environ.get("LOWBIT_THREADS")
    if env:
        return max(1, int(env))
    import torch

    return max(1, torch.get_num_threads())


def row_weights(imatrix: np.ndarray, nrows: int) -> np.ndarray:
    """The importance of every value of ``nrows`` rows: (n,) repeated for each row, or (nrows, n) as given."""
    return imatrix if imatrix.ndim > 1 else np.tile(imatrix, (nrows, 1))


class GGMLType:
    """A llama.cpp block type. Subclasses name themselves: ``class Q4K(GGMLType, name="Q4_K")``."""

    name: ClassVar[str]
    qtype: ClassVar[gguf.GGMLQuantizationType]
    block_size: ClassVar[int]
    type_size: ClassVar[int]
    needs_imatrix: ClassVar[bool] = False  # the very-low-bit types: llama.cpp refuses them without one

    def __init_subclass__(cls, name: str | None = None, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if name is None:  # a shared base, not a type
            return
        cls.name = name
        cls.qtype = gguf.GGMLQuantizationType[name]
        cls.block_size, cls.type_size = gguf.GGML_QUANT_SIZES[cls.qtype]
        GGML_TYPES.add(name, cls)

    @classmethod
    def bits_per_weight(cls) -> float:
        return 8 * cls.type_size / cls.block_size

    @classmethod
    def check(cls, x: np.ndarray, what: str = "tensor") -> np.ndarray:
        """float32, C-contiguous, finite, last axis a multiple of the block size; else a clear error."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim == 0 or x.shape[-1] % cls.block_size:
            raise InputError(f"{what}: {cls.name} needs rows that are a multiple of {cls.block_size} values, "
                             f"got shape {tuple(x.shape)}")
        if not np.isfinite(x).all():
            bad = int((~np.isfinite(x)).sum())
            raise InputError(f"{what}: {bad} NaN/inf value(s); llama.cpp's {cls.name} cannot represent them")
        return x

    @classmethod
    def quantize(cls, x: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
        """The llama.cpp bytes of ``x`` (..., n): ``(..., n // block_size * type_size)`` uint8. ``imatrix``:
        one weight per column (n,), or one vector per row (x's shape: rows of tensors with different ones)."""
        return cls.quantize_async(x, imatrix)()

    @classmethod
    def quantize_async(cls, x: np.ndarray, imatrix: np.ndarray | None = None) -> Callable[[], np.ndarray]:
        """Check ``x`` now, quantize it on the shared pool, and return a function that waits for the
        bytes. Rows are independent, so the work is cut into runs of whole rows of about
        CHUNK_VALUES values; an exporter can keep several tensors in flight and both cores busy."""
        x = cls.check(x)
        if imatrix is None and cls.needs_imatrix:
            raise InputError(f"{cls.name} needs an importance matrix (--imatrix or --calib): llama.cpp refuses a "
                             f"very low-bit quantization without one, as its result would be garbage")
        if imatrix is not None:
            imatrix = np.ascontiguousarray(imatrix, dtype=np.float32)
            if imatrix.shape not in ((x.shape[-1],), x.shape):
                raise InputError(f"importance matrix has shape {imatrix.shape}, expected ({x.shape[-1]},)")
        rows = x.reshape(-1, x.shape[-1])
        per_row = imatrix is not None and imatrix.ndim > 1  # one weight vector per row (rows of several tensors)
        im = imatrix.reshape(rows.shape) if per_row else imatrix
        step = max(1, CHUNK_VALUES // rows.shape[1])
        futures = [pool().submit(cls.quantize_rows, rows[i:i + step], im[i:i + step] if per_row else im)
                   for i in range(0, len(rows), step)]
        width = rows.shape[1] // cls.block_size * cls.type_size

        def result() -> np.ndarray:
            parts = [f.result() for f in futures]
            raw = parts[0] if len(parts) == 1 else np.concatenate(parts)
            assert raw.shape == (rows.shape[0], width) and raw.dtype == np.uint8
            return raw.reshape(*x.shape[:-1], width)

        result.cancel = lambda: [f.cancel() for f in futures]  # type: ignore[attr-defined]
        return result

    @classmethod
    def quantize_rows(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        """(rows, n) float32 -> (rows, n // block_size * type_size) uint8, on the calling thread. The
        default quantizes block by block; types whose imatrix search needs the whole row override it."""
        blocks = rows.reshape(-1, cls.block_size)
        qw = None
        if imatrix is not None:  # one weight per column, repeated for every row (or one vector per row)
            qw = row_weights(imatrix, rows.shape[0]).reshape(-1, cls.block_size)
        return cls.quantize_blocks(blocks, qw).reshape(rows.shape[0], -1)

    @classmethod
    def quantize_blocks(cls, blocks: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
        """(nblocks, block_size) float32 -> (nblocks, type_size) uint8; ``qw`` the per-value weights."""
        raise NotImplementedError

    @classmethod
    def dequantize(cls, raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        return gguf.quants.dequantize(np.asarray(raw, dtype=np.uint8), cls.qtype).reshape(shape)
