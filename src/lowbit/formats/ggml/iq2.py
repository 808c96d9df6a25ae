"""IQ2_XXS: 2.06 bits per weight. Each 8 values take one point of a 256-point lattice (magnitudes 1, 3,
5 per coordinate) and 7 sign bits (the eighth sign makes their count even), under a 4-bit scale per 32
and one float16 per 256. llama.cpp's ``quantize_row_iq2_xxs_impl``: an importance matrix is required,
as there; the scale is searched over 13 candidates, and a group that falls off the lattice takes the
nearest of its listed neighbours (``iq2xs_init_impl``'s table, rebuilt here from the lattice that
gguf-py, llama.cpp's own package, decodes with).

Every step runs on all blocks of 32 at once; sums go first to last, as the reference adds them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lowbit.formats.ggml.base import GGMLType
from lowbit.formats.ggml.iqlattice import codes_of, group_columns, lattice, to_lattice
from lowbit.formats.ggml.kcommon import (
    F32,
    GROUP_MAX_EPS,
    as_bytes,
    make_qp_quants,
    nearest_int,
    seqdot,
    seqsum,
)

KMAXQ = 3


def block_weights(blocks: np.ndarray, qw: np.ndarray | None, per: int, twice: bool = True,
                  plain: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The super-blocks (S, 256) as blocks of ``per`` values (B, per) and the lattice searches' weights:
    qw * sqrt(sigma2 + x^2), sigma2 the mean x^2 of the 256 (doubled where the reference doubles it);
    without an importance matrix, ``plain(sigma2 (B, 1), x)``, by default x^2."""
    s = blocks.shape[0]
    k = 256 // per
    sigma2 = (F32(2) if twice else F32(1)) * seqsum((blocks * blocks).T) / F32(256)
    xb = blocks.reshape(s * k, per)
    sig = np.repeat(sigma2, k)[:, None]
    if qw is not None:
        return xb, qw.reshape(s * k, per) * np.sqrt(sig + xb * xb)
    return xb, (plain(sig, xb) if plain is not None else xb * xb)


def plain_signs(xb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """|x| and the sign bits of each 8 values, all eight stored (IQ2_S, IQ3_S)."""
    neg = (xb < 0).reshape(-1, xb.shape[1] // 8, 8)
    return np.where(xb >= 0, xb, -xb), (neg.astype(np.int64) << np.arange(8)).sum(-1)


def grid_indices(L: np.ndarray, dead: np.ndarray, tables: tuple, name: str) -> np.ndarray:
    """Each group's lattice index (0 for blocks with nothing to encode); every group is on the lattice."""
    gi = np.where(dead[:, None], 0, tables[1][codes_of(L, tables)])
    if (gi < 0).any():
        raise AssertionError(f"{name}: a point off the lattice survived the search")
    return gi


def _scale_nibbles(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(S, n) scales -> (d float16 (S,), 4-bit codes (S, n), blocks with no scale at all (S,)):
    d = max / 31, code = round((s / d - 1) / 2)."""
    max_scale = scales.max(1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        d = max_scale / F32(31)
        inv = np.where(d != 0, F32(1) / d, F32(0))
        ls = np.clip(nearest_int(F32(0.5) * (inv[:, None] * scales - F32(1))), 0, 15).astype(np.uint32)
    return np.where(max_scale == 0, F32(0), d).astype(np.float16), ls, max_scale == 0


def _final(scale: np.ndarray, signs: np.ndarray, dead: np.ndarray, bits: int = 127) -> tuple[np.ndarray, np.ndarray]:
    """A negative scale (never, as in the reference) flips the signs (the ``bits`` stored); nothing-to-
    encode blocks are 0."""
    flip = scale < 0
    signs = np.where(flip[:, None], (~signs) & bits, signs)
    return np.where(dead, F32(0), np.abs(scale)).astype(F32), np.where(dead[:, None], 0, signs)


class IQ2XXS(GGMLType, name="IQ2_XXS"):
    needs_imatrix = True

    @classmethod
    def quantize_blocks(cls, blocks: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
        tables = lattice("IQ2_XXS", 2)
        xb, weight = block_weights(blocks, qw, 32, twice=False)
        xval, signs = _even_signs(xb, weight)
        dead, scale, L = _search_xxs(xval, weight, np.sqrt(weight), tables)
        scale, signs = _final(scale, signs, dead)
        gi = grid_indices(L, dead, tables, cls.name)
        s = blocks.shape[0]
        d16, ls, zero = _scale_nibbles(scale.reshape(s, 8))
        w0 = (gi.astype(np.uint32) << (8 * np.arange(4, dtype=np.uint32))).sum(-1, dtype=np.uint32).reshape(s, 8)
        w1 = (signs.astype(np.uint32) << (7 * np.arange(4, dtype=np.uint32))).sum(-1, dtype=np.uint32).reshape(s, 8)
        words = np.stack([w0, w1 | (ls << 28)], axis=-1).reshape(s, 16)
        words[zero] = 0
        return as_bytes(d16[:, None], words.astype("<u4"))


class IQ2XS(GGMLType, name="IQ2_XS"):
    needs_imatrix = True

    @classmethod
    def quantize_blocks(cls, blocks: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
        tables = lattice("IQ2_XS", 2)
        xb, weight = block_weights(blocks, qw, 16, twice=False)
        xval, signs = _even_signs(xb, weight)
        dead, scale, L = _search_xs(xval, weight, np.sqrt(weight), tables)
        scale, signs = _final(scale, signs, dead)
        gi = grid_indices(L, dead, tables, cls.name)
        s = blocks.shape[0]
        d16, ls, zero = _scale_nibbles(scale.reshape(s, 16))
        qs = (gi | (signs << 9)).astype("<u2").reshape(s, 32)
        sc = (ls[:, 0::2] | (ls[:, 1::2] << 4)).astype(np.uint8)
        qs[zero], sc[zero] = 0, 0
        return as_bytes(d16[:, None], qs, sc)


class IQ2S(GGMLType, name="IQ2_S"):
    """2.56 bits: a 1024-point lattice, all eight signs stored, a 4-bit scale per 16; quantizes without an
    importance matrix too (llama.cpp's file type still asks for one)."""

    @classmethod
    def quantize_blocks(cls, blocks: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
        tables = lattice("IQ2_S", 1)
        s = blocks.shape[0]
        xb, weight = block_weights(blocks, qw, 16, plain=lambda sig, x: F32(0.25) * sig + x * x)
        xval, signs = plain_signs(xb)
        dead, scale, L = _search_xs(xval.reshape(-1, 2, 8), weight, np.sqrt(weight), tables, F32(1e-8))
        scale, signs = _final(scale, signs, dead, 255)
        gi = grid_indices(L, dead, tables, cls.name)
        _, ls, zero = _scale_nibbles(scale.reshape(s, 16))
        d16 = ((scale.reshape(s, 16).max(1) / F32(31)) * F32(0.9875)).astype(np.float16)  # stored d * 0.9875
        gi = gi.reshape(s, 32)
        qs = np.concatenate([(gi & 255), signs.reshape(s, 32)], axis=1).astype(np.uint8)
        qh = ((gi >> 8) << (2 * (np.arange(32) % 4))).reshape(s, 8, 4).sum(-1).astype(np.uint8)
        sc = (ls[:, 0::2] | (ls[:, 1::2] << 4)).astype(np.uint8)
        sc[zero], d16[zero] = 0, 0  # as the reference: no scale at all leaves the codes written
        return as_bytes(d16[:, None], qs, qh, sc)


def _even_signs(xb: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """|x| per group of 8 with its sign bits; an odd count of negatives flips the value of least
    weighted x^2 back (its magnitude turns negative), so the eighth sign is implied."""
    g = xb.shape[1] // 8
    neg = (xb < 0).reshape(-1, g, 8)
    xval = np.where(xb >= 0, xb, -xb).reshape(-1, g, 8)
    bits = (neg.astype(np.int64) << np.arange(8)).sum(-1)
    odd = neg.sum(-1) % 2 == 1
    imin = (weight * xb * xb).reshape(-1, g, 8).argmin(-1)
    b, k = np.nonzero(odd)
    xval[b, k, imin[b, k]] = -xval[b, k, imin[b, k]]
    bits[b, k] ^= 1 << imin[b, k]
    return xval, (bits & 127).astype(np.int64)


def _fit(wt: np.ndarray, xt: np.ndarray, L: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sum w x q and sum w q^2 (q = 2 L + 1) per block, first to last; wt, xt: (n, B), L: (B, G, 8)."""
    q = np.ascontiguousarray(L.reshape(len(L), -1).T).astype(F32)  # transposed as bytes, then widened
    q *= F32(2)
    q += F32(1)
    return seqdot(wt, xt, q), seqdot(wt, q, q)


def _trials(xval: np.ndarray, weight: np.ndarray, waux: np.ndarray, tables: tuple, scale: np.ndarray,
            base: np.ndarray, steps: range, delta: float = 0.1,
            on_init: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Trial scales 1 / ((2 kmax - 1 + step * delta) / base): each block keeps the levels of the best
    weighted fit (and which groups were on the lattice then). Returns (scale, levels, on-grid)."""
    kmax = tables[3]
    nb, g = xval.shape[:2]
    wt, xt = np.ascontiguousarray(weight.T), np.ascontiguousarray(xval.reshape(nb, -1).T)
    best = np.zeros(nb, dtype=F32)
    L = np.zeros(xval.shape, dtype=np.uint8)
    on = np.full((nb, g), on_init)
    cols = group_columns(xval, waux)
    for step in steps:
        inv = (F32(2 * kmax - 1) + F32(step) * F32(delta)) / base
        trial, _, trial_on = to_lattice(xval, waux, F32(1) / inv, inv, tables, cols)
        sumqx, sumq2 = _fit(wt, xt, trial)
        better = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
        scale = np.where(better, sumqx / sumq2, scale)
        best = np.where(better, scale * sumqx, best)
        np.copyto(L, trial, where=better[:, None, None])
        np.copyto(on, trial_on, where=better[:, None])
    return scale, L, on


def _search_xxs(xval: np.ndarray, weight: np.ndarray, waux: np.ndarray,
                tables: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IQ2_XXS, per block of 32: 13 trial scales around make_qp_quants' guess, then every group again at
    the scale found. Returns (blocks with nothing to encode, scale, levels (B, 4, 8))."""
    nb = xval.shape[0]
    flat = xval.reshape(nb, 32)
    scale, _ = make_qp_quants(flat, KMAXQ + 1, weight)
    eff_max = scale * F32(KMAXQ)
    dead = (flat.max(1) < GROUP_MAX_EPS) | ~(eff_max > 0)
    waux = waux.reshape(xval.shape)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        scale, L, _ = _trials(xval, weight, waux, tables, scale, np.where(dead, F32(1), eff_max), range(-6, 7))
        idx = np.nonzero((scale > 0) & ~dead)[0]
        if len(idx):
            s = scale[idx]
            L[idx], _, _ = to_lattice(xval[idx], waux[idx], s, F32(1) / s, tables)
            sumqx, sumq2 = _fit(np.ascontiguousarray(weight[idx].T), np.ascontiguousarray(flat[idx].T), L[idx])
            scale[idx] = np.where(sumq2 > 0, sumqx / sumq2, s)
    return dead, scale.astype(F32), L


def _search_xs(xval: np.ndarray, weight: np.ndarray, waux: np.ndarray, tables: tuple,
               eps: np.float32 = GROUP_MAX_EPS, steps: range = range(-9, 10), delta: float = 0.1,
               redo_all: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IQ2_XS (and IQ2_S, IQ3_XXS, IQ3_S with their own numbers): trial scales around max / (2 kmax - 1),
    then the groups that were off the lattice at the best one (``redo_all``: all groups of such a block)
    again at the scale found. Returns (blocks with nothing to encode, scale, levels)."""
    nb = xval.shape[0]
    flat = xval.reshape(nb, -1)
    mx = flat.max(1)
    dead = mx < eps
    base = np.where(dead, F32(1), mx)
    waux = waux.reshape(xval.shape)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        kmax = tables[3]
        scale, L, on = _trials(xval, weight, waux, tables, base / F32(2 * kmax - 1), base, steps, delta,
                               on_init=not redo_all)
        redo = ~on & ((scale > 0) & ~dead)[:, None]
        if redo_all:  # IQ3_S: every group of a block again, once one of them was off the lattice
            redo = np.repeat(redo.any(1, keepdims=True), redo.shape[1], axis=1)
        b, k = np.nonzero(redo)
        if len(b):
            s = scale[b]
            L[b, k] = to_lattice(xval[b, k][:, None], waux[b, k][:, None], s, F32(1) / s, tables)[0][:, 0]
            idx = np.unique(b)
            sumqx, sumq2 = _fit(np.ascontiguousarray(weight[idx].T), np.ascontiguousarray(flat[idx].T), L[idx])
            scale[idx] = np.where(sumq2 > 0, sumqx / sumq2, scale[idx])
    return dead, scale.astype(F32), L
