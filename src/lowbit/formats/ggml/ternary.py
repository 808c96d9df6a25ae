"""TQ1_0 and TQ2_0: ternary weights {-1, 0, 1} times one float16 scale per 256 (the block's largest
magnitude), for models trained ternary (BitNet b1.58). TQ2_0 stores each trit in 2 bits (2.06 bits per
weight); TQ1_0 packs five trits in a byte as a base-3 fraction (1.69 bits per weight). llama.cpp's
``quantize_row_tq1_0_ref`` / ``quantize_row_tq2_0_ref``; an importance matrix is ignored, as there.
"""

from __future__ import annotations

import numpy as np

from lowbit.formats.ggml.base import GGMLType
from lowbit.formats.ggml.kcommon import F32, as_bytes


def trits(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(S, 256) float32 -> the float16 scale (S,) and the trits + 1 in {0, 1, 2} (S, 256) uint8: C's
    ``lroundf(x * id) + 1``, which for |x * id| <= 1 is 2 from 0.5 up, 0 from -0.5 down, else 1."""
    d = np.abs(blocks).max(axis=1)
    with np.errstate(divide="ignore", over="ignore"):
        inv = np.where(d != 0, F32(1) / d, F32(0))
    # a subnormal block's 1 / d overflows: x86's lroundf gives LONG_MIN for inf / NaN, + 1 leaves 1 in an int
    inv = np.where(np.isfinite(inv), inv, F32(0))
    v = blocks * inv[:, None]
    t = (v >= F32(0.5)).view(np.uint8) + np.uint8(1)
    t -= (v <= F32(-0.5)).view(np.uint8)
    return d.astype(np.float16), t


def base3(t: np.ndarray) -> np.ndarray:
    """Trits (..., k) (first one most significant) -> the byte ceil(value * 256 / 243)."""
    q = t[..., 0].copy()
    for n in range(1, t.shape[-1]):
        q = q * np.uint8(3) + t[..., n]  # < 243: fits a byte
    return ((q.astype(np.uint16) * 256 + 242) // 243).astype(np.uint8)


class TQ10(GGMLType, name="TQ1_0"):
    @classmethod
    def quantize_blocks(cls, blocks: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
        d, t = trits(blocks)
        s = len(t)
        first = base3(t[:, :160].reshape(s, 5, 32).transpose(0, 2, 1))  # byte m: values m, m+32, ... m+128
        second = base3(t[:, 160:240].reshape(s, 5, 16).transpose(0, 2, 1))
        last = t[:, 240:].reshape(s, 4, 4).transpose(0, 2, 1)
        qh = base3(np.concatenate([last, np.zeros((s, 4, 1), np.uint8)], axis=2))  # 4 trits, shifted up one
        return as_bytes(first, second, qh, d[:, None])


class TQ20(GGMLType, name="TQ2_0"):
    @classmethod
    def quantize_blocks(cls, blocks: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
        d, t = trits(blocks)
        q = t.reshape(len(t), 2, 4, 32)  # byte m of half h: values h*128 + m + 32 n, n = 0..3
        qs = (q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)).reshape(len(t), 64)
        return as_bytes(qs, d[:, None])
