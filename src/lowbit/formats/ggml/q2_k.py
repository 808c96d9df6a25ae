"""Q2_K: super-blocks of 256 = 16 x 16 values, 2-bit levels with a min per 16, 4-bit scales and mins
against two float16 super-scales (2.625 bits per weight). llama.cpp's ``quantize_row_q2_K_ref``."""

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
    pack_2bit,
    seqsum,
)


class Q2K(GGMLType, name="Q2_K"):
    @classmethod
    def quantize_blocks(cls, blocks: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
        s = blocks.shape[0]
        sub = blocks.reshape(s * 16, 16)
        if qw is None:
            scales, mins, L = make_qkx2_quants(sub, np.abs(sub), 3, -0.5, 0.1, 15, use_mad=True)
            scales, mins, L = scales.reshape(s, 16), mins.reshape(s, 16), L.reshape(s, 16, 16)
            max_scale = np.maximum(scales.max(1), F32(0))
            max_min = np.maximum(mins.max(1), F32(0))
            with np.errstate(all="ignore"):
                ls = np.where(max_scale[:, None] > 0, nearest_int((F32(15) / max_scale)[:, None] * scales), 0)
                lm = np.where(max_min[:, None] > 0, nearest_int((F32(15) / max_min)[:, None] * mins), 0)
                d16 = np.where(max_scale > 0, max_scale / F32(15), F32(0)).astype(np.float16)
                dmin16 = np.where(max_min > 0, max_min / F32(15), F32(0)).astype(np.float16)
        else:
            sigma2 = seqsum((blocks * blocks).T) / F32(256)
            w = imatrix_weights(sub, qw.reshape(s * 16, 16), np.repeat(sigma2, 16))
            scales, mins, L = make_qkx2_quants(sub, w, 3, -0.9, 0.05, 36, use_mad=False)
            scales, mins, L = scales.reshape(s, 16), mins.reshape(s, 16), L.reshape(s, 16, 16)
            sw = seqsum(w.T).reshape(s, 16)
            dm, ls = make_qp_quants(scales, 15, sw)
            mm, lm = make_qp_quants(mins, 15, sw)
            d16, dmin16 = dm.astype(np.float16), mm.astype(np.float16)
        byte = ((ls & 0xFF) | ((lm << 4) & 0xFF)).astype(np.uint8)
        with np.errstate(all="ignore"):
            d = d16.astype(F32)[:, None] * (byte & 0xF).astype(F32)
            dm = dmin16.astype(F32)[:, None] * (byte >> 4).astype(F32)
            lv = np.clip(nearest_int((blocks.reshape(s, 16, 16) + dm[..., None]) / d[..., None]), 0, 3)
        L = np.where((d != 0)[..., None], lv, L).reshape(s, 256)
        return as_bytes(byte, pack_2bit(L), d16[:, None], dmin16[:, None])
