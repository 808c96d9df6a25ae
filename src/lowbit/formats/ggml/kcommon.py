"""The scale searches shared by llama.cpp's k-quants, vectorised over blocks, in float32.

Written from the algorithms of ggml-quants.c (``make_qkx2_quants``, ``make_qx_quants``,
``make_q3_quants``), not copied. To give the very same bytes, every float operation runs in float32
in the reference's order: products before sums, and sums accumulated one element at a time
(:func:`seqsum`), never pairwise. ``nearest_int`` is the reference's bit trick, so even inf/NaN
intermediates (e.g. subnormal blocks) round the same way.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32
GROUP_MAX_EPS = F32(1e-15)
_MAGIC = F32(12582912.0)  # 1.5 * 2^23: adding it rounds to an integer, half to even


def nearest_int(f: np.ndarray) -> np.ndarray:
    """round-half-to-even of a float32 array as int32, exactly like ggml's ``nearest_int``."""
    with np.errstate(all="ignore"):
        v = (np.asarray(f, dtype=F32) + _MAGIC).view(np.int32)
    return (v & 0x007FFFFF) - 0x00400000


def seqsum(a: np.ndarray) -> np.ndarray:
    """Sum over the first axis in float32, first to last (C's ``s += a[i]`` order). The searches keep
    their blocks along the last axis, (n, B), so each step adds one contiguous row.

    numpy reduces the outer axis of a C-contiguous array exactly so, one row after another (pairwise
    summation is used only along the contiguous axis), so one ``add.reduce`` call gives the same bits
    as the explicit loop; tests/unit/test_ggml_types.py checks that on cancelling sums."""
    a = np.ascontiguousarray(a, dtype=F32)
    return np.add.reduce(a, axis=0)


def seqdot(*ops: np.ndarray) -> np.ndarray:
    """``seqsum(a * b)`` or ``seqsum((a * b) * c)`` of (n, B) float32 arrays in one pass, with no
    temporary: numpy's einsum multiplies left to right and accumulates row after row along the outer
    axis, so the bits equal the separate product and :func:`seqsum` (checked in the tests)."""
    return np.einsum("ij,ij->j" if len(ops) == 2 else "ij,ij,ij->j", *ops)


def signed_absmax(x: np.ndarray, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Along ``axis``: max |x| and the value holding it (the first one on ties, as the reference's
    strict ``amax < fabsf(v)`` scan). From max and min, which numpy reduces fast along the outer axis;
    only where +a and -a both occur is the first one looked up."""
    mx, mn = x.max(axis), x.min(axis)
    val = np.where(-mn > mx, mn, mx)
    tie = np.flatnonzero((-mn == mx) & (mx != 0))
    if len(tie):
        xa = np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis])
        flat = val.reshape(-1)
        flat[tie] = xa[tie, np.abs(xa[tie]).argmax(1)]
    return np.abs(val), val


def _t(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.T)


def make_qkx2_quants(x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int,
                     use_mad: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric levels 0..nmax with a min, searched over ``nstep + 1`` scale candidates to minimise
    the weighted (squared or absolute) error. x, w: (B, n). Returns scale (B,), -min (B,), L (B, n) int32.

    The hot loop works in place on (n, B) buffers, and keeps x - min, which changes only in the
    blocks a candidate improved. The levels of the best candidate are not kept per candidate: its
    grid (inverse scale, min) is, and the levels are rebuilt from it at the end with the same float
    operations, in the caller's layout."""
    rows = x
    x, w = _t(x), _t(w)  # (n, B)
    lf = np.empty_like(x)
    t = np.empty_like(x)
    with np.errstate(all="ignore"):
        mn = np.minimum(x.min(0), F32(0))
        mx = x.max(0)
        sum_w = seqsum(w)
        sum_x = seqsum(np.multiply(w, x, out=t))
        flat = mx == mn
        xm = x - mn

        def round_clip(v: np.ndarray, iscale: np.ndarray) -> np.ndarray:
            """Levels as float32 (exact small integers). With a finite scale np.rint is the reference's
            round-half-to-even; an infinite one (a subnormal block) needs its exact bit trick."""
            if np.isfinite(iscale).all() or np.isfinite(iscale[~flat]).all():
                np.rint(v, out=v)
            else:
                v[...] = nearest_int(v)
            return np.clip(v, 0, nmax, out=v)

        def err(scale: np.ndarray, lv: np.ndarray, m: np.ndarray) -> np.ndarray:
            d = np.multiply(lv, scale, out=t)
            d += m
            d -= x
            if use_mad:
                return seqdot(np.abs(d, out=d), w)
            return seqdot(d, d, w)  # (d * d) * w, the reference's w * (d * d)

        iscale = F32(nmax) / (mx - mn)
        scale = F32(1) / iscale
        grid_is, grid_mn = iscale, mn  # the grid the best levels come from
        best = err(scale, round_clip(np.multiply(xm, iscale, out=lf), iscale), mn)
        for step in range(nstep + 1):  # the current best min moves the grid of later candidates
            iscale = (F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / (mx - mn)
            round_clip(np.multiply(xm, iscale, out=lf), iscale)
            sum_l, sum_l2, sum_xl = seqdot(w, lf), seqdot(w, lf, lf), seqdot(w, lf, x)
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            pos = this_min > 0
            this_min = np.where(pos, F32(0), this_min)
            this_scale = np.where(pos, sum_xl / sum_l2, this_scale)
            cur = err(this_scale, lf, this_min)
            better = (D > 0) & (cur < best)
            changed = np.nonzero(better)[0]
            if len(changed):
                grid_is = np.where(better, iscale, grid_is)
                grid_mn = np.where(better, mn, grid_mn)
                best = np.where(better, cur, best)
                scale = np.where(better, this_scale, scale)
                mn = np.where(better, this_min, mn)
                xm[:, changed] = x[:, changed] - mn[changed]
        v = np.subtract(rows, grid_mn[:, None])
        v *= grid_is[:, None]
        L = round_clip(v, grid_is)
        L[np.isnan(L)] = 0
        L[flat] = 0
        scale = np.where(flat, F32(0), scale)
    return scale.astype(F32), (-mn).astype(F32), L.astype(np.int32)


def make_qx_quants(x: np.ndarray, nmax: int, rmse_type: int, qw: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric levels -nmax..nmax-1 around the signed absmax, refined over 18 nearby scales to
    minimise the weighted squared error (weights x^2 for ``rmse_type`` 1, or ``qw``).
    x: (B, n). Returns scale (B,), L (B, n) int32 in 0..2*nmax-1.

    Levels are kept as float32 (exact small integers) and rounded with np.rint: in a block that is
    not all-zero |iscale * x| <= nmax + 1, where rint is the reference's round-half-to-even. Only the
    best candidate's inverse scale is kept; its levels are rebuilt at the end."""
    assert rmse_type == 1 or qw is not None, "only the weightings llama.cpp's k-quants use"
    x = _t(x)
    lf = np.empty_like(x)
    with np.errstate(all="ignore"):
        amax, mx = signed_absmax(x, 0)
        zero = amax < GROUP_MAX_EPS
        w = _t(qw) if qw is not None else x * x
        wx = w * x

        def levels(iscale: np.ndarray) -> np.ndarray:
            np.multiply(x, iscale, out=lf)
            np.rint(lf, out=lf)
            return np.clip(lf, -nmax, nmax - 1, out=lf)

        def sums(lv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return seqdot(wx, lv), seqdot(w, lv, lv)

        best_is = F32(-nmax) / mx
        sumlx, suml2 = sums(levels(best_is))
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0))
        best = scale * sumlx
        for step in range(-9, 10):
            if step == 0:
                continue
            iscale = -(F32(nmax) + F32(0.1) * F32(step)) / mx
            sumlx, suml2 = sums(levels(iscale))
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            best_is = np.where(better, iscale, best_is)
            scale = np.where(better, sumlx / suml2, scale)
            best = np.where(better, scale * sumlx, best)
        L = levels(best_is) + F32(nmax)
        L = np.where(zero, 0, L)
        scale = np.where(zero, F32(0), scale)
    return scale.astype(F32), _t(L.astype(np.int32))


def _sweeps(x: np.ndarray, w: np.ndarray, L: np.ndarray, lo: int | None, hi: int, wrap: bool,
            start: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """Up to 5 sweeps moving one value at a time while the weighted fit improves (make_q3_quants and
    make_qp_quants). x, w, L: (n, B). As in the reference, a block stops after a sweep that changes
    nothing (its state is then a fixed point): later sweeps run only on the blocks still moving.
    ``start``: the levels the starting sums are taken from, where they differ from ``L`` (make_qp_quants
    sums the int levels but stores them as bytes, so a negative one is 255 from then on)."""
    wx = w * x
    lf = (L if start is None else start).astype(F32)
    sumlx, suml2 = seqdot(wx, lf), seqdot(w, lf, lf)
    L = L.copy()
    cols = np.arange(x.shape[1])
    xs, ws, wxs, Ls, slx_a, sl2_a = x, w, wx, L.copy(), sumlx.copy(), suml2.copy()
    for _ in range(5):
        moved = np.zeros(len(cols), dtype=bool)
        for i in range(x.shape[0]):
            li = Ls[i].astype(F32)
            slx = slx_a - wxs[i] * li
            sl2 = sl2_a - ws[i] * li * li
            new = nearest_int(xs[i] * sl2 / slx)
            new = np.clip(new, lo, hi, out=new) if lo is not None else np.minimum(new, hi, out=new)
            nf = new.astype(F32)  # the int level: what the sums take, and what is compared to the stored byte
            slx2 = slx + wxs[i] * nf
            sl22 = sl2 + ws[i] * nf * nf
            if wrap:  # make_qp_quants: the test on the old sl2; make_q3_quants: on the new one
                ok = (slx > 0) & (sl2 > 0) & (new != Ls[i]) & (slx2 * slx2 * sl2_a > slx_a * slx_a * sl22)
            else:
                ok = (slx > 0) & (new != Ls[i]) & (sl22 > 0) & (slx2 * slx2 * sl2_a > slx_a * slx_a * sl22)
            np.copyto(Ls[i], new & 0xFF if wrap else new, where=ok)
            np.copyto(slx_a, slx2, where=ok)
            np.copyto(sl2_a, sl22, where=ok)
            moved |= ok
        if moved.all():
            continue
        done = np.nonzero(~moved)[0]  # settled: store them and drop them from the active set
        L[:, cols[done]], sumlx[cols[done]], suml2[cols[done]] = Ls[:, done], slx_a[done], sl2_a[done]
        keep = np.nonzero(moved)[0]
        cols = cols[keep]
        xs, ws, wxs, Ls, slx_a, sl2_a = xs[:, keep], ws[:, keep], wxs[:, keep], Ls[:, keep], slx_a[keep], sl2_a[keep]
        if len(cols) == 0:
            break
    L[:, cols], sumlx[cols], suml2[cols] = Ls, slx_a, sl2_a
    return L, sumlx, suml2


def make_q3_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Q3_K's symmetric search: levels -nmax..nmax-1, then up to 5 sweeps that move one value at a
    time while the x^2-weighted fit improves. x: (B, n). Returns scale (B,), L (B, n) int32 in 0..2*nmax-1."""
    x = _t(x)
    with np.errstate(all="ignore"):
        amax, mx = signed_absmax(x, 0)
        zero = amax < GROUP_MAX_EPS
        iscale = F32(-nmax) / mx
        L = np.clip(nearest_int(iscale * x), -nmax, nmax - 1)
        L, sumlx, suml2 = _sweeps(x, x * x, L, -nmax, nmax - 1, wrap=False)
        scale = np.where(suml2 > 0, sumlx / suml2, F32(0))
        L = np.where(zero, 0, L + nmax)
        scale = np.where(zero, F32(0), scale)
    return scale.astype(F32), _t(L.astype(np.int32))


def make_qp_quants(x: np.ndarray, nmax: int, qw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative levels 0..nmax for non-negative x (a super-block's scales or mins), the scale
    searched over 9 candidates then refined by one-value-at-a-time sweeps, weighted by ``qw``.
    x, qw: (B, n). Returns scale (B,), L (B, n) int32 (stored as uint8 by the reference, so wrapped)."""
    x, w = _t(x), _t(qw)
    with np.errstate(all="ignore"):
        mx = np.maximum(x.max(0), F32(0))
        zero = mx < GROUP_MAX_EPS

        def mse(scale: np.ndarray, lv: np.ndarray) -> np.ndarray:
            d = x - scale * lv.astype(F32)
            return seqsum(w * d * d)

        iscale = F32(nmax) / mx
        best = mse(F32(1) / iscale, nearest_int(iscale * x) & 0xFF)
        for step in range(-4, 5):
            if step == 0:
                continue
            cand = (F32(0.1) * F32(step) + F32(nmax)) / mx
            m = mse(F32(1) / cand, np.minimum(nmax, nearest_int(cand * x)))
            better = m < best
            best = np.where(better, m, best)
            iscale = np.where(better, cand, iscale)
        lv = np.minimum(nmax, nearest_int(iscale * x))
        L, sumlx, suml2 = _sweeps(x, w, lv & 0xFF, None, nmax, wrap=True, start=lv)
        scale = np.where(suml2 > 0, sumlx / suml2, F32(0))
        L = np.where(zero, 0, L)
        scale = np.where(zero, F32(0), scale)
    return scale.astype(F32), _t(L.astype(np.int32))


def imatrix_weights(x: np.ndarray, qw: np.ndarray, sigma2: np.ndarray) -> np.ndarray:
    """The imatrix paths' per-value weights: qw * sqrt(sigma2 + x^2). x, qw: (B, n); sigma2 (B,)."""
    return qw * np.sqrt(sigma2[:, None] + x * x)


def pack_scale_min_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """8 six-bit scales and mins (S, 8) -> the 12 bytes of Q4_K / Q5_K."""
    out = np.zeros((ls.shape[0], 12), dtype=np.uint8)
    ls, lm = ls.astype(np.uint8), lm.astype(np.uint8)
    out[:, 0:4] = ls[:, 0:4]
    out[:, 4:8] = lm[:, 0:4]
    out[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    out[:, 0:4] |= (ls[:, 4:8] >> 4) << 6
    out[:, 4:8] |= (lm[:, 4:8] >> 4) << 6
    return out


def pack_2bit(L: np.ndarray) -> np.ndarray:
    """(S, 256) values 0..3 -> (S, 64) bytes: byte j/4 + l of each 128 holds L[j+l], L[j+l+32], +64, +96."""
    q = L.astype(np.uint8).reshape(-1, 2, 4, 32)
    return (q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)).reshape(-1, 64)


def as_bytes(*parts: np.ndarray) -> np.ndarray:
    """Concatenate per-block fields (each (S, k), any dtype) into (S, type_size) uint8."""
    return np.concatenate([np.ascontiguousarray(p).view(np.uint8).reshape(p.shape[0], -1) for p in parts], axis=1)
