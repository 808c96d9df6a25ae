"""W8A8 (SmoothQuant-style) on tiny models: the integer arithmetic is emulated exactly, smoothing is
function-preserving and finds the norms (and up_proj for down_proj), it lowers the static-activation
error when an activation channel has outliers, and the real int8 GEMM agrees with the emulation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lowbit
from lowbit.calib.settings import CalibSettings
from lowbit.compare.candidates import candidates_for
from lowbit.errors import InputError
from lowbit.modules.int8_kernels import int8_engine
from lowbit.modules.kernel_mode import kernel_mode
from lowbit.modules.w8a8_linear import W8A8Linear
from lowbit.pipeline.model_scope import folds_of


def quantize_w8a8(model, act="dynamic", smooth=False, alpha=None, calib="pydoc:calib", n_samples=16, seq_len=512):
    cfg = lowbit.make_config("w8a8", act=act, smooth=smooth, alpha=alpha)
    return lowbit.quantize(model, cfg, calib=CalibSettings(calib, n_samples, seq_len))


def test_emulation_is_the_integer_arithmetic() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(96, 40)
    m = W8A8Linear(lin, "dynamic")
    x = torch.randn(3, 5, 96)
    s = x.abs().amax(-1, keepdim=True) / 127
    xq = torch.clamp(torch.round(x / s), -127, 127).to(torch.int64)
    acc = xq @ m.qweight.to(torch.int64).T  # exact int accumulation
    want = acc.double() * s.double() * m.wscale.double() + lin.bias.detach().double()
    with kernel_mode(m, "dequant"):
        got = m(x)
    assert torch.allclose(got.double(), want, rtol=1e-6, atol=1e-6)
    assert m.qweight.dtype == torch.int8 and int(m.qweight.abs().max()) == 127
    assert float((m.dequantize() - lin.weight).abs().max()) <= float(m.wscale.max()) / 2 + 1e-7


@pytest.mark.skipif(int8_engine() is None, reason="torch has no int8 GEMM engine here")
def test_int8_gemm_agrees_with_the_emulation() -> None:
    torch.manual_seed(1)
    m = W8A8Linear(nn.Linear(128, 64), "dynamic")
    x = torch.randn(16, 128)
    with kernel_mode(m, "dequant"):
        e = m(x)
    g = m(x)  # the x86 / fbgemm kernel (per-tensor activation quantization inside)
    assert not torch.equal(g, e) and float((g - e).norm() / e.norm()) < 0.05


def test_smoothing_finds_its_producers_and_preserves_the_float_model(tiny_llama, text_file) -> None:
    names = [n for n, mod in tiny_llama.model.named_modules() if isinstance(mod, nn.Linear) and "lm_head" not in n]
    from lowbit.calib import load_corpus, token_windows

    win = token_windows(load_corpus(str(text_file)), tiny_llama.tokenizer, 2, 32, 0)
    folds, width = folds_of(tiny_llama.model, names, win)
    fed_by = {c: p for p, cs in folds for c in cs}
    assert width == tiny_llama.model.config.hidden_size
    assert fed_by["model.layers.0.self_attn.q_proj"] == "model.layers.0.input_layernorm"
    assert fed_by["model.layers.0.mlp.gate_proj"] == "model.layers.0.post_attention_layernorm"
    assert fed_by["model.layers.0.mlp.down_proj"] == "model.layers.0.mlp.up_proj"
    assert "model.layers.0.self_attn.o_proj" not in fed_by  # grouped-query attention: no exact fold
    _, rep = quantize_w8a8(tiny_llama, "static", True, alpha=0.5, calib=str(text_file), n_samples=2, seq_len=32)
    assert rep.details["smoothed_layers"] == sorted(fed_by) and 8 < rep.bits_per_weight < 9  # + a float32 scale per row
    assert rep.details["alpha"] == 0.5 and rep.calibration.schedule == "float"


def test_static_smoothing_helps_with_an_outlier_channel(tiny_llama, text_file) -> None:
    """Inflate one channel of every input norm (an activation outlier); per-tensor static scales
    then waste their range on it, and smoothing moves it into the weights."""
    with torch.no_grad():
        for layer in tiny_llama.model.model.layers:
            layer.input_layernorm.weight[3] *= 60
            layer.post_attention_layernorm.weight[5] *= 60
    ids = torch.tensor([[5, 9, 13, 40, 7, 3, 22, 61, 12, 30]])
    with torch.no_grad():
        ref = tiny_llama.model(ids).logits
    err = {}
    for smooth in (False, True):
        qh, _ = quantize_w8a8(tiny_llama, "static", smooth, alpha=0.5, calib=str(text_file), n_samples=2, seq_len=32)
        with torch.no_grad(), kernel_mode(qh.model, "dequant"):
            err[smooth] = float((qh.model(ids).logits - ref).norm() / ref.norm())
    assert err[True] < 0.7 * err[False], err


def test_bad_options_and_registration(tiny_llama, text_file) -> None:
    with pytest.raises(InputError, match="act"):
        quantize_w8a8(tiny_llama, "weekly", calib=str(text_file))
    with pytest.raises(InputError, match="alpha"):
        quantize_w8a8(tiny_llama, "dynamic", True, alpha=1.5, calib=str(text_file))
    with pytest.raises(InputError, match="needs calibration data"):
        lowbit.quantize(tiny_llama, lowbit.make_config("w8a8"))
    with pytest.raises(InputError, match="takes no bits"):
        lowbit.make_config("w8a8", lowbit.QuantSpec(8, True, -1))
    assert "w8a8" in {c.family for c in candidates_for("causal-lm", None)}


def test_encoders_calibrate_on_passages(tiny_bert, text_file) -> None:
    """BERT-style (post-norm): every LayerNorm output is also a residual, so no smoothing fold is exact;
    lowbit finds that (each fold tried and undone), quantizes unsmoothed, and stays close to float."""
    from lowbit.calib import load_corpus, sample_texts

    before = {k: v.clone() for k, v in tiny_bert.model.state_dict().items()}
    qh, rep = quantize_w8a8(tiny_bert, "static", True, alpha=None, calib=str(text_file), n_samples=2)
    assert rep.details["smoothed_layers"] == [] and rep.calibration.tokens > 0
    assert all(torch.equal(v, tiny_bert.model.state_dict()[k]) for k, v in before.items()), "the trial folds are undone"
    texts = sample_texts(load_corpus(str(text_file)), 4)
    enc = tiny_bert.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad(), kernel_mode(qh.model, "dequant"):
        a, b = qh.model(**enc).last_hidden_state, tiny_bert.model(**enc).last_hidden_state
    assert float(torch.nn.functional.cosine_similarity(a, b, dim=-1).mean()) > 0.95
    assert "w8a8" in {c.family for c in candidates_for("encoder", None)}
