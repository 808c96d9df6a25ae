"""One pipeline for every method: each registered method runs through ``lowbit.quantize(model,
make_config(NAME, ...))``, returns the one typed report, and its checkpoint reloads with the same logits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lowbit
from lowbit.errors import InputError
from lowbit.methods import METHODS, get_method
from lowbit.modules.kernel_mode import kernel_mode
from lowbit.pipeline import QuantizeReport

IDS = torch.tensor([[5, 9, 13, 40, 7, 3, 22, 61]])
CASES = {  # name -> (config options, needs a 256-wide model)
    "rtn": ({}, False), "hqq": ({}, False), "gptq": ({}, False), "awq": ({}, False),
    "nf4": ({"double_quant": True}, False), "fp4": ({}, False), "int8": ({"threshold": 6.0}, False),
    "w8a8": ({"act": "static", "smooth": True, "alpha": 0.5}, False), "gguf": ({"type": "Q4_K"}, True),
}


def _logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad(), kernel_mode(model, "dequant"):
        return model(IDS).logits


def test_every_registered_method_is_covered() -> None:
    assert set(METHODS.names()) == set(CASES) | {"qat"}  # qat converts a prepared model: tests/unit/test_qat.py


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_method_through_lowbit_quantize(name: str, tiny_llama_factory, text_file, tmp_path) -> None:
    options, wide = CASES[name]
    ref = tiny_llama_factory(hidden_size=256, intermediate_size=512, num_attention_heads=4) if wide else tiny_llama_factory()
    spec = lowbit.QuantSpec(4, False, 32) if get_method(name).takes_spec else None
    calib = lowbit.CalibSettings(str(text_file), n_samples=2, seq_len=32) if get_method(name).needs else None
    q, rep = lowbit.quantize(ref, lowbit.make_config(name, spec, **options), calib=calib)
    assert isinstance(rep, QuantizeReport) and rep.method == name and rep.config.method == name
    assert rep.layers and "lm_head" in rep.skipped and "model.embed_tokens" in rep.skipped
    assert all(type(q.model.get_submodule(n)) is not nn.Linear for n in rep.layers)
    assert 1 < rep.bits_per_weight < 10 and rep.quantized_params == sum(
        ref.model.get_submodule(n).weight.numel() for n in rep.layers)
    assert (rep.calibration.tokens > 0) == bool(get_method(name).needs)
    assert q.quant["method"] == rep.config.to_dict() and list(q.quant["layers"]) == rep.layers
    out = lowbit.save(q, tmp_path / name)
    back = lowbit.load(str(out))
    assert torch.equal(_logits(back.model), _logits(q.model))
    rel = float((_logits(q.model) - _logits(ref.model)).norm() / _logits(ref.model).norm())
    assert rel < 0.5, rel  # quantized, not broken
    assert type(back.model.get_submodule(rep.layers[-1])) is type(q.model.get_submodule(rep.layers[-1]))


def test_layer_methods_refuse_a_spec_and_embeddings(tiny_llama) -> None:
    with pytest.raises(InputError, match="takes no bits"):
        lowbit.make_config("nf4", lowbit.QuantSpec(4, True, 64))
    with pytest.raises(InputError, match="quantizes Linear layers only"):
        lowbit.quantize(tiny_llama, lowbit.make_config("int8"), embeddings=True)


def test_a_width_a_type_cannot_take_fails_before_any_work(tiny_llama) -> None:
    before = {k: v.clone() for k, v in tiny_llama.model.state_dict().items()}
    with pytest.raises(InputError, match="multiple of 256"):
        lowbit.quantize(tiny_llama, lowbit.make_config("gguf", type="Q4_K"))  # hidden 64
    assert all(torch.equal(v, tiny_llama.model.state_dict()[k]) for k, v in before.items())


def test_gguf_method_blocks_are_what_gguf_export_writes(tiny_llama_factory, tmp_path) -> None:
    import gguf
    import numpy as np

    ref = tiny_llama_factory(hidden_size=256, intermediate_size=512, num_attention_heads=4)
    q, _ = lowbit.quantize(ref, lowbit.make_config("gguf", type="Q5_K"))
    path = lowbit.export(q, tmp_path / "m.gguf", fmt="gguf", gguf_type="Q5_K_M")
    tensors = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    down = q.model.get_submodule("model.layers.0.mlp.down_proj")
    t = tensors["blk.0.ffn_down.weight"]
    assert t.tensor_type.name == "Q5_K" and np.array_equal(np.asarray(t.data).reshape(-1), down.raw().reshape(-1))


def test_encoders_calibrate_block_by_block_on_token_windows(tiny_bert, text_file) -> None:
    """GPTQ on an encoder sees n_samples windows of seq_len tokens (the float pass of W8A8 sees passages)."""
    cal = lowbit.CalibSettings(str(text_file), n_samples=2, seq_len=24)
    _, rep = lowbit.quantize(tiny_bert, lowbit.make_config("gptq", lowbit.QuantSpec(4, False, 32)), calib=cal)
    assert rep.calibration.samples == 2 and rep.calibration.tokens == 48
    _, rep8 = lowbit.quantize(tiny_bert, lowbit.make_config("w8a8"), calib=cal)
    assert rep8.calibration.schedule == "float" and rep8.calibration.samples == 2  # batches of 16 passages
