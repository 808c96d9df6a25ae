"""Sequential calibration on tiny random models: blocks, shared inputs, both schedules, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lowbit
from lowbit import api
from lowbit.calib import capture
from lowbit.calib.stats import StatsAccumulator, gather
from lowbit.errors import CalibrationError, InputError
from lowbit.modules.qlinear import QuantizedLinear
from lowbit.spec import QuantSpec


def test_find_blocks_llama_and_bert(tiny_llama, tiny_bert) -> None:
    name, blocks = capture.find_blocks(tiny_llama.model)
    assert name == "model.layers" and len(blocks) == 2
    name, blocks = capture.find_blocks(tiny_bert.model)
    assert name == "encoder.layer" and len(blocks) == 2


def test_find_blocks_needs_a_block_list() -> None:
    with pytest.raises(InputError, match="no list of blocks"):
        capture.find_blocks(nn.Sequential(nn.Linear(4, 4)))


def test_shared_input_groups_llama(tiny_llama) -> None:
    _, blocks = capture.find_blocks(tiny_llama.model)
    groups = capture.shared_input_groups(tiny_llama.model, blocks, torch.randint(0, 100, (2, 32)))
    assert ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"] in groups
    assert ["mlp.gate_proj", "mlp.up_proj"] in groups
    assert ["self_attn.o_proj"] in groups and ["mlp.down_proj"] in groups


def test_layer_stats_hessian_and_means() -> None:
    acc = StatsAccumulator(("hessian", "act_absmean", "act_absmax", "act_sqsum"))
    x = torch.randn(3, 5, 8)
    acc.add(x[:2])
    acc.add(x[2:])
    st = acc.stats()
    flat = x.reshape(-1, 8)
    torch.testing.assert_close(st.hessian, 2 * flat.t() @ flat / 15)
    torch.testing.assert_close(st.act_absmean, flat.abs().mean(0))
    torch.testing.assert_close(st.act_absmax, flat.abs().amax(0))
    assert acc.sq_sum.dtype == torch.float64
    torch.testing.assert_close(acc.sq_sum, flat.double().pow(2).sum(0))
    assert st.rows == 15
    s = torch.rand(8) + 0.5
    sc = st.scaled(s)
    torch.testing.assert_close(sc.hessian, st.hessian / (s[None, :] * s[:, None]))
    torch.testing.assert_close(sc.act_absmax, st.act_absmax / s)


def test_only_needed_statistics_are_gathered() -> None:
    acc = StatsAccumulator(("act_absmean",))
    acc.add(torch.randn(4, 8))
    st = acc.stats()
    assert st.act_absmean is not None and st.hessian is None and st.act_absmax is None and acc.sq_sum is None


def test_gather_hooks_every_named_module_and_removes_them() -> None:
    net = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    xs = [torch.randn(3, 8), torch.randn(5, 8)]
    accs = gather(net, {"a": net[0], "b": net[2]}, ("act_absmax",), xs, run=lambda m, x: m(x))
    assert accs["a"].rows == 8 and accs["b"].rows == 8
    torch.testing.assert_close(accs["a"].stats().act_absmax, torch.cat(xs).abs().amax(0))
    assert not net[0]._forward_pre_hooks and not net[2]._forward_pre_hooks


@pytest.mark.parametrize("fused", [True, False])
def test_sequential_gptq_on_tiny_llama(tiny_llama, text_file, monkeypatch, fused: bool) -> None:
    if not fused:
        monkeypatch.setattr(capture, "FUSED_BUDGET_BYTES", 0)
    calib = api.CalibSettings(str(text_file), n_samples=4, seq_len=32)
    q, rep = api.quantize(tiny_llama, api.make_config("gptq", QuantSpec(4, False, 32)), calib=calib)
    cal = rep.calibration.to_dict()
    assert cal["schedule"] == ("fused" if fused else "two-pass")
    assert cal["samples"] == 4 and cal["tokens"] == 128 and cal["peak_rss_bytes"] > 0 and cal["seconds"] > 0
    assert len(rep.layers) == 14 and rep.skipped == ["model.embed_tokens", "lm_head"]
    assert all(isinstance(q.model.get_submodule(n), QuantizedLinear) for n in rep.layers)
    assert not any(isinstance(m, QuantizedLinear) for m in tiny_llama.model.modules())  # input untouched
    assert q.quant["calibration"]["data"] == str(text_file)


def test_fused_and_two_pass_agree(tiny_llama, text_file, monkeypatch) -> None:
    """Both schedules see the same data; the fused one is true-sequential inside a block, so codes may
    differ slightly, but the first group (q/k/v of block 0) sees identical inputs and must match."""
    calib = api.CalibSettings(str(text_file), n_samples=2, seq_len=32)
    cfg = api.make_config("gptq", QuantSpec(4, True, 32))
    a, _ = api.quantize(tiny_llama, cfg, calib=calib)
    monkeypatch.setattr(capture, "FUSED_BUDGET_BYTES", 0)
    b, _ = api.quantize(tiny_llama, cfg, calib=calib)
    name = "model.layers.0.self_attn.q_proj"
    assert torch.equal(a.model.get_submodule(name).qweight, b.model.get_submodule(name).qweight)


def test_gptq_beats_rtn_on_tiny_llama(tiny_llama, text_file) -> None:
    ev = lowbit.Evaluator(tiny_llama, lowbit.EvalSettings(data=str(text_file), windows=2, seq_len=32, speed=False))
    spec = QuantSpec(2, False, 32)
    g, _ = api.quantize(tiny_llama, api.make_config("gptq", spec), calib=api.CalibSettings(str(text_file), 8, 32))
    r, _ = api.quantize(tiny_llama, api.make_config("rtn", spec))
    assert ev.run(g).kl_mean < ev.run(r).kl_mean


def test_leftover_linear_outside_blocks_is_calibrated(tiny_bert, text_file) -> None:
    q, rep = api.quantize(tiny_bert, api.make_config("gptq", QuantSpec(4, True, 32)),
                          calib=api.CalibSettings(str(text_file), 2, 32))
    assert "pooler.dense" in rep.layers and rep.calibration.to_dict()["unreached"] == []


def test_calibrated_method_errors(tiny_llama, text_file, tmp_path) -> None:
    cfg = api.make_config("gptq", QuantSpec(4, True, 32))
    with pytest.raises(InputError, match="needs calibration data"):
        api.quantize(tiny_llama, cfg)
    short = tmp_path / "short.txt"
    short.write_text("too short")
    with pytest.raises(CalibrationError, match="fewer than one window"):
        api.quantize(tiny_llama, cfg, calib=api.CalibSettings(str(short), 4, 64))
    with pytest.raises(InputError, match="match none"):
        api.quantize(tiny_llama, cfg, calib=str(text_file), targets=[r"does_not_exist"])
    with pytest.raises(InputError, match="no nn.Linear"):
        api.quantize(nn.Sequential(nn.Conv1d(2, 2, 1)), cfg, calib=str(text_file))
