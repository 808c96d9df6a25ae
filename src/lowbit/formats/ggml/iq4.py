"""IQ4_NL and IQ4_XS: 4-bit codes into llama.cpp's 16 non-uniform levels (``kvalues_iq4nl``, from -127
to 113) times a scale per 32 values. IQ4_NL stores that scale in float16 (4.5 bits per weight, and its
32-value blocks fit any width divisible by 32, like smollm2's 576); IQ4_XS stores 6-bit scales of 32
under one float16 per 256 (4.25 bits per weight). llama.cpp's ``quantize_iq4_nl`` / ``quantize_iq4_xs``
(what ``ggml_quantize_chunk`` calls: the scale search tries 15 candidate scales), with or without an
importance matrix.

Every search runs on all blocks at once, with the 32 values of a block along the first axis so that
the sums are added first to last, as the reference adds them (kcommon.seqdot).
"""

from __future__ import annotations

import gguf
import numpy as np

from lowbit.formats.ggml.base import GGMLType
from lowbit.formats.ggml.kcommon import (
    F32,
    GROUP_MAX_EPS,
    as_bytes,
    nearest_int,
    seqdot,
    seqsum,
    signed_absmax,
)

VALUES = np.array(gguf.quants.IQ4_NL.kvalues, dtype=F32)  # llama.cpp's kvalues_iq4nl, via its own package
NTRY = 7


LOWER = np.concatenate([[-np.inf], VALUES]).astype(F32)  # LOWER[k] = VALUES[k - 1]; UPPER[k] = VALUES[k]
UPPER = np.concatenate([VALUES, [np.inf]]).astype(F32)
FIRST, LAST = int(VALUES[0]), int(VALUES[-1])
# how many levels are <= n, for each integer n from FIRST to LAST: the levels are integers, so that is the
# count of levels <= v for every v whose floor is n (a table, ~6x faster here than a binary search)
AT_OR_BELOW = np.array([np.sum(VALUES <= n) for n in range(FIRST, LAST + 1)], dtype=np.intp)


def _bracket(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Whether each value takes the lower of the two levels around it, and the upper one's index.
    Values beyond the levels are clamped to the end ones, which they take (NaN, from a scale's inverse
    that overflowed, to the last one, as the reference's comparisons, all false, give)."""
    v = np.fmin(np.maximum(v, F32(FIRST)), F32(LAST))
    mu = AT_OR_BELOW[(np.floor(v) - F32(FIRST)).astype(np.intp)]  # 1 .. 16
    return v - LOWER[mu] < UPPER[mu] - v, mu


def best_index(v: np.ndarray) -> np.ndarray:
    """The level nearest each value (ggml's ``best_index_int8``: the lower one unless strictly farther)."""
    lower, mu = _bracket(v)
    return (mu - lower).astype(np.uint8)


def nearest(v: np.ndarray) -> np.ndarray:
    """The nearest level's value (``VALUES[best_index(v)]``), as the scale searches use it."""
    lower, mu = _bracket(v)
    return UPPER[mu - lower]


def block_scales(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The best scale of each block of 32: x, w (32, B) float32 -> (B,), 0 for an all-but-zero block.
    A first guess from the largest value, then 15 trial scales around it; the weighted least-squares
    scale of the best codes wins."""
    amax, mx = signed_absmax(x, axis=0)
    live = amax >= GROUP_MAX_EPS
    mx = np.where(live, mx, F32(1))
    with np.errstate(all="ignore"):
        d = -mx / VALUES[0]
        q = nearest((F32(1) / d) * x)
        sumqx, sumq2 = seqdot(w, q, x), seqdot(w, q, q)
        d = np.where(sumq2 > 0, sumqx / sumq2, F32(0))
        best = d * sumqx
        for itry in range(-NTRY, NTRY + 1):
            q = nearest((F32(itry) + VALUES[0]) / mx * x)
            sumqx, sumq2 = seqdot(w, q, x), seqdot(w, q, q)
            better = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
            d = np.where(better, sumqx / sumq2, d)
            best = np.where(better, d * sumqx, best)
    return np.where(live, d, F32(0)).astype(F32)


def weights(x: np.ndarray, qw: np.ndarray | None, super_size: int) -> np.ndarray:
    """Per-value weights of (S, super_size) blocks: x^2, or the imatrix's qw * sqrt(sigma2 + x^2)."""
    if qw is None:
        return x * x
    sigma2 = seqsum((x * x).T) * (F32(2) / F32(super_size))
    return qw * np.sqrt(sigma2[:, None] + x * x)


def pack_nibbles(L: np.ndarray) -> np.ndarray:
    """(S, n) codes -> (S, n/2) bytes: in each 32, value j in the low nibble and j + 16 in the high one."""
    q = L.reshape(L.shape[0], -1, 2, 16)
    return (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(L.shape[0], -1)


class IQ4NL(GGMLType, name="IQ4_NL"):
    @classmethod
    def quantize_blocks(cls, blocks: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
        xt = np.ascontiguousarray(blocks.T)  # (32, B)
        d = block_scales(xt, np.ascontiguousarray(weights(blocks, qw, 32).T))
        with np.errstate(divide="ignore"):
            inv = np.where(d != 0, F32(1) / d, F32(0))
        L = best_index(inv[:, None] * blocks)
        return as_bytes(d.astype(np.float16)[:, None], pack_nibbles(L))


class IQ4XS(GGMLType, name="IQ4_XS"):
    @classmethod
    def quantize_blocks(cls, blocks: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
        s = blocks.shape[0]
        sub = blocks.reshape(s * 8, 32)
        w = weights(blocks, qw, 256).reshape(s * 8, 32)
        scales = block_scales(np.ascontiguousarray(sub.T), np.ascontiguousarray(w.T)).reshape(s, 8)
        amax, max_scale = signed_absmax(np.ascontiguousarray(scales.T), axis=0)
        d = -np.where(amax > 0, max_scale, F32(0)) / F32(32)
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = np.where(d != 0, F32(1) / d, F32(0))
            ls = np.clip(nearest_int(inv[:, None] * scales), -32, 31)
            dl = d[:, None] * ls.astype(F32)
            idl = np.where(dl != 0, F32(1) / dl, F32(0))
        L = best_index(idl.reshape(-1)[:, None] * sub).reshape(s, 256)
        ls = (ls + 32).astype(np.uint16)
        low = (ls & 0xF).astype(np.uint8)
        scales_l = low[:, 0::2] | (low[:, 1::2] << 4)
        scales_h = np.bitwise_or.reduce((ls >> 4) << (2 * np.arange(8, dtype=np.uint16)), axis=1).astype("<u2")
        return as_bytes(d.astype(np.float16)[:, None], scales_h[:, None], scales_l, pack_nibbles(L))
