"""The float and legacy 32-value block types. Without an importance matrix they go through gguf-py's
numpy quantizers, which are bit-identical to llama.cpp's reference ones (checked against libggml in
tests/unit/test_ggml_types.py); with one, through lowbit's port of llama.cpp's weighted searches
(the weights use the variance of the whole row). Q4_0/Q4_1/Q5_0/Q5_1: 4/5-bit levels per 32 with a
float16 scale (and min); Q8_0: 8-bit symmetric per 32, which llama.cpp quantizes without the imatrix."""

from __future__ import annotations

import gguf
import numpy as np

from lowbit.formats.ggml.base import GGMLType, row_weights
from lowbit.formats.ggml.kcommon import (
    F32,
    _t,
    as_bytes,
    imatrix_weights,
    make_qkx2_quants,
    make_qx_quants,
    seqsum,
)


def _gguf_py_blocks(qtype: gguf.GGMLQuantizationType, blocks: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):  # subnormal blocks overflow inside gguf-py, exactly as in C
        # gguf-py's block quantizer on all our blocks at once (its own front end goes row by row)
        raw = gguf.quants._type_traits[qtype].quantize_blocks(blocks)
    return np.ascontiguousarray(raw).view(np.uint8).reshape(blocks.shape[0], -1)


_LEGACY = {"Q4_0": (15, False, False), "Q5_0": (31, False, True), "Q4_1": (15, True, False),
           "Q5_1": (31, True, True)}  # levels 0..nmax, with a min, with a fifth bit


def _legacy_blocks(blocks: np.ndarray, name: str, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    """Q4_0/Q5_0/Q4_1/Q5_1/Q8_0 without an importance matrix, in the reference's arithmetic
    (``quantize_row_q4_0_ref`` and friends): the same operations as gguf-py's versions, laid out so
    numpy runs them 2-4x faster (block max/min reduced over the transposed blocks, where numpy's
    reductions are fast; no per-row concatenation). Blocks whose inverse scale overflows (subnormal
    scales) go through gguf-py, which reproduces C's overflow."""
    xt = _t(blocks)
    mx, mn = xt.max(0), xt.min(0)
    with np.errstate(all="ignore"):
        if name == "Q8_0":
            d = np.maximum(np.abs(mx), np.abs(mn)) / F32(127)  # +0.0 for a zero block, as in C
            inv = np.where(d == 0, F32(0), F32(1) / d)
            v = blocks * inv[:, None]
            r = np.rint(v)
            tie = np.flatnonzero(np.abs(v - r) == F32(0.5))  # C's roundf: halves away from zero
            if len(tie):
                vt = v.reshape(-1)[tie]
                r.reshape(-1)[tie] = vt + np.copysign(F32(0.5), vt)
            out = np.empty((len(blocks), 34), dtype=np.uint8)
            out[:, :2] = d.astype(np.float16).view(np.uint8).reshape(-1, 2)
            out[:, 2:] = r.astype(np.int8).view(np.uint8)
        else:
            nmax, with_min, fifth = _LEGACY[name]
            if with_min:
                d = (mx - mn) / F32(nmax)
                inv = np.where(d == 0, F32(0), F32(1) / d)
                v = blocks - mn[:, None]
                v *= inv[:, None]
                v += F32(0.5)
            else:  # d = -(the value of largest magnitude) / half, the first one on ties
                half = (nmax + 1) // 2
                m = np.where(-mn > mx, mn, mx)
                tie = np.nonzero((-mn == mx) & (mx != 0))[0]
                if len(tie):
                    m[tie] = blocks[tie, np.abs(blocks[tie]).argmax(1)]
                d = m / F32(-half)
                inv = np.where(d == 0, F32(0), F32(1) / d)
                v = blocks * inv[:, None]
                v += F32(half + 0.5)
            q = v.astype(np.uint8)  # the cast truncates, as C's (int8_t) does
            np.minimum(q, np.uint8(nmax), out=q)
            head = 2 + 2 * with_min
            out = np.empty((len(blocks), head + 4 * fifth + 16), dtype=np.uint8)
            out[:, :2] = d.astype(np.float16).view(np.uint8).reshape(-1, 2)
            if with_min:
                out[:, 2:4] = mn.astype(np.float16).view(np.uint8).reshape(-1, 2)
            if fifth:  # bit j of the little-endian uint32 qh = bit 4 of q[j]
                out[:, head:head + 4] = np.packbits(q >> 4, axis=1, bitorder="little")
            lo = q[:, :16] & np.uint8(0xF)
            np.left_shift(q[:, 16:], np.uint8(4), out=q[:, 16:])
            np.bitwise_or(lo, q[:, 16:], out=out[:, -16:])
    bad = np.nonzero(~np.isfinite(inv))[0]
    if len(bad):
        out[bad] = _gguf_py_blocks(qtype, blocks[bad])
    return out


class _ViaGGUFPy(GGMLType):
    @classmethod
    def quantize_blocks(cls, blocks: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
        # the float types and Q8_0 ignore an importance matrix, as in llama.cpp
        if cls.name in ("Q4_0", "Q5_0", "Q4_1", "Q5_1", "Q8_0"):
            return _legacy_blocks(blocks, cls.name, cls.qtype)
        if cls.name == "F32":
            return blocks.view(np.uint8).reshape(blocks.shape[0], cls.type_size)
        if cls.name == "F16":
            return blocks.astype(np.float16).view(np.uint8).reshape(blocks.shape[0], cls.type_size)
        return _gguf_py_blocks(cls.qtype, blocks)


class Float32(_ViaGGUFPy, name="F32"):
    pass


class Float16(_ViaGGUFPy, name="F16"):
    pass


class BFloat16(_ViaGGUFPy, name="BF16"):
    pass


def _weights(rows: np.ndarray, imatrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(blocks of 32, their weights) with sigma^2 taken over each whole row, as llama.cpp does."""
    n = rows.shape[1]
    sigma2 = seqsum((rows * rows).T) / F32(n)
    blocks = rows.reshape(-1, 32)
    qw = row_weights(imatrix, rows.shape[0]).reshape(-1, 32)
    return blocks, imatrix_weights(blocks, qw, np.repeat(sigma2, n // 32))


def _nibbles(L: np.ndarray) -> np.ndarray:
    q = L.astype(np.uint8)
    return (q[:, :16] & 0xF) | ((q[:, 16:] & 0xF) << 4)


def _fifth_bits(L: np.ndarray) -> np.ndarray:
    """bit j of the little-endian uint32 qh = bit 4 of L[j]."""
    bits = ((L.astype(np.uint32) >> 4) & 1) << np.arange(32, dtype=np.uint32)
    return np.bitwise_or.reduce(bits, axis=1).astype("<u4")[:, None]


class _Weighted(_ViaGGUFPy):
    """A legacy type with llama.cpp's imatrix search (levels 0..``nmax``, ``with_min`` for the _1 types)."""

    nmax = 0
    with_min = False
    fifth_bit = False

    @classmethod
    def quantize_rows(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        if imatrix is None or cls.nmax == 0:
            return super().quantize_rows(rows, None)
        blocks, w = _weights(rows, imatrix)
        if cls.with_min:
            d, mn, L = make_qkx2_quants(blocks, w, cls.nmax, -0.9, 0.05, 36, use_mad=False)
            head = [d.astype(np.float16)[:, None], (-mn).astype(np.float16)[:, None]]
        else:
            d, L = make_qx_quants(blocks, cls.nmax // 2 + 1, 1, w)  # levels -8..7 / -16..15, stored + 8 / + 16
            head = [d.astype(np.float16)[:, None]]
        parts = [*head, _fifth_bits(L)] if cls.fifth_bit else head
        return as_bytes(*parts, _nibbles(L)).reshape(rows.shape[0], -1)


class Q4_0(_Weighted, name="Q4_0"):
    nmax = 15


class Q4_1(_Weighted, name="Q4_1"):
    nmax, with_min = 15, True


class Q5_0(_Weighted, name="Q5_0"):
    nmax, fifth_bit = 31, True


class Q5_1(_Weighted, name="Q5_1"):
    nmax, with_min, fifth_bit = 31, True, True


class Q8_0(_Weighted, name="Q8_0"):
    pass
