"""Sequential calibration on tiny random models: blocks, shared inputs, both schedules, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lowbit
from lowbit import api
from lowbit.calib import capture
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
    st = capture.LayerStats(("hessian", "act_absmean", "act_sqmean", "inputs"))
    x = torch.randn(3, 5, 8)
    st.add(x[:2])
    st.add(x[2:])
    d = st.as_dict()
    flat = x.reshape(-1, 8)
    torch.testing.assert_close(d["hessian"], 2 * flat.t() @ flat / 15)
    torch.testing.assert_close(d["act_absmean"], flat.abs().mean(0))
    torch.testing.assert_close(d["act_sqmean"], flat.pow(2).mean(0))
    assert d["inputs"].shape == (15, 8) and int(d["rows"]) == 15


def test_only_needed_statistics_are_gathered() -> None:
    st = capture.LayerStats(("act_absmean",))
    st.add(torch.randn(4, 8))
    assert set(st.as_dict()) == {"rows", "act_absmean"}


@pytest.mark.parametrize("fused", [True, False])
def test_sequential_gptq_on_tiny_llama(tiny_llama, text_file, monkeypatch, fused: bool) -> None:
    if not fused:
        monkeypatch.setattr(capture, "FUSED_BUDGET_BYTES", 0)
    calib = api.CalibSettings(str(text_file), n_samples=4, seq_len=32)
    q, rep = api.quantize(tiny_llama, api.make_config("gptq", QuantSpec(4, False, 32)), calib=calib)
    cal = rep.extra["calibration"]
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
    assert "pooler.dense" in rep.layers and rep.extra["calibration"]["unreached"] == []


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
