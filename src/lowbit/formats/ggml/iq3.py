"""IQ3_XXS: 3.06 bits per weight. Each 4 values take one point of a 256-point lattice (eight magnitudes
per coordinate), 7 sign bits per 8 values (the eighth makes their count even), a 4-bit scale per 32
and one float16 per 256 (stored times 1.0125, as llama.cpp does). llama.cpp's
``quantize_row_iq3_xxs_impl``: 31 trial scales around max / 15, then the groups that were off the
lattice at the best one again at the scale found; the search machinery is IQ2's (iq2.py).
"""

from __future__ import annotations

import numpy as np

from lowbit.formats.ggml.base import GGMLType
from lowbit.formats.ggml.iq2 import (
    _even_signs,
    _final,
    _scale_nibbles,
    _search_xs,
    block_weights,
    grid_indices,
    lattice,
    plain_signs,
)
from lowbit.formats.ggml.kcommon import F32, as_bytes


class IQ3XXS(GGMLType, name="IQ3_XXS"):
    @classmethod
    def quantize_blocks(cls, blocks: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
        tables = lattice("IQ3_XXS", 2)
        s = blocks.shape[0]
        xb, weight = block_weights(blocks, qw, 32)
        xval, signs = _even_signs(xb, weight)  # signs per 8 values, lattice points per 4
        dead, scale, L = _search_xs(xval.reshape(-1, 8, 4), weight, np.sqrt(weight), tables, F32(1e-8),
                                    range(-15, 16), 0.2)
        scale, signs = _final(scale, signs, dead)
        gi = grid_indices(L, dead, tables, cls.name)
        _, ls, zero = _scale_nibbles(scale.reshape(s, 8))
        d16 = ((scale.reshape(s, 8).max(1) / F32(31)) * F32(1.0125)).astype(np.float16)
        q3 = gi.astype(np.uint8).reshape(s, 64)
        packed = (signs.astype(np.uint32) << (7 * np.arange(4, dtype=np.uint32))).sum(-1, dtype=np.uint32)
        words = packed.reshape(s, 8) | (ls << 28)
        q3[zero], words[zero], d16[zero] = 0, 0, 0
        return as_bytes(d16[:, None], q3, words.astype("<u4"))


class IQ3S(GGMLType, name="IQ3_S"):
    """3.44 bits: a 512-point lattice of 4 values, all eight signs stored, a 4-bit scale per 32, the
    float16 stored times 1.033. As the reference, a block of 32 with nothing to encode does not advance
    the code and sign bytes: the blocks after it are written that much earlier."""

    @classmethod
    def quantize_blocks(cls, blocks: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
        tables = lattice("IQ3_S", 3)
        s = blocks.shape[0]
        xb, weight = block_weights(blocks, qw, 32)
        xval, signs = plain_signs(xb)
        dead, scale, L = _search_xs(xval.reshape(-1, 8, 4), weight, np.sqrt(weight), tables,
                                    np.nextafter(F32(0), F32(1)), range(-9, 10), 0.2, redo_all=True)
        scale, signs = _final(scale, signs, dead, 255)  # a dead block's signs are never written
        gi = grid_indices(L, dead, tables, cls.name)
        _, ls, zero = _scale_nibbles(scale.reshape(s, 8))
        d16 = ((scale.reshape(s, 8).max(1) / F32(31)) * F32(1.033)).astype(np.float16)
        gi, signs, live = gi.reshape(s, 8, 8), signs.reshape(s, 8, 4), ~dead.reshape(s, 8)
        qh = ((gi >> 8) << np.arange(8)).sum(-1).astype(np.uint8)  # (s, 8): by block position, dead or not
        # code and sign bytes of the live blocks, back to back from the start of the super-block
        pos = np.cumsum(live, axis=1) - 1
        qs = np.zeros((s, 8, 8), dtype=np.uint8)
        sg = np.zeros((s, 8, 4), dtype=np.uint8)
        b, k = np.nonzero(live)
        qs[b, pos[b, k]] = gi[b, k] & 255
        sg[b, pos[b, k]] = signs[b, k]
        sc = (ls[:, 0::2] | (ls[:, 1::2] << 4)).astype(np.uint8)
        qs, sg = qs.reshape(s, 64), sg.reshape(s, 32)
        sc[zero], d16[zero] = 0, 0  # as the reference: no scale at all leaves the codes written
        return as_bytes(d16[:, None], qs, qh, sg, sc)
