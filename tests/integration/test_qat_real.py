"""QAT on real data: the digits CNN (scikit-learn's bundled images) at 2 bits recovers what PTQ loses;
smollm2 at 3 bits, distilled on pydoc:calib, lowers KL on held-out pydoc:eval text below RTN's and
exports (lowbit checkpoint, compressed-tensors read back by transformers) with identical logits; minilm at
3 bits moves closer to the float embeddings."""

from __future__ import annotations

import pytest
import torch

from lowbit import api, qat
from lowbit.examples import digits
from lowbit.loaders import ModelHandle, load_model
from lowbit.metrics.run import EvalSettings, Evaluator
from lowbit.modules.kernel_mode import kernel_mode
from lowbit.spec import QuantSpec


def test_digits_2bit_qat_recovers_what_ptq_loses() -> None:
    pytest.importorskip("sklearn", reason="the digits example needs scikit-learn (a dev dependency)")
    d = digits.data()
    model = digits.train_float(d)
    float_acc = digits.accuracy(model, d.x_test, d.y_test)
    p = qat.prepare(ModelHandle(model=model, kind="module", name="digits"), "int2-asym-ch", ignore=[])
    ptq_acc = digits.accuracy(qat.convert(p).model, d.x_test, d.y_test)
    qat.train(p, (d.x_train, d.y_train), qat.TrainSettings(steps=600, lr=1e-3, batch=64, distill=False))
    qat_acc = digits.accuracy(qat.convert(p).model, d.x_test, d.y_test)
    assert float_acc > 0.97
    assert qat_acc >= float_acc - 0.02, (float_acc, qat_acc)  # measured: 0.9844 float, 0.9800 QAT
    assert ptq_acc <= float_acc - 0.02, (float_acc, ptq_acc)  # measured: 0.9444


@pytest.fixture(scope="module")
def smollm2_qat(smollm2):
    p = qat.prepare(smollm2, "int3-asym-g64", start="rtn")
    data = qat.lm_batches(smollm2, "pydoc:calib", 24, 128)
    res = qat.train(p, data, qat.TrainSettings(steps=24, lr=2e-5, seq_len=128, distill=True, data="pydoc:calib"))
    return qat.convert(p), res


def test_smollm2_3bit_qat_beats_rtn_on_held_out_text(smollm2, smollm2_qat) -> None:
    converted, res = smollm2_qat
    ev = Evaluator(smollm2, EvalSettings(windows=1, speed=False))
    rtn, _ = api.quantize(smollm2, api.make_config("rtn", QuantSpec(3, False, 64)))
    rtn_kl, qat_kl = ev.run(rtn).kl_mean, ev.run(converted).kl_mean
    assert res.steps == 24 and sum(res.losses[-4:]) < sum(res.losses[:4])
    assert qat_kl < 0.9 * rtn_kl, (rtn_kl, qat_kl)  # 30 such steps: 0.77x (bench/qat.py --quick)


def test_smollm2_qat_exports_and_reloads_identically(smollm2, smollm2_qat, tmp_path) -> None:
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    converted, _ = smollm2_qat
    ids = smollm2.tokenizer("The capital of France is Paris, and the capital of Italy is", return_tensors="pt").input_ids
    with torch.inference_mode(), kernel_mode(converted.model, "dequant"):
        ours = converted.model(input_ids=ids).logits
        back = load_model(api.save(converted, tmp_path / "ckpt"))
        with kernel_mode(back.model, "dequant"):  # a reloaded model's layers start in "auto"
            assert torch.equal(back.model(input_ids=ids).logits, ours)
        assert back.quant["method"]["method"] == "qat" and back.quant["method"]["steps"] == 24
        ct = api.export(converted, tmp_path / "ct", fmt="compressed-tensors")
        m = AutoModelForCausalLM.from_pretrained(ct, quantization_config=CompressedTensorsConfig(dequantize=True)).eval()
        assert torch.equal(m(input_ids=ids).logits, ours)


def test_minilm_3bit_distillation_moves_toward_the_float_embeddings(minilm) -> None:
    ev = Evaluator(minilm, EvalSettings(speed=False, texts=32))
    rtn, _ = api.quantize(minilm, api.make_config("rtn", QuantSpec(3, False, 64)))
    p = qat.prepare(minilm, "int3-asym-g64")
    qat.train(p, qat.encoder_batches(minilm, "pydoc:calib", 120, 128), qat.TrainSettings(steps=30, lr=3e-5, batch=4))
    rtn_cos, qat_cos = ev.run(rtn).cosine_mean, ev.run(qat.convert(p)).cosine_mean
    assert 1 - qat_cos < 0.85 * (1 - rtn_cos), (rtn_cos, qat_cos)  # bench/qat.py --quick: 0.841 -> 0.898 (0.64x)
