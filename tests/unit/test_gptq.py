"""GPTQ on hand-made layers: known answers, error feedback beating RTN, damping retries, dead inputs."""

from __future__ import annotations

import logging

import pytest
import torch

from lowbit.calib.stats import LayerStats
from lowbit.errors import CalibrationError, InputError, ShapeError
from lowbit.methods import get_method
from lowbit.methods.gptq import GPTQConfig, gptq_quantize
from lowbit.methods.rtn import RTNConfig, rtn
from lowbit.spec import QuantSpec


def correlated_inputs(n: int = 2048, d: int = 128, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) @ torch.randn(d, d, generator=g) * 0.2
    x[:, :4] *= 10  # a few high-energy input channels, as LLM activations have
    return x


def output_error(x: torch.Tensor, w: torch.Tensor, deq: torch.Tensor) -> float:
    return float(((x @ (deq - w).t()) ** 2).mean())


@pytest.mark.parametrize("spec", [QuantSpec(4, True, 32), QuantSpec(3, False, 64), QuantSpec(4, True, -1),
                                  QuantSpec(2, False, 32), QuantSpec(4, False, 0)], ids=str)
@pytest.mark.parametrize(("act_order", "static"), [(False, False), (True, False), (True, True)],
                         ids=["plain", "act-order", "act-order-static"])
def test_gptq_beats_rtn_on_output_error(spec: QuantSpec, act_order: bool, static: bool) -> None:
    x = correlated_inputs()
    w = torch.randn(48, 128, generator=torch.Generator().manual_seed(1))
    h = 2 * x.t() @ x / x.shape[0]
    qt, info = gptq_quantize(w, h, GPTQConfig(spec=spec, act_order=act_order, static_groups=static))
    e_gptq = output_error(x, w, qt.dequantize())
    e_rtn = output_error(x, w, rtn(w, RTNConfig(spec=spec)).dequantize())
    assert e_gptq < 0.8 * e_rtn, (e_gptq, e_rtn)
    assert info.retries == 0 and info.dead_inputs == 0
    assert int(qt.codes().max()) <= spec.qmax and qt.shape == (48, 128)


def test_identity_hessian_with_tiny_damping_is_rtn() -> None:
    """With H = I nothing couples the columns: GPTQ (no act-order, static grid) reduces to RTN exactly."""
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(2))
    spec = QuantSpec(4, True, -1)
    qt, _ = gptq_quantize(w, torch.eye(64), GPTQConfig(spec=spec, act_order=False, damp=0.0))
    assert torch.equal(qt.codes(), rtn(w, RTNConfig(spec=spec)).codes())


def test_error_feedback_known_answer() -> None:
    """Two perfectly correlated inputs: the second column absorbs the first one's rounding error."""
    x = torch.tensor([[1.0, 1.0]] * 8)
    h = 2 * x.t() @ x / 8 + 1e-4 * torch.eye(2)
    w = torch.tensor([[0.30, 0.70]])
    spec = QuantSpec(8, True, 0, "float32")
    qt, _ = gptq_quantize(w, h, GPTQConfig(spec=spec, act_order=False, damp=0.0))
    deq = qt.dequantize()
    # the sum (what the output sees) is preserved far better than by rounding each weight alone
    assert abs(float(deq.sum() - w.sum())) < abs(float(rtn(w, RTNConfig(spec=spec)).dequantize().sum() - w.sum())) + 1e-9
    assert abs(float(deq.sum() - w.sum())) <= float(qt.scale) / 2 + 1e-7


def test_not_positive_definite_raises_damping_and_reports(caplog: pytest.LogCaptureFixture) -> None:
    h = torch.diag(torch.tensor([1.0, 1.0, -0.5, 1.0]))  # indefinite
    w = torch.randn(4, 4)
    cfg = GPTQConfig(spec=QuantSpec(4, True, -1), damp=0.01)
    qt, info = gptq_quantize(w, h, cfg)
    assert info.retries >= 1 and info.damp_used > cfg.damp
    with caplog.at_level(logging.WARNING):
        get_method("gptq").fn(w, cfg, LayerStats(rows=1, hessian=h))
    assert "damping raised" in caplog.text


def test_hopeless_hessian_is_a_clear_error() -> None:
    h = -torch.eye(8) * 1e6
    with pytest.raises(CalibrationError, match="not positive definite"):
        gptq_quantize(torch.randn(4, 8), h, GPTQConfig(spec=QuantSpec(4, True, -1), max_damp=1.0))


def test_dead_inputs_are_zeroed_not_nan() -> None:
    x = correlated_inputs(d=64)
    x[:, 5] = 0.0  # an input channel calibration never activates
    h = 2 * x.t() @ x / x.shape[0]
    w = torch.randn(8, 64)
    qt, info = gptq_quantize(w, h, GPTQConfig(spec=QuantSpec(4, False, 32)))
    deq = qt.dequantize()
    assert info.dead_inputs == 1
    assert torch.isfinite(deq).all()
    assert float(deq[:, 5].abs().max()) <= float(qt.scale.float().max())  # near zero: rounding step at most


def test_needs_hessian_and_validates() -> None:
    with pytest.raises(CalibrationError):
        get_method("gptq").fn(torch.randn(4, 8), GPTQConfig(), None)
    with pytest.raises(InputError):
        GPTQConfig(damp=-1.0)
    with pytest.raises(ShapeError):
        gptq_quantize(torch.randn(4, 48), torch.eye(48), GPTQConfig(spec=QuantSpec(4, True, 32)))
    assert get_method("gptq").needs == ("hessian",)


def test_split_rows_of_stacked_result_equals_separate_calls() -> None:
    """Stacking q/k/v into one GPTQ call is exact: rows are independent given the shared Hessian."""
    x = correlated_inputs(d=64)
    h = 2 * x.t() @ x / x.shape[0]
    ws = [torch.randn(n, 64, generator=torch.Generator().manual_seed(n)) for n in (16, 8, 8)]
    cfg = GPTQConfig(spec=QuantSpec(4, False, 32))
    stacked, _ = gptq_quantize(torch.cat(ws), h, cfg)
    for part, w in zip(stacked.split_rows([16, 8, 8]), ws):
        alone, _ = gptq_quantize(w, h, cfg)
        assert torch.equal(part.codes(), alone.codes())
        assert torch.equal(part.scale, alone.scale) and torch.equal(part.zero, alone.zero)


def test_act_order_groups_are_fixed_at_first_use_or_statically() -> None:
    """static_groups: every group's grid is RTN's grid of the original weights; by default the grids
    come from the updated weights, so they differ, and the first group processed keeps RTN's grid only
    if nothing updated it before (it is reached first only for its first column)."""
    x = correlated_inputs()
    w = torch.randn(32, 128, generator=torch.Generator().manual_seed(3))
    h = 2 * x.t() @ x / x.shape[0]
    spec = QuantSpec(3, True, 32)
    rtn_scale = rtn(w, RTNConfig(spec=spec)).scale
    static, _ = gptq_quantize(w, h, GPTQConfig(spec=spec, act_order=True, static_groups=True))
    lazy, _ = gptq_quantize(w, h, GPTQConfig(spec=spec, act_order=True))
    assert torch.equal(static.scale, rtn_scale)
    assert not torch.equal(lazy.scale, rtn_scale)
    # the grid is a grid of the weights it quantizes: with first-use groups, fewer codes sit on the clip rails
    rails = lambda qt: int(((qt.codes() == 0) | (qt.codes() == spec.qmax)).sum())  # noqa: E731
    assert rails(lazy) < rails(static)


@pytest.mark.parametrize(("act_order", "static"), [(False, False), (True, False), (True, True)],
                         ids=["plain", "act-order", "act-order-static"])
def test_prerounding_weights_round_to_the_codes(act_order: bool, static: bool) -> None:
    """``prerounding`` holds each column as GPTQ rounded it (after the error feedback): rounding it on
    the result's own grid gives the result's codes, and it differs from the original weights."""
    from lowbit import grid

    spec = QuantSpec(3, False, 32)
    x = correlated_inputs()
    w = torch.randn(48, 128, generator=torch.Generator().manual_seed(1))
    qt, _ = gptq_quantize(w, 2 * x.t() @ x / x.shape[0], GPTQConfig(spec=spec, act_order=act_order, static_groups=static))
    pre = qt.prerounding
    assert pre.shape == w.shape and not torch.allclose(pre, w)
    codes = grid.quantize_blocks(grid.as_blocks(pre, spec), qt.scale, qt.zero, spec)
    assert torch.equal(codes, qt.codes())
    parts = qt.split_rows([16, 32])
    assert torch.equal(torch.cat([p.prerounding for p in parts]), pre)
