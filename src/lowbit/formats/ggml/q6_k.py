"""Q6_K: super-blocks of 256 = 16 x 16 values, 6-bit symmetric levels, int8 scales per 16 against one
float16 super-scale (6.5625 bits per weight). llama.cpp's ``quantize_row_q6_K_ref``."""

from __future__ import annotations

import numpy as np

from lowbit.formats.ggml.base import GGMLType
from lowbit.formats.ggml.kcommon import (
    F32,
    GROUP_MAX_EPS,
    as_bytes,
    make_qx_quants,
    nearest_int,
    signed_absmax,
)


class Q6K(GGMLType, name="Q6_K"):
    @classmethod
    def quantize_blocks(cls, blocks: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
        s = blocks.shape[0]
        scales, L = make_qx_quants(blocks.reshape(s * 16, 16), 32, 1, None if qw is None else qw.reshape(s * 16, 16))
        scales, L = scales.reshape(s, 16), L.reshape(s, 16, 16)
        amax, max_scale = signed_absmax(scales)
        zero = amax < GROUP_MAX_EPS
        with np.errstate(all="ignore"):
            iscale = F32(-128) / max_scale
            d16 = (F32(1) / iscale).astype(np.float16)
            sc = np.minimum(nearest_int(iscale[:, None] * scales), 127).astype(np.int8)
            d = d16.astype(F32)[:, None] * sc.astype(F32)
            lv = np.clip(nearest_int(blocks.reshape(s, 16, 16) / d[..., None]), -32, 31) + 32
        L = np.where((d != 0)[..., None], lv, L).reshape(s, 2, 4, 32).astype(np.uint8)  # 128-chunks, quarters, lanes
        ql = np.concatenate([(L[:, :, 0] & 0xF) | ((L[:, :, 2] & 0xF) << 4),
                             (L[:, :, 1] & 0xF) | ((L[:, :, 3] & 0xF) << 4)], axis=2).reshape(s, 128)
        hi = L >> 4
        qh = (hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)).reshape(s, 64)
        out = as_bytes(ql, qh, sc, d16[:, None])
        out[zero] = 0
        return out
