"""smollm2 in NF4 + double quantization: 4.127 bits per weight, saved, reloaded, exported for transformers +
bitsandbytes, and (with bitsandbytes installed) loaded there and generating the same continuation."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from lowbit import api
from lowbit.loaders import load_model


@pytest.fixture(scope="module")
def nf4(smollm2, tmp_path_factory):
    qh, rep = api.quantize(smollm2, api.make_config("nf4", double_quant=True))
    d = tmp_path_factory.mktemp("nf4")
    return qh, rep, api.save(qh, d / "ckpt"), api.export(qh, d / "bnb", fmt="bitsandbytes")


def test_nf4_dq_round_trip(nf4, smollm2) -> None:
    qh, rep, ckpt, _ = nf4
    assert abs(rep.bits_per_weight - 4.127) < 0.01
    ids = smollm2.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(load_model(str(ckpt)).model(ids).logits, qh.model(ids).logits)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")
def test_transformers_bitsandbytes_runs_the_export(nf4, smollm2) -> None:
    from transformers import AutoModelForCausalLM

    qh, _, _, out = nf4
    m = AutoModelForCausalLM.from_pretrained(out, device_map="cpu")
    ids = smollm2.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        a, b = m(ids).logits, qh.model(ids).logits
    assert float((a - b).norm() / b.norm()) < 0.05 and bool((a.argmax(-1) == b.argmax(-1)).all())
    text = smollm2.tokenizer.decode(m.generate(ids, max_new_tokens=4, do_sample=False)[0])
    assert "Paris" in text
