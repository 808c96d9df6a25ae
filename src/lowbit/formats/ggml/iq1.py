"""IQ1_S: 1.56 bits per weight. Each 8 values take one point of a 2048-point lattice of {-1, 0, 1},
shifted by +-1/8 per block of 32 (the shift's sign stored), under a 3-bit scale per 32 and one float16
per 256 (stored times 1.125). llama.cpp's ``quantize_row_iq1_s_impl``: for each block the exact best
split of its sorted values into the three levels (every pair of boundaries, both shifts, in the
reference's order), then each group of 8 onto the lattice (or its nearest listed neighbour); an
importance matrix is required, as there.
"""

from __future__ import annotations

import numpy as np

from lowbit.formats.ggml.base import GGMLType
from lowbit.formats.ggml.iq2 import block_weights
from lowbit.formats.ggml.iqlattice import codes_of, lattice, nearest_neighbour
from lowbit.formats.ggml.kcommon import F32, as_bytes, nearest_int, seqdot

DELTA = F32(0.125)
X_P = (F32(-1) + DELTA, DELTA, F32(1) + DELTA)
X_M = (F32(-1) - DELTA, -DELTA, F32(1) - DELTA)


def _split(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, ...]:
    """The best (i1, i2) boundaries over each block's values sorted ascending (stable, as glibc's merge
    sort), and the shift (+1, -1; 0: none found). x, w: (B, 32). Returns (scale, order, i1, i2, shift)."""
    nb, n = x.shape
    order = np.argsort(x, axis=1, kind="stable")
    xs, ws = np.take_along_axis(x, order, 1), np.take_along_axis(w, order, 1)
    zero = np.zeros((nb, 1), dtype=F32)
    sumx = np.concatenate([zero, np.cumsum(ws * xs, axis=1, dtype=F32)], axis=1).T.copy()  # (33, B)
    sumw = np.concatenate([zero, np.cumsum(ws, axis=1, dtype=F32)], axis=1).T.copy()
    best = np.full(nb, -np.finfo(np.float32).max, dtype=F32)
    scale = np.abs(x).max(1)
    won = np.full(nb, -1, dtype=np.int64)  # 2 (pair number) + (0: +, 1: -)
    # terms of i2 alone, per shift: c x2 and (cw x2) x2, c = the weighted sum from i2 on
    c, cw = sumx[n] - sumx, sumw[n] - sumw
    by_i2 = [(c * xx[2], cw * xx[2] * xx[2]) for xx in (X_P, X_M)]
    pair = 0
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for i1 in range(n + 1):
            a, aw = sumx[i1] - sumx[0], sumw[i1] - sumw[0]
            by_i1 = [(a * xx[0], aw * xx[0] * xx[0]) for xx in (X_P, X_M)]
            for i2 in range(i1, n + 1):
                b, bw = sumx[i2] - sumx[i1], sumw[i2] - sumw[i1]
                for sgn, xx in enumerate((X_P, X_M)):  # (a x0 + b x1) + c x2, likewise the squares
                    sumqx = by_i1[sgn][0] + b * xx[1] + by_i2[sgn][0][i2]
                    sumq2 = by_i1[sgn][1] + bw * xx[1] * xx[1] + by_i2[sgn][1][i2]
                    _update(sumqx, sumq2, best, scale, won, 2 * pair + sgn)
                pair += 1
    i1s, i2s = np.triu_indices(n + 1)
    none = won < 0
    b1, b2 = np.where(none, -1, i1s[won // 2]), np.where(none, -1, i2s[won // 2])
    return scale.astype(F32), order, b1, b2, np.where(none, 0, 1 - 2 * (won % 2))


class IQ1S(GGMLType, name="IQ1_S"):
    needs_imatrix = True

    @classmethod
    def quantize_blocks(cls, blocks: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
        assert qw is not None  # checked by quantize_async
        s = blocks.shape[0]
        xb, weight = block_weights(blocks, qw, 32)
        scale, order, b1, b2, shift = _split(xb, weight)
        dead = (np.abs(xb).max(1) < F32(1e-12)) | (b1 < 0) | (b2 < 0) | (shift == 0)
        L, scale, neg = _levels(order, b1, b2, scale)
        shift = np.where(neg, -shift, shift)
        gi, scale = _on_lattice(L.reshape(len(xb), 4, 8), xb, weight, scale, dead,
                                np.repeat((shift == 1)[:, None], 4, axis=1))
        scale = np.where(dead, F32(0), scale).astype(F32)
        shift = np.where(dead, 1, shift)
        gi = np.where(dead[:, None], 0, gi).reshape(s, 8, 4)
        scales = scale.reshape(s, 8)
        max_scale = scales.max(1)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            d = max_scale / F32(15)
            inv = np.where(d != 0, F32(1) / d, F32(0))
            ls = np.clip(nearest_int(F32(0.5) * (inv[:, None] * scales - F32(1))), 0, 7)
        ls = ls | np.where(shift.reshape(s, 8) == -1, 8, 0)
        qs = (gi & 255).astype(np.uint8).reshape(s, 32)
        qh = ((gi >> 8) << (3 * np.arange(4))).sum(-1)
        zero = max_scale == 0
        qh = np.where(zero[:, None], qh, qh | (ls << 12)).astype("<u2")
        d16 = np.where(zero, F32(0), d * F32(1.125)).astype(np.float16)
        return as_bytes(d16[:, None], qs, qh)


MASKS = np.array([0x00, 0x80, 0x08, 0x88])


def _split_halves(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, ...]:
    """IQ1_M's split of each block of 16: boundaries over the sorted values, and one shift per half of
    8 (k: 0 both +, 1 +-, 2 -+, 3 both -), from prefix sums kept per half, in the reference's order.
    Returns (scale, order, i1, i2, k)."""
    nb, n = x.shape
    order = np.argsort(x, axis=1, kind="stable")
    xs, ws = np.take_along_axis(x, order, 1), np.take_along_axis(w, order, 1)
    half = order >= n // 2
    zero = np.zeros((nb, 1), dtype=F32)
    px, pw = [], []
    for h in (False, True):
        m = half == h
        px.append(np.concatenate([zero, np.cumsum(np.where(m, ws * xs, F32(0)), axis=1, dtype=F32)], 1).T.copy())
        pw.append(np.concatenate([zero, np.cumsum(np.where(m, ws, F32(0)), axis=1, dtype=F32)], 1).T.copy())
    scale, b1, b2, bk = _scan_halves(px, pw, np.abs(x).max(1), n)
    return scale, order, b1, b2, bk


def _scan_halves(px: list, pw: list, scale: np.ndarray, n: int) -> tuple[np.ndarray, ...]:
    """The reference's running best over (i1, i2, k), from the per-half prefix sums px, pw (n + 1, B).
    Terms that depend on i1 only, or on i2 only, are computed once, each still the same float32
    operations in the same order; a candidate's (i1, i2, k) is kept as one number until the end."""
    nb = px[0].shape[1]
    sol = []  # per shift (+, -): the level value x2 and the steps cp1, cp2 of the level squares
    for xx in (X_P, X_M):
        sol.append((xx[2], xx[0] * xx[0] - xx[1] * xx[1], xx[1] * xx[1] - xx[2] * xx[2]))
    tx = [[px[h][n] * v for v, _, _ in sol] for h in (0, 1)]  # total x times x2, per half and shift
    t2 = [[pw[h][n] * v * v for v, _, _ in sol] for h in (0, 1)]
    by_i2 = [[pw[h] * c2 for _, _, c2 in sol] for h in (0, 1)]  # pw[i2] * cp2
    best = np.full(nb, -np.finfo(np.float32).max, dtype=F32)
    won = np.full(nb, -1, dtype=np.int64)  # 4 (pair number) + k
    pair = 0
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for i1 in range(n + 1):
            by_i1 = [[t2[h][s] + pw[h][i1] * sol[s][1] for s in (0, 1)] for h in (0, 1)]
            for i2 in range(i1, n + 1):
                qx, q2 = [], []
                for h in (0, 1):
                    sx = px[h][i1] + px[h][i2]
                    qx.append([tx[h][s] - sx for s in (0, 1)])
                    q2.append([by_i1[h][s] + by_i2[h][s][i2] for s in (0, 1)])
                for k, (u, v) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):  # k: ++, +-, -+, --
                    _update(qx[0][u] + qx[1][v], q2[0][u] + q2[1][v], best, scale, won, 4 * pair + k)
                pair += 1
    i1, i2 = np.triu_indices(n + 1)
    none = won < 0
    b1, b2 = np.where(none, -1, i1[won // 4]), np.where(none, -1, i2[won // 4])
    return scale.astype(F32), b1, b2, np.where(none, -1, won % 4)


def _update(sumqx: np.ndarray, sumq2: np.ndarray, best: np.ndarray, scale: np.ndarray, won: np.ndarray,
            cand: int) -> None:
    """One candidate of the running best, in place: where sumq2 > 0 and sumqx^2 > best sumq2, scale =
    sumqx / sumq2, best = scale sumqx, and the candidate's number is kept."""
    better = sumqx * sumqx > best * sumq2
    better &= sumq2 > 0
    hit = np.flatnonzero(better)  # few blocks improve at any one candidate
    if len(hit):
        qx = sumqx[hit]
        ratio = qx / sumq2[hit]
        scale[hit] = ratio
        best[hit] = ratio * qx
        won[hit] = cand


def _group_values(k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Whether each of a block's two groups of 8 uses the + shift, from IQ1_M's shift code."""
    return k < 2, k % 2 == 0


class IQ1M(GGMLType, name="IQ1_M"):
    """1.75 bits: IQ1_S's lattice per 8 values with a shift per 8, a 3-bit scale per 16, and the
    super-block scale refitted over all 256 and spread over the scale bytes' top nibbles (times 1.1125)."""

    @classmethod
    def quantize_blocks(cls, blocks: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
        xb, weight = block_weights(blocks, qw, 16)
        scale, order, b1, b2, bk = _split_halves(xb, weight)
        dead = (np.abs(xb).max(1) < F32(1e-7)) | (b1 < 0) | (b2 < 0) | (bk < 0)
        L, scale, neg = _levels(order, b1, b2, scale)
        bk = np.where(neg, 3 - bk, bk)
        gi, scale = _on_lattice(L.reshape(len(xb), 2, 8), xb, weight, scale, dead,
                                np.stack(_group_values(bk), axis=1))
        scale = np.where(dead, F32(0), scale).astype(F32)
        bk = np.where(dead, 0, bk)
        gi = np.where(dead[:, None], 0, gi)
        plus = np.stack(_group_values(bk), axis=1)
        return _encode_m(blocks, weight, scale, gi, bk, plus)


def _levels(order: np.ndarray, b1: np.ndarray, b2: np.ndarray,
            scale: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Levels 0 / 1 / 2 from the split of each block's sorted values at (b1, b2), turned around (and the
    scale made positive) where the scale came out negative. Returns (levels (B, n), scale, turned)."""
    pos = np.arange(order.shape[1])[None, :]
    L_sorted = np.where(pos < b1[:, None], 0, np.where(pos < b2[:, None], 1, 2))
    L = np.empty_like(L_sorted)
    np.put_along_axis(L, order, L_sorted, 1)
    neg = scale < 0
    return np.where(neg[:, None], 2 - L, L), np.where(neg, -scale, scale).astype(F32), neg


def _on_lattice(L: np.ndarray, xb: np.ndarray, weight: np.ndarray, scale: np.ndarray, dead: np.ndarray,
                plus: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each group of 8 (L (B, G, 8)) onto the lattice: its own point, or the listed neighbour nearest
    under its shift (``plus`` (B, G)); a block that had a group off the lattice refits its scale to the
    points taken. Returns (grid indices (B, G), scale)."""
    tp, tm = lattice("IQ1_S", 3, X_P), lattice("IQ1_S", 3, X_M)
    nb, g = L.shape[:2]
    codes = codes_of(L, tp)
    gi = tp[1][codes]
    off = (gi < 0) & ~dead[:, None]
    xg, wg = xb.reshape(nb, g, 8), weight.reshape(nb, g, 8)
    for tables, sgn in ((tp, True), (tm, False)):
        b, k = np.nonzero(off & (plus == sgn))
        if len(b):
            gi[b, k] = nearest_neighbour(codes[b, k], xg[b, k], wg[b, k], scale[b], tables)
    redo = np.nonzero(off.any(1))[0]
    if len(redo):
        q = _shifted_values(tp, gi[redo], plus[redo]).reshape(len(redo), -1)
        w, x, qt = (np.ascontiguousarray(a.T) for a in (weight[redo], xb[redo], q))
        sumqx, sumq2 = seqdot(w, qt, x), seqdot(w, qt, qt)
        scale = scale.copy()
        scale[redo] = np.where((sumqx > 0) & (sumq2 > 0), sumqx / sumq2, scale[redo])
    return gi, scale


def _encode_m(blocks: np.ndarray, weight: np.ndarray, scale: np.ndarray, gi: np.ndarray, bk: np.ndarray,
              plus: np.ndarray) -> np.ndarray:
    """IQ1_M's bytes: grid indices, their high bits with the shift bits, 3-bit scales, and the
    super-block scale refitted over all 256 values, its float16 spread over the scales' top nibbles."""
    s = blocks.shape[0]
    tp = lattice("IQ1_S", 3, X_P)
    scales = scale.reshape(s, 16)
    max_scale = scales.max(1)
    zero = max_scale == 0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        d = max_scale / F32(15)
        inv = np.where(d != 0, F32(1) / d, F32(0))
        ls = np.clip(nearest_int(F32(0.5) * (inv[:, None] * scales - F32(1))), 0, 7)  # (s, 16)
        # the super-block scale refitted over all 256 values at the 3-bit block scales
        q = _shifted_values(tp, gi, plus).reshape(s, 256) * np.repeat((2 * ls + 1).astype(F32), 16, axis=1)
        w, x, qt = (np.ascontiguousarray(a.T) for a in (weight.reshape(s, 256), blocks, q))
        sumqx, sumq2 = seqdot(w, qt, x), seqdot(w, qt, qt)
        d = np.where(sumq2 > 0, sumqx / sumq2, d)
    gi = gi.reshape(s, 16, 2)
    qs = (gi & 255).astype(np.uint8).reshape(s, 32)
    qh = ((gi[..., 0] >> 8) | ((gi[..., 1] >> 8) << 4) | MASKS[bk.reshape(s, 16)]).astype(np.uint8)
    sc = (ls.reshape(s, 4, 4) << (3 * np.arange(4))).sum(-1).astype(np.uint16)  # (s, 4)
    d16 = (d * F32(1.1125)).astype(np.float16).view(np.uint16).astype(np.uint16)
    top = np.stack([(d16 & 0x000F) << 12, (d16 & 0x00F0) << 8, (d16 & 0x0F00) << 4, d16 & 0xF000], axis=1)
    sc = np.where(zero[:, None], 0, sc | top).astype("<u2")
    qh = np.where(zero[:, None], qh & 0x77, qh)  # no scale at all: the shift bits are never set
    return as_bytes(qs, qh, sc)


def _shifted_values(tables: tuple, gi: np.ndarray, plus: np.ndarray) -> np.ndarray:
    """The shifted level values (-1, 0, 1 +- 1/8) of grid points ``gi`` (..., G) under each group's shift."""
    levels = ((tables[0][gi] - 1) / 2).astype(np.int64)  # (..., G, 8)
    return np.where(plus[..., None], np.array(X_P, F32)[levels], np.array(X_M, F32)[levels])
