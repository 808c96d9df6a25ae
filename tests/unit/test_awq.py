"""AWQ on tiny models: generic fold discovery, exact folds, scale search never worse than RTN."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lowbit
from lowbit import api
from lowbit.calib import capture
from lowbit.errors import CalibrationError, InputError
from lowbit.methods import get_method
from lowbit.methods.awq import AWQConfig, clip_rtn, output_error, search_scale
from lowbit.methods.rtn import RTNConfig, rtn
from lowbit.modules.fold import apply_fold, find_fold_targets
from lowbit.spec import QuantSpec


def _probe(handle):
    _, blocks = capture.find_blocks(handle.model)
    probe: list = []
    groups = capture.shared_input_groups(handle.model, blocks, torch.randint(3, 90, (1, 16)), probe)
    return blocks, groups, probe[0]


def test_fold_targets_found_from_the_module_tree(tiny_llama) -> None:
    blocks, groups, (args, kwargs) = _probe(tiny_llama)
    folds = find_fold_targets(blocks[0], args, kwargs, groups)
    assert folds["self_attn.q_proj"] == "input_layernorm"
    assert folds["mlp.gate_proj"] == "post_attention_layernorm"
    assert folds["mlp.down_proj"] == "mlp.up_proj"  # act(gate) * up is linear in up's rows
    assert folds["self_attn.o_proj"] is None  # grouped-query attention: v rows repeat across heads


def test_fold_targets_bert(tiny_bert) -> None:
    blocks, groups, (args, kwargs) = _probe(tiny_bert)
    folds = find_fold_targets(blocks[0], args, kwargs, groups)
    # attention.self.{query,key,value} read the block input directly (residual stream): no fold
    assert folds["attention.self.query"] is None
    assert folds["attention.output.dense"] == "attention.self.value"  # multi-head: value rows fold exactly


def test_apply_fold_preserves_the_function(tiny_llama) -> None:
    blocks, _, (args, kwargs) = _probe(tiny_llama)
    block = copy.deepcopy(blocks[0])
    with torch.no_grad():
        before = block(*args, **kwargs)
        before = before[0] if isinstance(before, tuple) else before
        s = torch.rand(64) + 0.5
        apply_fold(block.input_layernorm, [block.self_attn.q_proj, block.self_attn.k_proj, block.self_attn.v_proj], s)
        after = block(*args, **kwargs)
        after = after[0] if isinstance(after, tuple) else after
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)


def _salient_inputs(n: int = 2048, d: int = 128) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    x[:, :6] *= 30  # a few salient channels, as in LLM activations
    return x


def test_search_scale_beats_rtn_and_alpha_zero_is_rtn() -> None:
    x = _salient_inputs()
    h = 2 * x.t() @ x / x.shape[0]
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(1)) * 0.05
    cfg = AWQConfig(spec=QuantSpec(3, False, 32), clip_search=False)
    s, alpha = search_scale(w, x.abs().mean(0), h, cfg)
    rtn_err = output_error(rtn(w, RTNConfig(spec=cfg.spec)).dequantize() - w, h)
    blocks = (w * s)
    awq_err = output_error(rtn(blocks, RTNConfig(spec=cfg.spec)).dequantize() / s - w, h)
    assert alpha > 0 and awq_err < 0.9 * rtn_err
    one = AWQConfig(spec=cfg.spec, n_grid=1)  # only alpha = 0: exactly RTN
    s1, a1 = search_scale(w, x.abs().mean(0), h, one)
    assert a1 == 0.0 and torch.allclose(s1, torch.ones(128))


def test_clip_search_never_worse_than_rtn_per_block() -> None:
    x = _salient_inputs(d=64)
    h = 2 * x.t() @ x / x.shape[0]
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(2))
    w[0, 3] = 8.0  # an outlier weight worth clipping
    for spec in (QuantSpec(3, False, 32), QuantSpec(4, True, -1), QuantSpec(4, True, 0)):
        plain = output_error(rtn(w, RTNConfig(spec=spec)).dequantize() - w, h)
        clipped = output_error(clip_rtn(w, h, spec, 20, 0.5).dequantize() - w, h)
        assert clipped <= plain * (1 + 1e-6), spec


def test_awq_beats_rtn_on_tiny_llama(tiny_llama, text_file) -> None:
    ev = lowbit.Evaluator(tiny_llama, lowbit.EvalSettings(data=str(text_file), windows=2, seq_len=32, speed=False))
    spec = QuantSpec(2, False, 32)
    a, rep = api.quantize(tiny_llama, api.make_config("awq", spec), calib=api.CalibSettings(str(text_file), 8, 32))
    r, _ = api.quantize(tiny_llama, api.make_config("rtn", spec))
    assert rep.calibration.to_dict()["schedule"] == "two-pass"
    assert ev.run(a).kl_mean < ev.run(r).kl_mean


def test_awq_keeps_the_float_model_when_only_folding(tiny_llama, text_file) -> None:
    """8-bit AWQ without clipping is almost lossless: the folds themselves change nothing."""
    ev = lowbit.Evaluator(tiny_llama, lowbit.EvalSettings(data=str(text_file), windows=2, seq_len=32, speed=False))
    a, _ = api.quantize(tiny_llama, api.make_config("awq", QuantSpec(8, True, -1), clip_search=False),
                        calib=api.CalibSettings(str(text_file), 4, 32))
    assert ev.run(a).kl_mean < 1e-3


def test_awq_errors() -> None:
    with pytest.raises(CalibrationError):
        get_method("awq").fn(torch.randn(4, 32), AWQConfig(spec=QuantSpec(4, True, 32)), None)
    with pytest.raises(InputError):
        AWQConfig(n_grid=0)
    assert set(get_method("awq").needs) == {"hessian", "act_absmean"}
    with pytest.raises(InputError, match="needs calibration data"):
        api.quantize(nn.Sequential(nn.Linear(4, 4)), api.make_config("awq", QuantSpec(4, True, -1)))


@pytest.mark.parametrize("spec", [QuantSpec(4, True, 64), QuantSpec(3, False, 32), QuantSpec(4, True, -1),
                                  QuantSpec(2, False, 0)], ids=str)
def test_fused_fake_quant_matches_the_grid_exactly(spec: QuantSpec) -> None:
    from lowbit import grid
    from lowbit.methods.awq import _fake

    w = torch.randn(16, 128, generator=torch.Generator().manual_seed(3))
    blocks = grid.as_blocks(w, spec)
    shrink = torch.rand(blocks.shape[0], generator=torch.Generator().manual_seed(4)) * 0.5 + 0.5
    scale, zero = grid.qparams(blocks, spec, shrink=shrink)
    ref = grid.dequantize_blocks(grid.quantize_blocks(blocks, scale, zero, spec), scale, zero, spec).view(w.shape)
    assert torch.equal(_fake(w, spec, shrink), ref)
