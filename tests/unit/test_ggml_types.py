"""Every GGML type against llama.cpp's own bytes (golden fixtures made by libggml, see
tests/fixtures/ggml/make_fixtures.py), block by block, edge cases included."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import gguf
import numpy as np
import pytest

from lowbit.errors import InputError
from lowbit.formats.ggml import GGML_TYPES

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ggml"
PLAIN = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
         "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_M"]
NEEDS_IMATRIX = ["IQ2_XXS", "IQ2_XS", "IQ1_S"]  # llama.cpp refuses these without one
TYPES = PLAIN + NEEDS_IMATRIX


def assert_same_blocks(got: np.ndarray, want: np.ndarray, qtype: str, what: str) -> None:
    """Equal bytes, or a failure that says how many blocks differ and where the first one is."""
    size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]][1]
    assert got.shape == want.shape, f"{what} {qtype}: shape {got.shape} != {want.shape}"
    g, w = got.reshape(-1, size), want.reshape(-1, size)
    bad = np.flatnonzero((g != w).any(1))
    assert bad.size == 0, (f"{what} {qtype}: {bad.size} of {len(g)} blocks differ from llama.cpp "
                           f"(first: block {bad[0]}, lowbit {g[bad[0]].tobytes().hex()[:64]}... "
                           f"llama.cpp {w[bad[0]].tobytes().hex()[:64]}...)")


def test_one_call_sums_run_in_the_reference_order() -> None:
    """seqsum and seqdot use numpy's outer-axis reduce and einsum; they must equal C's left-to-right
    loop bit for bit (a pairwise sum or a fused multiply-add would not), on sums that cancel."""
    from lowbit.formats.ggml.kcommon import seqdot, seqsum

    rng = np.random.default_rng(7)
    a, b, c = ((rng.standard_normal((256, 4096)) * 10.0 ** rng.integers(-6, 7, (256, 1))).astype(np.float32)
               for _ in range(3))
    loop = a[0].copy()
    for i in range(1, len(a)):
        loop += a[i]
    assert np.array_equal(seqsum(a), loop)
    assert np.array_equal(seqsum(np.asfortranarray(a)), loop)  # any memory layout
    for ops in ((a, b), (a, b, c)):
        prod = ops[0] * ops[1] if len(ops) == 2 else (ops[0] * ops[1]) * ops[2]
        want = prod[0].copy()
        for i in range(1, len(prod)):
            want += prod[i]
        assert np.array_equal(seqdot(*ops), want)
    assert not np.array_equal(seqsum(a), np.add.reduce(np.ascontiguousarray(a.T), axis=1)), "data must expose order"


@pytest.fixture(scope="module")
def synthetic() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "synthetic.npz") as f:
        return dict(f)


CASES = ["normal", "heavy", "positive", "zeros", "constant", "neg_constant", "outlier", "subnormal", "tiny", "sparse"]


@pytest.mark.parametrize("qtype", PLAIN)
@pytest.mark.parametrize("case", CASES)
def test_bit_exact_with_llamacpp(synthetic, qtype: str, case: str) -> None:
    x = synthetic[f"{case}/input"]
    assert_same_blocks(GGML_TYPES.get(qtype).quantize(x), synthetic[f"{case}/{qtype}"], qtype, case)


IMATRIX_CASES = ["normal", "heavy", "outlier", "zeros", "subnormal", "sparse", "positive"]


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("case", IMATRIX_CASES)
def test_bit_exact_with_an_importance_matrix(synthetic, qtype: str, case: str) -> None:
    x, im = synthetic[f"{case}/input"], synthetic[f"{case}/imatrix"]
    assert_same_blocks(GGML_TYPES.get(qtype).quantize(x, im), synthetic[f"{case}/{qtype}/imx"], qtype, f"{case}+imatrix")


def test_the_importance_matrix_changes_the_weighted_error(synthetic) -> None:
    """Sanity beyond bit-exactness: the weighted error drops with the imatrix for every k-quant."""
    x, im = synthetic["heavy/input"], synthetic["heavy/imatrix"]
    for q in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q4_0", "IQ4_NL", "IQ4_XS"):
        t = GGML_TYPES.get(q)
        plain = (((t.dequantize(t.quantize(x), x.shape) - x) ** 2) * im).sum()
        weighted = (((t.dequantize(t.quantize(x, im), x.shape) - x) ** 2) * im).sum()
        assert weighted < plain, q


@pytest.mark.parametrize("qtype", NEEDS_IMATRIX)
def test_very_low_bit_types_need_an_importance_matrix(qtype: str) -> None:
    with pytest.raises(InputError, match=f"{qtype} needs an importance matrix"):
        GGML_TYPES.get(qtype).quantize(np.ones((1, 256), np.float32))


@pytest.mark.parametrize("qtype", TYPES)
def test_decodes_close_to_the_input(qtype: str) -> None:
    """gguf-py (an independent decoder) reads our bytes back within the type's resolution."""
    t = GGML_TYPES.get(qtype)
    x = np.random.default_rng(0).standard_normal((4, 512)).astype(np.float32)
    im = np.ones(512, np.float32) if qtype in NEEDS_IMATRIX else None
    back = t.dequantize(t.quantize(x, im), x.shape)
    rel = float(np.sqrt(((back - x) ** 2).mean() / (x**2).mean()))
    bound = {"F32": 0, "F16": 1e-3, "BF16": 1e-2}.get(qtype, 2.0 ** (2 - t.bits_per_weight()))
    assert rel <= bound, (qtype, rel)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_K", "Q6_K"])
def test_non_finite_values_are_rejected(qtype: str, bad: float) -> None:
    x = np.zeros((2, 256), np.float32)
    x[1, 3] = bad
    with pytest.raises(InputError, match="NaN/inf"):
        GGML_TYPES.get(qtype).quantize(x)


def test_width_must_fit_the_block() -> None:
    with pytest.raises(InputError, match="multiple of 256"):
        GGML_TYPES.get("Q4_K").quantize(np.zeros((2, 576), np.float32))


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None and not os.environ.get("LOWBIT_LIBGGML"),
                    reason="neither llama-cpp-python (make reference) nor $LOWBIT_LIBGGML (a libggml-base.so)")
@pytest.mark.parametrize("qtype", TYPES)
def test_live_against_libggml(qtype: str) -> None:
    """Fresh random tensors against the installed llama.cpp, beyond the fixtures."""
    import sys

    sys.path.insert(0, str(FIXTURES))
    from make_fixtures import find_lib, ggml_quantize

    lib = find_lib(None)
    rng = np.random.default_rng(99)
    x = (rng.standard_normal((16, 1024)) * rng.uniform(0.001, 10, (16, 1))).astype(np.float32)
    im = (rng.standard_normal(1024) ** 2).astype(np.float32) if qtype in NEEDS_IMATRIX else None
    assert_same_blocks(GGML_TYPES.get(qtype).quantize(x, im), ggml_quantize(lib, x, qtype, im), qtype, "live")


@pytest.mark.parametrize("qtype", ["Q4_0", "Q5_0", "Q4_1", "Q5_1", "Q8_0"])
def test_fast_legacy_paths_equal_gguf_py_on_ties(qtype: str) -> None:
    """lowbit's legacy quantizers reorder gguf-py's arithmetic for speed; on grid-valued blocks full of
    exact halves (roundf's ties), +a/-a absmax ties, zero and subnormal blocks they give its bytes."""
    rng = np.random.default_rng(3)
    grid = rng.integers(-254, 255, (512, 32)).astype(np.float32) / np.float32(2)  # k/2: x/d lands on .5
    grid[:, 0] = 127.0  # d = 1 for Q8_0: every odd k is a tie
    pm = rng.standard_normal((64, 32)).astype(np.float32)
    pm[:, 5], pm[:, 9] = 3.0, -3.0  # both signs of the absmax
    pm[::2, 5], pm[::2, 9] = -3.0, 3.0
    odd = np.stack([np.zeros(32, np.float32), np.full(32, 1e-42, np.float32), np.full(32, -2.5, np.float32)])
    x = np.concatenate([grid, pm, odd])
    with np.errstate(all="ignore"):  # the subnormal block overflows inside gguf-py, as in C
        ref = gguf.quants._type_traits[gguf.GGMLQuantizationType[qtype]].quantize_blocks(x)
    want = np.ascontiguousarray(ref).view(np.uint8).reshape(len(x), -1)
    assert_same_blocks(GGML_TYPES.get(qtype).quantize(x), want, qtype, "ties")


def test_signed_absmax_takes_the_first_of_equal_magnitudes() -> None:
    from lowbit.formats.ggml.kcommon import signed_absmax

    rng = np.random.default_rng(5)
    x = rng.integers(-3, 4, (200, 16)).astype(np.float32)  # many +3/-3 ties, some all-zero rows
    x[:20] = 0
    idx = np.abs(x).argmax(1)  # numpy's argmax returns the first maximum
    want = x[np.arange(len(x)), idx]
    for data, axis in ((x, -1), (np.ascontiguousarray(x.T), 0)):
        amax, val = signed_absmax(data, axis)
        assert np.array_equal(val, want) and np.array_equal(amax, np.abs(want))
        assert not np.signbit(amax).any()


def test_iq4_level_search_is_the_references_binary_search() -> None:
    """IQ4's table lookup against ggml's best_index_int8 written out, on the hard values: the levels
    themselves, their midpoints and one float step either side, beyond the ends, inf and NaN."""
    from lowbit.formats.ggml.iq4 import VALUES, best_index

    def reference(x: float) -> int:
        val = [float(v) for v in VALUES]
        if x <= val[0]:
            return 0
        if x >= val[-1]:
            return 15
        ml, mu = 0, 15
        while mu - ml > 1:
            mav = (ml + mu) // 2
            if x < val[mav]:
                mu = mav
            else:
                ml = mav
        return mu - 1 if np.float32(x - val[mu - 1]) < np.float32(val[mu] - x) else mu

    mids = (VALUES[:-1] + VALUES[1:]) / 2
    hard = np.concatenate([VALUES, mids, -200, 200, np.inf, -np.inf, 0, -0.0], axis=None).astype(np.float32)
    hard = np.concatenate([hard, np.nextafter(hard, np.float32(np.inf)), np.nextafter(hard, np.float32(-np.inf))])
    v = np.concatenate([hard, np.random.default_rng(5).uniform(-140, 130, 20000).astype(np.float32)])
    with np.errstate(invalid="ignore"):
        assert [int(i) for i in best_index(v)] == [reference(float(x)) for x in v]
        assert int(best_index(np.array([np.nan], np.float32))[0]) == 15  # all comparisons false in C


def test_lattice_levels_and_choice_follow_the_reference() -> None:
    """The lattice searches' shortcuts against what ggml writes out: three levels by two comparisons
    equal nearest_int(0.5 (inv x - 1)) clamped, on the ties and one float step either side; the first
    least error of a candidate list equals a strict ``<`` scan (ties to the first, NaN never chosen, a
    list of all NaN gives 0), for short lists and for ones past the int8 positions."""
    from lowbit.formats.ggml.iqlattice import first_min, nearest_levels
    from lowbit.formats.ggml.kcommon import nearest_int

    edges = np.array([-4e6, -3, -1, 0, 1, 2, 3, 4, 5, 7, 4e6], dtype=np.float32)  # ggml asserts |t / 2| < 2^22
    t = np.concatenate([edges, np.nextafter(edges, np.float32(np.inf)), np.nextafter(edges, np.float32(-np.inf))])
    ix = np.concatenate([t + np.float32(1), np.random.default_rng(3).uniform(-2, 8, 5000).astype(np.float32)])
    for kmax in (3, 8):
        want = np.clip(nearest_int(np.float32(0.5) * (ix - np.float32(1))), 0, kmax - 1)
        assert np.array_equal(nearest_levels(ix, np.float32(1), kmax), want.astype(np.uint8))

    rng = np.random.default_rng(4)
    for k in (2, 9, 200):
        d2 = rng.integers(0, 6, (k, 3000)).astype(np.float32)  # many equal errors
        d2[rng.random(d2.shape) < 0.2] = np.nan
        d2[:, :10] = np.nan
        want = []
        for col in d2.T:
            best, pos = np.inf, -1
            for i, v in enumerate(col):
                if v < best:
                    best, pos = v, i
            want.append(max(pos, 0))
        assert first_min(d2).tolist() == want


def test_a_forked_child_quantizes_with_its_own_pool() -> None:
    """The shared pool's threads do not survive a fork: a child that quantizes must not wait on them."""
    import os

    from lowbit.formats.ggml import GGML_TYPES

    x = np.linspace(-1, 1, 4 * 256, dtype=np.float32).reshape(4, 256)
    want = GGML_TYPES.get("Q4_0").quantize(x)  # the parent's pool now exists, with its threads
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        ok = np.array_equal(GGML_TYPES.get("Q4_0").quantize(x), want)
        os.write(w, b"1" if ok else b"0")
        os._exit(0)
    os.close(w)
    import select

    ready, _, _ = select.select([r], [], [], 60)
    got = os.read(r, 1) if ready else b""
    os.close(r)
    if not ready:
        os.kill(pid, 9)
    os.waitpid(pid, 0)
    assert got == b"1", "the forked child hung or quantized differently"
