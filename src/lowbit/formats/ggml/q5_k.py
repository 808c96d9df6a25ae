"""Q5_K: Q4_K's layout with 5-bit levels (the fifth bits in ``qh``), 5.5 bits per weight.
llama.cpp's ``quantize_row_q5_K_ref``."""

from __future__ import annotations

import numpy as np

from lowbit.formats.ggml.base import GGMLType
from lowbit.formats.ggml.kcommon import as_bytes
from lowbit.formats.ggml.q4_k import qkx_superblocks


class Q5K(GGMLType, name="Q5_K"):
    @classmethod
    def quantize_blocks(cls, blocks: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
        d, dmin, scales, L = qkx_superblocks(blocks, qw, 31, -0.5, 15, clamp_codes=True)
        q = L.astype(np.uint8).reshape(-1, 4, 2, 32)  # 64-value chunks n, halves (j, j + 32), 32 lanes
        qs = ((q[:, :, 0] & 0xF) | ((q[:, :, 1] & 0xF) << 4)).reshape(-1, 128)
        hi = (q >> 4) & 1  # bit 2n for the first half of chunk n, 2n + 1 for the second
        shifts = (2 * np.arange(4)[:, None] + np.arange(2)[None, :]).astype(np.uint8)  # (4, 2)
        qh = np.bitwise_or.reduce(hi << shifts[None, :, :, None], axis=(1, 2)).astype(np.uint8)
        return as_bytes(d[:, None], dmin[:, None], scales, qh, qs)
