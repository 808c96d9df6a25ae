"""Q4_K: super-blocks of 256 = 8 x 32 values, 4-bit levels with a min per 32, the 8 scales and mins
in 6 bits against two float16 super-scales (4.5 bits per weight). llama.cpp's ``quantize_row_q4_K_ref``."""

from __future__ import annotations

import numpy as np

from lowbit.formats.ggml.base import GGMLType
from lowbit.formats.ggml.kcommon import (
    F32,
    as_bytes,
    imatrix_weights,
    make_qkx2_quants,
    make_qp_quants,
    nearest_int,
    pack_scale_min_k4,
    seqsum,
)


def qkx_superblocks(x: np.ndarray, qw: np.ndarray | None, nmax: int, rmin: float, nstep: int,
                    clamp_codes: bool) -> tuple[np.ndarray, ...]:
    """The part Q4_K and Q5_K share: per-32 search, 6-bit scales/mins, then the final levels.
    x: (S, 256); ``qw`` the importance weights (S, 256) or None (reference path).
    Returns d (S,) f16, dmin (S,) f16, the 12 scale bytes (S, 12), L (S, 256)."""
    s = x.shape[0]
    sub = x.reshape(s * 8, 32)
    if qw is None:
        av = np.sqrt(seqsum((sub * sub).T) / F32(32))
        w = av[:, None] + np.abs(sub)
        scales, mins, L = make_qkx2_quants(sub, w, nmax, rmin, 0.1, nstep, use_mad=False)
    else:
        sigma2 = F32(2) * seqsum((x * x).T) / F32(256)
        w = imatrix_weights(sub, qw.reshape(s * 8, 32), np.repeat(sigma2, 8))
        scales, mins, L = make_qkx2_quants(sub, w, nmax, -0.9, 0.05, 36, use_mad=False)
    scales, mins, L = scales.reshape(s, 8), mins.reshape(s, 8), L.reshape(s, 256)
    if qw is None:
        max_scale = np.maximum(scales.max(1), F32(0))
        max_min = np.maximum(mins.max(1), F32(0))
        with np.errstate(divide="ignore"):
            inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0))
            inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0))
        ls = np.minimum(nearest_int(inv_scale[:, None] * scales) & 0xFF, 63)
        lm = np.minimum(nearest_int(inv_min[:, None] * mins) & 0xFF, 63)
        d16 = (max_scale / F32(63)).astype(np.float16)
        dmin16 = (max_min / F32(63)).astype(np.float16)
    else:
        sw = seqsum(w.T).reshape(s, 8)
        d_block, ls = make_qp_quants(scales, 63, sw)
        m_block, lm = make_qp_quants(mins, 63, sw)
        if clamp_codes:  # Q5_K clamps, Q4_K relies on make_qp_quants' own bound
            ls, lm = np.minimum(ls, 63), np.minimum(lm, 63)
        d16, dmin16 = d_block.astype(np.float16), m_block.astype(np.float16)
    d = d16.astype(F32)[:, None] * ls.astype(F32)  # (S, 8)
    dm = dmin16.astype(F32)[:, None] * lm.astype(F32)
    with np.errstate(all="ignore"):
        lv = np.clip(nearest_int((x.reshape(s, 8, 32) + dm[..., None]) / d[..., None]), 0, nmax)
    L = np.where((d != 0)[..., None], lv, L.reshape(s, 8, 32)).reshape(s, 256)
    return d16, dmin16, pack_scale_min_k4(ls, lm), L


class Q4K(GGMLType, name="Q4_K"):
    @classmethod
    def quantize_blocks(cls, blocks: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
        d, dmin, scales, L = qkx_superblocks(blocks, qw, 15, -1.0, 20, clamp_codes=False)
        q = L.astype(np.uint8).reshape(-1, 4, 2, 32)
        qs = (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)
        return as_bytes(d[:, None], dmin[:, None], scales, qs)
