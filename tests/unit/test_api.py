"""api.py: quantize on a tiny LLaMA / BERT, make_config, report numbers, errors before any work."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lowbit
from lowbit.errors import InputError, ShapeError
from lowbit.loaders import ModelHandle
from lowbit.methods.rtn import RTNConfig
from lowbit.modules.qlinear import QuantizedLinear
from lowbit.spec import QuantSpec


def qlayers(model: nn.Module) -> dict[str, QuantizedLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLinear)}


def skipped_linears(model: nn.Module, skipped: list[str]) -> list[str]:
    """The skipped names that are Linear layers (reports may also list the unquantized embeddings)."""
    return [n for n in skipped if isinstance(model.get_submodule(n), nn.Linear)]


def test_quantize_tiny_llama(tiny_llama) -> None:
    before = {k: v.clone() for k, v in tiny_llama.model.state_dict().items()}
    spec = QuantSpec(4, True, 64)
    q, rep = lowbit.quantize(tiny_llama, lowbit.make_config("rtn", spec))
    assert isinstance(q, ModelHandle) and q is not tiny_llama and q.model is not tiny_llama.model
    assert q.kind == "causal-lm" and q.tokenizer is tiny_llama.tokenizer
    layers = qlayers(q.model)
    assert len(layers) == 14 and list(layers) == rep.layers
    assert isinstance(q.model.lm_head, nn.Linear) and not isinstance(q.model.lm_head, QuantizedLinear)
    assert skipped_linears(q.model, rep.skipped) == ["lm_head"]
    # the original is untouched
    assert not qlayers(tiny_llama.model)
    after = tiny_llama.model.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)
    # numbers
    assert rep.method == "rtn" and rep.spec == spec
    assert rep.quantized_params == 2 * (64 * 64 * 2 + 32 * 64 * 2 + 128 * 64 * 3)
    assert rep.bits_per_weight == pytest.approx(4.25)
    assert rep.bits_per_weight == pytest.approx(spec.bits_per_weight((64, 64)))
    assert rep.quantized_bytes == sum(m.quantized_tensor().nbytes for m in layers.values())
    assert rep.seconds >= 0
    # the record that a checkpoint will carry
    assert q.quant["method"]["method"] == "rtn" and q.quant["skipped"] == rep.skipped
    assert set(q.quant["layers"]) == set(rep.layers)
    down = q.quant["layers"]["model.layers.0.mlp.down_proj"]
    assert (down["spec"], down["shape"], down["format"]) == (spec.to_dict(), [64, 128], "intpack")
    assert q.reference_name == "tiny"


@pytest.mark.parametrize("spec, bpw", [(QuantSpec(4, False, 64), 4.375), (QuantSpec(8, True, -1), None),
                                       (QuantSpec(2, True, 32), 2.5)])
def test_report_bits_per_weight_matches_spec(tiny_llama, spec: QuantSpec, bpw: float | None) -> None:
    _, rep = lowbit.quantize(tiny_llama, lowbit.make_config("rtn", spec))
    shapes = [(64, 64), (32, 64), (32, 64), (64, 64), (128, 64), (128, 64), (64, 128)] * 2
    expect = sum(spec.bits_per_weight(s) * s[0] * s[1] for s in shapes) / sum(s[0] * s[1] for s in shapes)
    assert rep.bits_per_weight == pytest.approx(expect)
    if bpw is not None:
        assert rep.bits_per_weight == pytest.approx(bpw)


def test_quantized_model_runs_and_stays_close(tiny_llama) -> None:
    ids = torch.randint(3, 100, (1, 24), generator=torch.Generator().manual_seed(0))
    q8, _ = lowbit.quantize(tiny_llama, lowbit.make_config("rtn", QuantSpec(8, True, -1)))
    q2, _ = lowbit.quantize(tiny_llama, lowbit.make_config("rtn", QuantSpec(2, True, 64)))
    with torch.no_grad():
        ref = tiny_llama.model(input_ids=ids).logits
        e8 = (q8.model(input_ids=ids).logits - ref).abs().max()
        e2 = (q2.model(input_ids=ids).logits - ref).abs().max()
    assert 0 < e8 < e2


def test_default_config_is_rtn_int4_g64_sym(tiny_llama) -> None:
    cfg = lowbit.make_config()
    assert isinstance(cfg, RTNConfig) and cfg.spec == QuantSpec(4, True, 64, "float16") and not cfg.clip_search
    _, rep = lowbit.quantize(tiny_llama)
    assert rep.spec == QuantSpec() and rep.bits_per_weight == pytest.approx(4.25)


def test_inplace_modifies_the_input(tiny_llama) -> None:
    q, _ = lowbit.quantize(tiny_llama, inplace=True)
    assert q.model is tiny_llama.model and len(qlayers(tiny_llama.model)) == 14


def test_targets_and_ignore(tiny_llama) -> None:
    _, rep = lowbit.quantize(tiny_llama, targets=[r"mlp\."])
    assert len(rep.layers) == 6 and all(".mlp." in n for n in rep.layers)
    q, rep = lowbit.quantize(tiny_llama, ignore=[])
    assert "lm_head" in rep.layers and isinstance(q.model.lm_head, QuantizedLinear)
    assert skipped_linears(q.model, rep.skipped) == []


def test_group_size_not_dividing_raises_before_any_layer_is_replaced() -> None:
    net = nn.Sequential(nn.Linear(64, 8), nn.Linear(8, 8), nn.Linear(48, 8))  # widths 64, 8, 48
    h = ModelHandle(model=net)
    with pytest.raises(ShapeError, match=r"input width 48 of 2\b"):
        lowbit.quantize(h, lowbit.make_config("rtn", QuantSpec(4, True, 32)), ignore=[r"^1$"], inplace=True)
    assert not qlayers(net), "a layer was replaced before the shape check failed"


def test_group_size_error_on_tiny_llama(tiny_llama) -> None:
    with pytest.raises(ShapeError, match="does not divide the input width 64"):
        lowbit.quantize(tiny_llama, lowbit.make_config("rtn", QuantSpec(4, True, 128)), inplace=True)
    assert not qlayers(tiny_llama.model)


def test_nothing_selected_is_an_input_error(tiny_llama) -> None:
    with pytest.raises(InputError, match="nothing to quantize"):
        lowbit.quantize(tiny_llama, targets=[r"no-such-layer"])


def test_make_config_errors() -> None:
    with pytest.raises(InputError, match="unknown method 'rtm'.*did you mean 'rtn'"):
        lowbit.make_config("rtm")
    with pytest.raises(InputError, match="has no option bogus .its options: clip_grid"):
        lowbit.make_config("rtn", QuantSpec(), bogus=1)
    assert lowbit.make_config("RTN", clip_search=True).clip_search is True


def test_method_config_dict_round_trip() -> None:
    cfg = lowbit.make_config("rtn", QuantSpec(3, False, 32), clip_search=True, clip_grid=7)
    d = cfg.to_dict()
    assert d["method"] == "rtn" and d["version"] == 1 and d["spec"]["bits"] == 3
    assert RTNConfig.from_dict(d) == cfg


def test_quantize_bare_module_and_bert(tiny_bert) -> None:
    q, rep = lowbit.quantize(nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4)),
                             lowbit.make_config("rtn", QuantSpec(8, True, -1)))
    assert q.kind == "module" and rep.layers == ["0", "2"]
    qb, repb = lowbit.quantize(tiny_bert, lowbit.make_config("rtn", QuantSpec(4, False, 32)))
    assert qb.kind == "encoder" and len(repb.layers) == 13 and skipped_linears(qb.model, repb.skipped) == []
    assert "pooler.dense" in repb.layers


def test_save_requires_a_quantized_handle(tiny_llama, tmp_path) -> None:
    from lowbit.errors import ExportError

    with pytest.raises(ExportError, match="not quantized"):
        lowbit.save(tiny_llama, tmp_path / "out")
    assert not (tmp_path / "out").exists()
