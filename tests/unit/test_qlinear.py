"""modules/qlinear.py: exact dequant forward, packed storage, CPU kernels vs the dequantized reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowbit.bitpack import packed_nbytes
from lowbit.methods.rtn import RTNConfig, rtn
from lowbit.modules.int8_kernels import int8_engine, select_int8_engine
from lowbit.modules.kernel_mode import KERNEL_MODES, kernel_mode, set_kernel_mode
from lowbit.modules.qlinear import KERNEL_MAX_ROWS, QuantizedLinear
from lowbit.spec import QuantSpec

KERNEL_SPECS = [QuantSpec(8, True, -1), QuantSpec(4, True, 32), QuantSpec(4, True, 64), QuantSpec(4, False, 32),
                QuantSpec(4, False, 64)]
ALL_SPECS = KERNEL_SPECS + [QuantSpec(3, True, 32), QuantSpec(2, False, -1), QuantSpec(8, False, 0),
                            QuantSpec(4, True, -1), QuantSpec(5, True, 64, "float32")]


def make_qlinear(spec: QuantSpec, inp: int = 128, out: int = 96, bias: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    lin = nn.Linear(inp, out, bias=bias)
    return lin, QuantizedLinear.from_linear(lin, rtn(lin.weight.data, RTNConfig(spec=spec)))


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    y, ref = y.detach().float(), ref.detach().float()
    return float((y - ref).norm() / ref.norm())


@pytest.mark.parametrize("spec", ALL_SPECS, ids=str)
def test_dequant_forward_equals_f_linear_exactly(spec: QuantSpec) -> None:
    lin, q = make_qlinear(spec)
    x = torch.randn(3, 5, 128)
    ref = F.linear(x, q.dequantize(), lin.bias)
    with kernel_mode(q, "dequant"):
        y = q(x)
    assert y.dtype == torch.float32 and y.shape == (3, 5, 96)
    assert torch.equal(y, ref)


def test_dequantized_weight_is_close_to_original() -> None:
    lin, q = make_qlinear(QuantSpec(8, True, -1))
    assert rel_err(q.dequantize(), lin.weight) < 1e-2
    assert not torch.equal(q.dequantize(), lin.weight)


@pytest.mark.parametrize("spec", ALL_SPECS, ids=str)
def test_state_dict_holds_packed_codes(spec: QuantSpec) -> None:
    _, q = make_qlinear(spec)
    sd = q.state_dict()
    expect = {"qweight", "scale", "bias"} | (set() if spec.symmetric else {"zero"})
    assert set(sd) == expect
    assert sd["qweight"].dtype == torch.uint8
    assert sd["qweight"].numel() == packed_nbytes(96 * 128, spec.bits) == -(-96 * 128 * spec.bits // 8)
    assert sd["scale"].numel() == spec.n_blocks((96, 128))
    assert "weight" not in sd


def test_memory_shrinks_versus_float32() -> None:
    lin, q = make_qlinear(QuantSpec(4, True, 64), bias=False)
    fp32 = sum(t.numel() * t.element_size() for t in lin.state_dict().values())
    quant = sum(t.numel() * t.element_size() for t in q.state_dict().values())
    assert quant / fp32 == pytest.approx(4.25 / 32)
    _, q8 = make_qlinear(QuantSpec(8, True, -1), bias=False)
    ratio8 = sum(t.numel() * t.element_size() for t in q8.state_dict().values()) / (96 * 128 * 4)
    assert ratio8 == pytest.approx((8 + 16 / 128) / 32)


def test_constructor_shapes_and_extra_repr() -> None:
    q = QuantizedLinear(64, 32, QuantSpec(4, False, 32), bias=False)
    assert q.qweight.shape == (1024,) and q.scale.shape == (64,) and q.zero.shape == (64,)
    assert q.bias is None
    assert "spec=int4-asym-group32" in repr(q)


def test_from_linear_keeps_bias_and_round_trips_the_quantized_tensor() -> None:
    spec = QuantSpec(4, False, 64)
    lin, q = make_qlinear(spec)
    assert torch.equal(q.bias.data, lin.bias.data)
    qt = q.quantized_tensor()
    assert qt.spec == spec and qt.shape == (96, 128)
    assert torch.equal(qt.dequantize(), rtn(lin.weight.data, RTNConfig(spec=spec)).dequantize())


# Kernel coverage may grow; these assignments are the documented minimum (and what has no kernel).
@pytest.mark.parametrize("spec, kernel", [(QuantSpec(8, True, -1), "int8pack"), (QuantSpec(4, True, 32), "int4pack"),
                                          (QuantSpec(4, False, 64), "int4pack"), (QuantSpec(4, False, 128), "int4pack"),
                                          (QuantSpec(8, False, -1), None), (QuantSpec(8, True, 64), None)], ids=str)
def test_kernel_name(spec: QuantSpec, kernel: str | None) -> None:
    assert make_qlinear(spec)[1].kernel_name() == kernel


@pytest.mark.parametrize("spec", KERNEL_SPECS, ids=str)
def test_bf16_kernel_matches_dequant_reference(spec: QuantSpec) -> None:
    lin, q = make_qlinear(spec)
    x = torch.randn(4, 6, 128)
    ref = F.linear(x, q.dequantize(), lin.bias)
    y = q(x.to(torch.bfloat16))
    assert q._kernel is not None and q._kernel[0] == q.kernel_name()  # the kernel path really ran
    assert y.dtype == torch.bfloat16 and y.shape == (4, 6, 96)
    assert rel_err(y, ref) < 2e-2


@pytest.mark.parametrize("spec", ALL_SPECS, ids=str)
def test_every_forward_path_matches_dequant_reference(spec: QuantSpec) -> None:
    """Whatever path a spec takes (a kernel or bf16 dequantization), it agrees with the exact reference."""
    lin, q = make_qlinear(spec)
    x = torch.randn(32, 128)  # above KERNEL_MAX_ROWS: "auto" would dequantize float32
    ref = F.linear(x, q.dequantize(), lin.bias)
    with kernel_mode(q, "kernel"):
        y = q(x)
    assert y.dtype == torch.float32 and y.shape == (32, 96)
    assert (q._kernel is not None) == (q.kernel_name() is not None)
    assert rel_err(y, ref) < 2e-2
    yb = q(x.to(torch.bfloat16))
    assert yb.dtype == torch.bfloat16 and rel_err(yb, ref) < 2e-2


@pytest.mark.parametrize("spec", KERNEL_SPECS, ids=str)
def test_forced_kernel_mode_with_float32_input(spec: QuantSpec) -> None:
    lin, q = make_qlinear(spec)
    x = torch.randn(32, 128)
    ref = F.linear(x, q.dequantize(), lin.bias)
    with kernel_mode(q, "kernel"):
        y = q(x)
    assert q._kernel is not None
    assert y.dtype == torch.float32 and not torch.equal(y, ref)  # bf16 compute: not the exact path
    assert rel_err(y, ref) < 2e-2


@pytest.mark.parametrize("spec", [QuantSpec(8, True, -1), QuantSpec(4, False, 64)], ids=str)
def test_auto_mode_single_float32_row_uses_kernel(spec: QuantSpec) -> None:
    lin, q = make_qlinear(spec)
    x = torch.randn(1, 128)
    ref = F.linear(x, q.dequantize(), lin.bias)
    assert q._use_kernel(x)
    y = q(x)
    assert q._kernel is not None
    assert y.dtype == torch.float32
    assert rel_err(y, ref) < 2e-2


def test_auto_mode_row_threshold_and_dequant_mode() -> None:
    _, q = make_qlinear(QuantSpec(4, True, 64))
    assert q._use_kernel(torch.randn(KERNEL_MAX_ROWS, 128))
    assert not q._use_kernel(torch.randn(KERNEL_MAX_ROWS + 1, 128))
    assert q._use_kernel(torch.randn(100, 128, dtype=torch.bfloat16))
    assert not q._use_kernel(torch.randn(1, 128, dtype=torch.float16))
    with kernel_mode(q, "dequant"):
        assert not q._use_kernel(torch.randn(1, 128, dtype=torch.bfloat16))
    assert q.kernel_mode == "auto"  # restored
    _, q8a = make_qlinear(QuantSpec(8, False, -1))  # no kernel for this spec
    assert q8a.kernel_name() is None
    assert not q8a._use_kernel(torch.randn(1, 128, dtype=torch.bfloat16))


def two_layer_model(seed: int = 0) -> nn.Sequential:
    spec = QuantSpec(4, True, 32)
    return nn.Sequential(make_qlinear(spec, seed=seed)[1], nn.ReLU(), make_qlinear(spec, 96, 128, seed=seed + 1)[1])


def modes(model: nn.Module) -> list[str]:
    return [m.kernel_mode for m in model.modules() if isinstance(m, QuantizedLinear)]


def test_kernel_mode_is_a_setting_of_one_model() -> None:
    a, b = two_layer_model(0), two_layer_model(2)
    with kernel_mode(a, "dequant") as m:
        assert m is a
        assert modes(a) == ["dequant", "dequant"]
        assert modes(b) == ["auto", "auto"]  # another model's layers keep their own mode
        assert not a[0]._use_kernel(torch.randn(1, 128, dtype=torch.bfloat16))
        assert b[0]._use_kernel(torch.randn(1, 128, dtype=torch.bfloat16))
    assert modes(a) == modes(b) == ["auto", "auto"]
    assert not hasattr(QuantizedLinear, "kernel_mode")  # no class-wide setting left to leak


def test_kernel_mode_puts_back_each_layers_own_mode() -> None:
    model = two_layer_model()
    model[2].kernel_mode = "kernel"
    with kernel_mode(model, "dequant"):
        assert modes(model) == ["dequant", "dequant"]
    assert modes(model) == ["auto", "kernel"]


def test_kernel_mode_is_restored_after_an_exception() -> None:
    model = two_layer_model()
    with pytest.raises(RuntimeError, match="boom"), kernel_mode(model, "kernel"):
        assert modes(model) == ["kernel", "kernel"]
        raise RuntimeError("boom")
    assert modes(model) == ["auto", "auto"]


def test_set_kernel_mode_is_permanent_and_per_model() -> None:
    a, b = two_layer_model(0), two_layer_model(2)
    set_kernel_mode(a, "dequant")
    assert modes(a) == ["dequant", "dequant"] and modes(b) == ["auto", "auto"]
    x = torch.randn(1, 128, dtype=torch.bfloat16)
    assert not a[0]._use_kernel(x) and b[0]._use_kernel(x)
    set_kernel_mode(a[0], "kernel")  # one layer is a model too
    assert modes(a) == ["kernel", "dequant"]


@pytest.mark.parametrize("bad", ["fast", "", "Dequant"])
def test_a_bad_kernel_mode_is_refused(bad: str) -> None:
    model = two_layer_model()
    with pytest.raises(ValueError, match="auto, dequant, kernel"):
        set_kernel_mode(model, bad)
    with pytest.raises(ValueError, match=repr(bad)), kernel_mode(model, bad):
        pass
    assert modes(model) == ["auto", "auto"]
    assert KERNEL_MODES == ("auto", "dequant", "kernel")


def test_int8_engine_reports_and_select_int8_engine_sets() -> None:
    before = torch.backends.quantized.engine
    engine = int8_engine()
    assert torch.backends.quantized.engine == before  # reporting changes nothing
    if engine is None:
        pytest.skip("torch offers no int8 GEMM engine on this machine")
    assert engine in torch.backends.quantized.supported_engines
    try:
        other = next((e for e in torch.backends.quantized.supported_engines if e not in (engine, "none")), None)
        if other is not None:  # start elsewhere, so that selecting really has something to change
            torch.backends.quantized.engine = other
            assert int8_engine() == engine and torch.backends.quantized.engine == other
        assert select_int8_engine() == engine
        assert torch.backends.quantized.engine == engine
    finally:
        torch.backends.quantized.engine = before


def test_large_float32_input_in_auto_mode_is_exact() -> None:
    lin, q = make_qlinear(QuantSpec(4, True, 64))
    x = torch.randn(20, 128)
    assert torch.equal(q(x), F.linear(x, q.dequantize(), lin.bias))


def test_bf16_without_kernel_uses_bf16_dequant() -> None:
    lin, q = make_qlinear(QuantSpec(8, False, -1))
    assert q.kernel_name() is None
    x = torch.randn(5, 128)
    y = q(x.bfloat16())
    assert y.dtype == torch.bfloat16 and q._kernel is None
    assert rel_err(y, F.linear(x, q.dequantize(), lin.bias)) < 2e-2


def test_model_to_bfloat16_keeps_float16_scales() -> None:
    lin, q = make_qlinear(QuantSpec(4, False, 64))
    scale0 = q.scale.clone()
    model = nn.Sequential(q, nn.ReLU())
    model.to(torch.bfloat16)
    assert q.scale.dtype == torch.float16 and torch.equal(q.scale, scale0)
    assert q.qweight.dtype == torch.uint8 and q.zero.dtype == torch.uint8
    assert q.bias.dtype == torch.bfloat16
    assert "scale" in dict(q.named_buffers())  # still a buffer, so it is saved
    x = torch.randn(3, 128)
    ref = F.linear(x, q.dequantize(), lin.bias)
    assert rel_err(model[0](x.bfloat16()), ref) < 2e-2


def test_float32_scale_spec_survives_half() -> None:
    _, q = make_qlinear(QuantSpec(8, True, -1, "float32"))
    q.half()
    assert q.scale.dtype == torch.float32


def test_kernel_cache_is_dropped_by_load_quantized() -> None:
    spec = QuantSpec(4, True, 32)
    _, qa = make_qlinear(spec, seed=0, bias=False)
    _, qb = make_qlinear(spec, seed=1, bias=False)
    x = torch.randn(3, 128, dtype=torch.bfloat16)
    qa(x)
    qa.load_quantized(qb.quantized_tensor())
    assert torch.equal(qa(x), qb(x))


def test_load_state_dict_after_kernel_forward_uses_new_weights() -> None:
    spec = QuantSpec(4, True, 32)
    _, qa = make_qlinear(spec, seed=0)
    _, qb = make_qlinear(spec, seed=1)
    x = torch.randn(3, 128, dtype=torch.bfloat16)
    qa(x)  # prepares and caches the int4 kernel weights
    qa.load_state_dict(qb.state_dict())
    assert torch.equal(qa(x), qb(x))
