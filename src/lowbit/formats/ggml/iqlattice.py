"""The lattice search shared by the i-quants (IQ1_*, IQ2_*, IQ3_*): each group of 4 or 8 values goes to
its nearest levels; a group whose levels are no lattice point takes, of the points listed as that code's
neighbours, the one of least weighted squared error at the block's scale.

The tables are llama.cpp's ``iq2xs_init_impl`` / ``iq3xs_init_impl`` neighbour lists, rebuilt here from
the lattice that gguf-py, llama.cpp's own package, decodes with (not copied code). The searches run on
all off-lattice groups of a call at once: groups are sorted by the length of their list, and each
length bucket is evaluated as one (candidates, groups) array, with the groups along the contiguous
axis so every float32 operation runs over long rows. The error of every candidate is summed in the
reference's order (coordinate after coordinate, each term ``(w * diff) * diff``), and ties go to the
first listed candidate, so the choice is the reference's bit for bit.
"""

from __future__ import annotations

import functools

import gguf
import numpy as np

from lowbit.formats.ggml.kcommon import F32, nearest_int

PREFIX = 4  # IQ2 / IQ1 (3 levels): the errors of the first 4 coordinates, all 81 sums, once per group
PREFIX_MIN_K = 16  # ... for lists at least this long
BUCKETS = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 20, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024, 2048])


@functools.lru_cache(maxsize=4)
def lattice(name: str, nwant: int, values: tuple[float, ...] | None = None) -> tuple:
    """(grid (N, dims) float of 2l + 1, code -> grid index or -1, the neighbour tables, kmax, bits per
    level, grid levels (N, dims) uint8, the value of each level (kmax,)). A code packs the levels l of a group, ``bits`` each; an
    off-lattice code lists every point within its ``nwant`` nearest squared distances, nearest first,
    then by index (the reference's qsort order). ``values``: what each level stands for in the
    neighbour search (default 2l + 1; IQ1's shifted -1, 0, 1).

    The neighbour tables are (bucket of each code, its row in that bucket, per bucket (candidates (K, R),
    their values (dims, K, R), their first PREFIX levels as one base-kmax number (K, R))): the lists of
    one length bucket, padded to the bucket's width with their last entry (a repeat never wins the
    strict first minimum), one list per column."""
    cls = getattr(gguf.quants, name)
    cls.init_grid()
    g = np.asarray(cls.grid, dtype=np.float32).reshape(-1, cls.grid_shape[-1])
    levels = np.searchsorted(np.asarray(cls.grid_map, dtype=np.float32), g).astype(np.int64)  # 0, 1, 2..
    grid = 2 * levels + 1
    dims, kmax = g.shape[1], len(cls.grid_map)  # IQ2: 8 values of 3 levels; IQ3: 4 values of 8 levels
    bits = 2 if kmax <= 4 else 3
    codes = (levels << (bits * np.arange(dims))).sum(1)
    kmap = np.full(1 << (bits * dims), -1, dtype=np.int32)
    kmap[codes] = np.arange(len(grid))
    # only codes of levels 0..kmax-1 can be asked for (the search clamps to them)
    reach = np.array(np.meshgrid(*[np.arange(kmax)] * dims, indexing="ij")).reshape(dims, -1).T
    rcodes = (reach << (bits * np.arange(dims))).sum(1)
    off = kmap[rcodes] < 0
    pos = 2 * reach[off] + 1
    d2 = ((grid[None, :, :] - pos[:, None, :]) ** 2).sum(-1)  # (M, N) ints
    order = np.argsort(d2, axis=1, kind="stable")  # by distance, then index
    sd = np.take_along_axis(d2, order, 1)
    distinct = np.sort(d2, axis=1)
    # the nwant-th distinct distance of each row
    first = np.ones_like(distinct, dtype=bool)
    first[:, 1:] = distinct[:, 1:] != distinct[:, :-1]
    rank = np.cumsum(first, axis=1)
    limit = np.where(rank == nwant, distinct, np.iinfo(np.int64).max).min(1)
    n = (sd <= limit[:, None]).sum(1)
    bucket = np.full(len(kmap), -1, dtype=np.int8)
    row = np.zeros(len(kmap), dtype=np.int64)
    b_of = np.searchsorted(BUCKETS, n)
    tabs = []
    lv = (2 * np.arange(kmax) + 1).astype(np.float32) if values is None else np.asarray(values, dtype=np.float32)
    qvals = lv[levels]
    for kb in range(len(BUCKETS)):
        sel = np.nonzero(b_of == kb)[0]
        width = int(n[sel].max()) if len(sel) else 0
        cand = np.take_along_axis(order[sel], np.minimum(np.arange(width), n[sel][:, None] - 1), 1)
        bucket[rcodes[off][sel]] = kb
        row[rcodes[off][sel]] = np.arange(len(sel))
        # the first PREFIX levels of each candidate as one number, l0 most significant (see _prefix_errors)
        head = (levels[cand.T][..., :PREFIX] * kmax ** np.arange(PREFIX - 1, -1, -1)).sum(-1)
        tabs.append((np.ascontiguousarray(cand.T), np.ascontiguousarray(qvals[cand].transpose(2, 1, 0)), head))
    return grid.astype(np.float32), kmap, (bucket, row, tabs), kmax, bits, levels.astype(np.uint8), lv


def codes_of(L: np.ndarray, tables: tuple) -> np.ndarray:
    """Levels (..., dims) -> the lattice's code of each group (sum of l_i << bits i), int32. uint8 levels
    of 8 x 2 bits (IQ2, IQ1) or 4 x 3 bits (IQ3) are read as one word per group, whose bytes are shifted
    together in three (two) steps; other levels go by an exact small-integer product."""
    bits, dims = tables[4], L.shape[-1]
    if L.dtype == np.uint8 and L.flags.c_contiguous and (bits, dims) in ((2, 8), (3, 4)):
        if dims == 8:
            t = L.view(np.uint64)[..., 0]
            t = (t | (t >> np.uint64(6))) & np.uint64(0x000F000F000F000F)  # 4 bits per 16
            t = (t | (t >> np.uint64(12))) & np.uint64(0x000000FF000000FF)  # 8 bits per 32
            return ((t | (t >> np.uint64(24))) & np.uint64(0xFFFF)).astype(np.int32)
        t = L.view(np.uint32)[..., 0]
        t = (t | (t >> np.uint32(5))) & np.uint32(0x003F003F)  # 6 bits per 16
        return ((t | (t >> np.uint32(10))) & np.uint32(0xFFF)).astype(np.int32)
    weights = (1 << (bits * np.arange(dims))).astype(np.float32)
    return (L.astype(np.float32) @ weights).astype(np.int32)  # codes < 2^16: exact in float32


def to_lattice(xval: np.ndarray, waux: np.ndarray, scale: np.ndarray, inv: np.ndarray, tables: tuple,
               cols: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Groups (B, G, dims) -> (levels (B, G, dims) uint8, grid index (B, G), whether the nearest levels
    were on the lattice (B, G)): the nearest levels at ``inv`` (1 / scale, per block), clamped to
    0..kmax-1, or, off the lattice, the listed neighbour with the least weighted error at ``scale``.
    ``cols``: xval and waux as (dims, B * G) columns, when the caller has them already."""
    kmap, kmax, glev = tables[1], tables[3], tables[5]
    g, dims = xval.shape[1:]
    L = nearest_levels(xval, inv[:, None, None], kmax)
    codes = codes_of(L, tables)
    gi = kmap[codes]
    on_grid = gi >= 0
    miss = np.flatnonzero(~on_grid)
    if len(miss):
        xt, wt = cols if cols is not None else group_columns(xval, waux)
        order, best = _neighbours(codes.reshape(-1)[miss], miss, xt, wt, scale[miss // g], tables)
        miss = miss[order]
        gi.reshape(-1)[miss] = best
        packed = np.uint32 if dims == 4 else np.uint64  # a group's levels as one word
        L.view(packed).reshape(-1)[miss] = glev.view(packed).reshape(-1)[best]
    return L, gi, on_grid


def nearest_levels(xval: np.ndarray, inv: np.ndarray, kmax: int) -> np.ndarray:
    """The reference's level of each value: nearest_int(0.5 (inv x - 1)) clamped to 0..kmax-1, as uint8.
    With three levels, two comparisons give it: t = inv x - 1 above 1 (t / 2 = 1/2, a tie, rounds to
    the even 0) and from 3 (3/2 rounds to 2)."""
    with np.errstate(invalid="ignore", over="ignore"):
        t = inv * xval
        t -= F32(1)
        if kmax == 3:
            L = np.greater(t, F32(1)).view(np.uint8)
            L += np.greater_equal(t, F32(3)).view(np.uint8)
            return L
        t *= F32(0.5)
        return np.clip(nearest_int(t), 0, kmax - 1).astype(np.uint8)


def group_columns(xval: np.ndarray, waux: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Groups (..., dims) of values and weights as (dims, n) columns, coordinate by coordinate."""
    dims = xval.shape[-1]
    return np.ascontiguousarray(xval.reshape(-1, dims).T), np.ascontiguousarray(waux.reshape(-1, dims).T)


def nearest_neighbour(codes: np.ndarray, xval: np.ndarray, waux: np.ndarray, scale: np.ndarray,
                      tables: tuple) -> np.ndarray:
    """For groups off the lattice (codes (M,), xval / waux (M, dims), scale (M,)): the grid index of the
    listed neighbour of least weighted error (see :func:`_neighbours`), in the groups' order."""
    xt, wt = group_columns(xval, waux)
    order, best = _neighbours(codes, np.arange(len(codes)), xt, wt, scale, tables)
    out = np.empty_like(best)
    out[order] = best
    return out


def _neighbours(codes: np.ndarray, cols: np.ndarray, xt: np.ndarray, wt: np.ndarray, scale: np.ndarray,
                tables: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Off-lattice groups (codes (M,), their columns in xt / wt (dims, n), scale (M,)) -> (an order of
    the groups, the grid index of each in that order): the listed neighbour of least sum w (scale q -
    x)^2, added coordinate after coordinate as the reference does, the first of equal ones (its strict
    <). The groups are sorted by the length bucket of their list; each bucket's (K, m) errors come from
    its padded tables, read column by column."""
    bucket, row, tabs = tables[2]
    bk = bucket[codes]
    order = np.argsort(bk, kind="stable")  # a radix sort of small integers
    ends = np.cumsum(np.bincount(bk, minlength=len(tabs)))
    rows = row[codes[order]]
    cols = cols[order]
    x, w, s = np.take(xt, cols, axis=1), np.take(wt, cols, axis=1), scale[order]
    best = np.empty(len(codes), dtype=np.int32)
    start = 0
    for kb in np.flatnonzero(np.diff(ends, prepend=0)):
        a, b = start, ends[kb]
        start = b
        cands, qs, head = tabs[kb]
        r = rows[a:b]
        if cands.shape[0] == 1:  # a single neighbour: nothing to compare
            best[a:b] = cands[0, r]
            continue
        d2, first = None, 0
        if len(tables[6]) == 3 and qs.shape[0] == 8 and cands.shape[0] >= PREFIX_MIN_K:
            d2, first = _prefix_errors(head, r, x[:, a:b], w[:, a:b], s[a:b], tables[6]), PREFIX
        pos = _bucket_argmin(np.take(qs[first:], r, axis=2), x[first:, a:b], w[first:, a:b], s[a:b], d2)
        best[a:b] = np.take(cands.reshape(-1), pos * cands.shape[1] + r)
    return order, best


def _prefix_errors(head: np.ndarray, r: np.ndarray, xt: np.ndarray, wt: np.ndarray, s: np.ndarray,
                   lv: np.ndarray) -> np.ndarray:
    """The running sum of the first PREFIX terms (w_i * diff_i) * diff_i of every candidate (K, m), from
    a table per group of all kmax^PREFIX sums: each coordinate's term at each level is computed once
    per group, and the sums are built coordinate after coordinate (the reference's order), so each
    table entry is bit for bit the candidate's partial sum. head (K, R): a candidate's entry."""
    m = len(s)
    table = None
    for i in range(PREFIX):
        diff = lv[:, None] * s  # (levels, m)
        diff -= xt[i]
        term = np.multiply(wt[i], diff)
        term *= diff
        table = term if table is None else (table[:, None, :] + term[None, :, :]).reshape(-1, m)
    return np.take(table.reshape(-1), np.take(head, r, axis=1) * m + np.arange(m))


def _bucket_argmin(q: np.ndarray, xt: np.ndarray, wt: np.ndarray, s: np.ndarray,
                   d2: np.ndarray | None = None) -> np.ndarray:
    """The first candidate of least d2 = sum_i (w_i * diff_i) * diff_i, diff_i = s q_i - x_i, summed in
    order of i: q (dims, K, m) candidate values (overwritten), xt / wt (dims, m), s (m,); ``d2``: the
    sums of the coordinates before these, if any. Returns (m,) positions.

    All coordinates go at once, a few calls per bucket; numpy reduces the outer axis one row after
    another (see kcommon.seqsum), so the sum has the reference's order."""
    diff = q
    diff *= s
    diff -= xt[:, None, :]
    terms = np.multiply(wt[:, None, :], diff)
    terms *= diff
    if d2 is not None:
        terms[0] += d2  # (prefix + t_0) + t_1 + ...
    return first_min(np.add.reduce(terms.reshape(len(terms), -1), axis=0).reshape(terms.shape[1:]))


def first_min(d2: np.ndarray) -> np.ndarray:
    """(K, m) -> the first position of the least value of each column, as the reference's strict ``<``
    scan (NaN never wins; a column of NaN gives 0)."""
    low = np.fmin.reduce(d2, axis=0)
    k = len(d2)
    ks = np.arange(k, dtype=np.int8 if k < 127 else np.int16)[:, None]
    pos = np.where(d2 == low, ks, ks.dtype.type(k)).min(0)
    pos[pos == k] = 0
    return pos.astype(np.intp)
