"""methods/rtn.py and grid.py: error floors, code ranges, exact zeros, degenerate weights, clip search."""

from __future__ import annotations

import itertools

import pytest
import torch

from lowbit import grid
from lowbit.errors import InputError, ShapeError
from lowbit.methods import METHODS, get_method
from lowbit.methods.rtn import RTNConfig, rtn
from lowbit.spec import QuantSpec
from lowbit.tensor import QuantizedTensor

BITS = list(range(2, 9))


def gaussian(out: int = 64, inp: int = 128, seed: int = 0) -> torch.Tensor:
    return torch.randn(out, inp, generator=torch.Generator().manual_seed(seed))


def rel_mse(w: torch.Tensor, spec: QuantSpec, **opts: object) -> float:
    qt = rtn(w, RTNConfig(spec=spec, **opts))
    return float((qt.dequantize() - w).pow(2).mean() / w.pow(2).mean())


def block_sq_err(w: torch.Tensor, qt: QuantizedTensor) -> torch.Tensor:
    return (qt.dequantize() - w).pow(2).reshape(-1, qt.spec.block_len(tuple(w.shape))).sum(1)


# Relative MSE of RTN on gaussian(64, 128, seed 0), measured with torch 2.13 (bits 2..8).
# The test accepts [measured / 1.5, measured * 1.5]: a floor and a ceiling.
MEASURED = {
    (0, True): [5.67e-1, 1.13e-1, 2.45e-2, 5.67e-3, 1.41e-3, 3.44e-4, 8.61e-5],
    (-1, True): [3.22e-1, 6.02e-2, 1.30e-2, 3.08e-3, 7.38e-4, 1.81e-4, 4.49e-5],
    (-1, False): [2.62e-1, 4.79e-2, 1.03e-2, 2.43e-3, 5.87e-4, 1.47e-4, 3.67e-5],
    (32, True): [2.26e-1, 4.11e-2, 8.98e-3, 2.12e-3, 5.08e-4, 1.27e-4, 3.12e-5],
    (32, False): [1.68e-1, 3.02e-2, 6.57e-3, 1.57e-3, 3.75e-4, 9.19e-5, 2.28e-5],
    (64, True): [2.69e-1, 4.93e-2, 1.09e-2, 2.53e-3, 6.08e-4, 1.50e-4, 3.76e-5],
    (64, False): [2.09e-1, 3.78e-2, 8.14e-3, 1.94e-3, 4.66e-4, 1.15e-4, 2.95e-5],
}


@pytest.mark.parametrize("group_size, symmetric", list(MEASURED))
def test_error_floor_per_bits_and_granularity(group_size: int, symmetric: bool) -> None:
    w = gaussian()
    errs = [rel_mse(w, QuantSpec(b, symmetric, group_size)) for b in BITS]
    for b, e, m in zip(BITS, errs, MEASURED[(group_size, symmetric)]):
        assert m / 1.5 < e < m * 1.5, f"int{b} {group_size} sym={symmetric}: rel MSE {e:.3g}, measured {m:.3g}"
    # one more bit roughly quarters the error (halves the step): require at least a 2.5x drop
    for lo, hi in itertools.pairwise(errs):
        assert hi < lo / 2.5


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_finer_granularity_and_asymmetry_help(bits: int) -> None:
    w = gaussian()
    t, c, g64, g32 = (rel_mse(w, QuantSpec(bits, True, g)) for g in (0, -1, 64, 32))
    assert g32 < g64 < c < t
    assert rel_mse(w, QuantSpec(bits, False, 32)) < g32


def test_uniform_rounding_error_matches_theory_for_int8() -> None:
    # away from the clip points the error of rounding is uniform on [-s/2, s/2]: MSE ~ s^2 / 12
    w = gaussian(128, 256, seed=4)
    spec = QuantSpec(8, True, 64, "float32")
    qt = rtn(w, RTNConfig(spec=spec))
    s = qt.scale.float().repeat_interleave(64).view_as(w)
    ratio = float(((qt.dequantize() - w) / s).pow(2).mean())
    assert ratio == pytest.approx(1 / 12, rel=0.1)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("symmetric", [True, False])
def test_codes_within_range_and_span_it(bits: int, symmetric: bool) -> None:
    spec = QuantSpec(bits, symmetric, -1)
    w = gaussian(32, 64, seed=bits)
    blocks = grid.as_blocks(w, spec)
    scale, zero = grid.qparams(blocks, spec)
    codes = grid.quantize_blocks(blocks, scale, zero, spec)
    assert codes.dtype == torch.uint8
    # full range used, never beyond; a symmetric grid reaches its lowest code only when -absmax/scale
    # rounds to -2**(bits-1), i.e. when the float16 scale rounded down (or ties to even)
    assert int(codes.min()) in ((0, 1) if symmetric else (0,)) and int(codes.max()) == spec.qmax
    qt = rtn(w, RTNConfig(spec=spec))
    assert int(qt.codes().max()) <= spec.qmax
    assert torch.equal(qt.codes(), codes)


def test_symmetric_scale_convention() -> None:
    w = gaussian(8, 64, seed=2)
    spec = QuantSpec(4, True, -1, "float32")
    scale, zero = grid.qparams(grid.as_blocks(w, spec), spec)
    assert zero is None
    torch.testing.assert_close(scale, w.abs().amax(1) / 7.5)
    codes = grid.quantize_blocks(grid.as_blocks(w, spec), scale, None, spec)
    assert torch.equal(grid.dequantize_blocks(codes, scale, None, spec), (codes.float() - 8) * scale[:, None])


def test_int8_per_channel_max_error_half_step_float32_scale() -> None:
    w = gaussian()
    qt = rtn(w, RTNConfig(spec=QuantSpec(8, True, -1, "float32")))
    err = (qt.dequantize() - w).abs().amax(dim=1)
    assert bool((err <= qt.scale.float() / 2 * (1 + 1e-4)).all())


@pytest.mark.parametrize("bits", [4, 8])
def test_per_channel_max_error_float16_scale(bits: int) -> None:
    """The float16 scale is rounded to nearest (like GPTQ / compressed-tensors): the worst error is half a
    step plus what that rounding moves the clipped extreme, at most (qmax/2) * 2**-11 steps."""
    w = gaussian()
    spec = QuantSpec(bits, True, -1, "float16")
    qt = rtn(w, RTNConfig(spec=spec))
    err = (qt.dequantize() - w).abs().amax(dim=1)
    bound = qt.scale.float() * (0.5 + spec.qmax / 2 * 2**-11 * 1.01)
    assert bool((err <= bound).all()), float((err / qt.scale.float()).max())
    exact = rtn(w, RTNConfig(spec=QuantSpec(bits, True, -1, "float32")))
    assert bool(((exact.dequantize() - w).abs().amax(dim=1) <= exact.scale / 2 * (1 + 1e-4)).all())


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [0, -1, 32])
@pytest.mark.parametrize("symmetric", [True, False])
def test_zero_is_represented_exactly(bits: int, group_size: int, symmetric: bool) -> None:
    w = gaussian(16, 64, seed=7)
    mask = torch.rand(16, 64, generator=torch.Generator().manual_seed(8)) < 0.2
    w[mask] = 0.0
    w[3] = w[3].abs()  # an all-non-negative row: asym zero point 0
    deq = rtn(w, RTNConfig(spec=QuantSpec(bits, symmetric, group_size))).dequantize()
    assert bool((deq[mask] == 0).all())


def test_asym_zero_point_range() -> None:
    spec = QuantSpec(4, False, -1)
    w = gaussian(4, 64, seed=5)
    w[0] = w[0].abs() + 0.1  # positive row: range widened to [0, max], zero point 0
    w[1] = -w[1].abs() - 0.1  # negative row: zero point qmax
    qt = rtn(w, RTNConfig(spec=spec))
    assert qt.zero is not None and qt.zero.dtype == torch.uint8
    assert int(qt.zero[0]) == 0 and int(qt.zero[1]) == spec.qmax
    assert bool((qt.zero <= spec.qmax).all())


@pytest.mark.parametrize("spec", [QuantSpec(4, True, 64), QuantSpec(4, False, 64), QuantSpec(2, True, 0),
                                  QuantSpec(8, False, -1)])
def test_all_zero_weight(spec: QuantSpec) -> None:
    qt = rtn(torch.zeros(8, 128), RTNConfig(spec=spec))
    deq = qt.dequantize()
    assert torch.isfinite(qt.scale).all() and bool((qt.scale > 0).all())
    assert torch.equal(deq, torch.zeros(8, 128))


def test_zero_rows_beside_nonzero_rows() -> None:
    w = gaussian(4, 64, seed=9)
    w[2] = 0
    deq = rtn(w, RTNConfig(spec=QuantSpec(4, True, -1))).dequantize()
    assert torch.equal(deq[2], torch.zeros(64)) and torch.isfinite(deq).all()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weight_is_shape_error(bad: float) -> None:
    w = gaussian(8, 64)
    w[3, 5] = bad
    with pytest.raises(ShapeError, match="NaN or inf"):
        rtn(w, RTNConfig(spec=QuantSpec(4, True, 32)))


def test_float16_scale_overflow_is_shape_error_and_float32_works() -> None:
    w = gaussian(4, 64) * 1e8  # scale ~ 3e6, above the float16 maximum 65504
    with pytest.raises(ShapeError, match="float32"):
        rtn(w, RTNConfig(spec=QuantSpec(8, True, -1, "float16")))
    qt = rtn(w, RTNConfig(spec=QuantSpec(8, True, -1, "float32")))
    assert float((qt.dequantize() - w).pow(2).mean() / w.pow(2).mean()) < 1e-4


@pytest.mark.parametrize("spec", [QuantSpec(4, True, 64), QuantSpec(3, False, 32), QuantSpec(4, True, -1),
                                  QuantSpec(2, False, 0), QuantSpec(8, True, 128)])
def test_clip_search_never_increases_block_error(spec: QuantSpec) -> None:
    torch.manual_seed(1)
    w = torch.distributions.StudentT(2.0).sample((64, 128))  # heavy tails: clipping pays off
    base = block_sq_err(w, rtn(w, RTNConfig(spec=spec)))
    searched = block_sq_err(w, rtn(w, RTNConfig(spec=spec, clip_search=True)))
    assert bool((searched <= base).all())


def test_clip_search_helps_heavy_tailed_weights() -> None:
    torch.manual_seed(0)
    w = torch.distributions.StudentT(2.0).sample((64, 128))
    spec = QuantSpec(4, True, 64)
    base = block_sq_err(w, rtn(w, RTNConfig(spec=spec))).sum()
    searched = block_sq_err(w, rtn(w, RTNConfig(spec=spec, clip_search=True))).sum()
    assert float(searched) < 0.97 * float(base)


def test_clip_search_with_one_grid_point_equals_plain_rtn() -> None:
    w = gaussian(16, 64)
    spec = QuantSpec(3, False, 32)
    a = rtn(w, RTNConfig(spec=spec))
    b = rtn(w, RTNConfig(spec=spec, clip_search=True, clip_grid=1))
    assert torch.equal(a.packed, b.packed) and torch.equal(a.scale, b.scale)


@pytest.mark.parametrize("kw", [{"clip_grid": 0}, {"clip_min": 0.0}, {"clip_min": 1.5}, {"clip_min": -0.1}])
def test_rtn_config_validation(kw: dict) -> None:
    with pytest.raises(InputError):
        RTNConfig(**kw)


def test_quantized_tensor_sizes_and_dtypes() -> None:
    w = gaussian(64, 128)
    spec = QuantSpec(4, False, 64)
    qt = rtn(w, RTNConfig(spec=spec))
    assert qt.shape == (64, 128) and qt.numel == 64 * 128
    assert qt.packed.dtype == torch.uint8 and qt.packed.numel() == 64 * 128 // 2
    assert qt.scale.dtype == torch.float16 and qt.scale.shape == (128,)
    assert qt.zero.shape == (128,)
    assert qt.nbytes == 4096 + 128 * 2 + 128
    assert qt.bits_per_weight == pytest.approx(spec.bits_per_weight((64, 128))) == pytest.approx(4.375)
    assert qt.dequantize(torch.bfloat16).dtype == torch.bfloat16


def test_rtn_is_deterministic_and_does_not_modify_input() -> None:
    w = gaussian(16, 64)
    w0 = w.clone()
    a = rtn(w, RTNConfig(spec=QuantSpec(4, True, 32), clip_search=True))
    b = rtn(w, RTNConfig(spec=QuantSpec(4, True, 32), clip_search=True))
    assert torch.equal(w, w0)
    assert torch.equal(a.packed, b.packed) and torch.equal(a.scale, b.scale)


def test_rtn_accepts_low_precision_weights() -> None:
    w = gaussian(16, 64).to(torch.bfloat16)
    qt = rtn(w, RTNConfig(spec=QuantSpec(8, True, -1)))
    assert float((qt.dequantize() - w.float()).abs().max()) < 0.05


def test_rtn_is_registered() -> None:
    m = get_method("rtn")
    assert "rtn" in METHODS and m.fn is rtn and m.config is RTNConfig and m.needs == ()
    assert RTNConfig.method == "rtn"
