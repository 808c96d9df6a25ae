"""Q3_K: super-blocks of 256 = 16 x 16 values, 3-bit symmetric levels (the high bit in ``hmask``),
6-bit scales per 16 against one float16 super-scale (3.4375 bits per weight).
llama.cpp's ``quantize_row_q3_K_ref``."""

from __future__ import annotations

import numpy as np

from lowbit.formats.ggml.base import GGMLType
from lowbit.formats.ggml.kcommon import (
    F32,
    as_bytes,
    imatrix_weights,
    make_q3_quants,
    make_qx_quants,
    nearest_int,
    pack_2bit,
    seqsum,
    signed_absmax,
)


class Q3K(GGMLType, name="Q3_K"):
    @classmethod
    def quantize_blocks(cls, blocks: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
        s = blocks.shape[0]
        x = blocks.reshape(s, 16, 16)
        if qw is None:
            scales, L = make_q3_quants(blocks.reshape(s * 16, 16), 4)
            scales, L = scales.reshape(s, 16), L.reshape(s, 16, 16)
            _, max_scale = signed_absmax(scales)
            has = max_scale != 0
            with np.errstate(all="ignore"):
                iscale = F32(-32) / max_scale
                l6 = np.clip(nearest_int(iscale[:, None] * scales).astype(np.int8), -32, 31) + 32  # 0..63
                l6 = np.where(has[:, None], l6, 0).astype(np.uint8)
                d16 = np.where(has, F32(1) / iscale, F32(0)).astype(np.float16)
            sc = np.where(has[:, None], l6.astype(np.int32) - 32, 0)  # the scales as the decoder reads them
        else:
            sigma2 = F32(2) * seqsum((blocks * blocks).T) / F32(256)
            w = imatrix_weights(blocks.reshape(s * 16, 16), qw.reshape(s * 16, 16), np.repeat(sigma2, 16))
            scales, L = make_qx_quants(blocks.reshape(s * 16, 16), 4, 1, w)
            scales, L = scales.reshape(s, 16), L.reshape(s, 16, 16)
            d_block, l6 = make_qx_quants(scales, 32, 1, seqsum(w.T).reshape(s, 16))
            l6 = l6.astype(np.uint8)
            d16 = d_block.astype(np.float16)
            sc = l6.astype(np.int32) - 32
        with np.errstate(all="ignore"):
            d = d16.astype(F32)[:, None] * sc.astype(F32)
            lv = np.clip(nearest_int(x / d[..., None]), -4, 3) + 4
        L = np.where((d != 0)[..., None], lv, L).reshape(s, 256)
        packed = np.zeros((s, 12), dtype=np.uint8)
        packed[:, 0:8] = (l6[:, 0:8] & 0xF) | ((l6[:, 8:16] & 0xF) << 4)
        hi2 = (l6 >> 4).reshape(s, 4, 4)  # [j // 4, j % 4]
        packed[:, 8:12] = hi2[:, 0] | (hi2[:, 1] << 2) | (hi2[:, 2] << 4) | (hi2[:, 3] << 6)
        high = (L > 3).reshape(s, 8, 32).astype(np.uint8)  # value j: bit j // 32 of hmask[j % 32]
        hmask = np.bitwise_or.reduce(high << np.arange(8, dtype=np.uint8)[None, :, None], axis=1)
        qs = pack_2bit(np.where(L > 3, L - 4, L))
        return as_bytes(hmask, qs, packed, d16[:, None])
