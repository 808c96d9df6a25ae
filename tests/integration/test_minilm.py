"""minilm (BERT encoder): RTN scored by embedding cosine; checkpoint round trip."""

from __future__ import annotations

from pathlib import Path

import torch

from lowbit import api
from lowbit.metrics.run import EvalSettings, Evaluator
from lowbit.loaders import load_model
from lowbit.spec import QuantSpec


def test_minilm_rtn_int8_cosine(minilm):
    assert minilm.kind == "encoder" and type(minilm.model).__name__ == "BertModel"
    ev = Evaluator(minilm, EvalSettings(data="pydoc:eval", texts=32, speed=False))
    q8, rep = api.quantize(minilm, api.make_config("rtn", QuantSpec(8, True, -1)))
    assert len(rep.layers) == 37  # 6 layers x (q, k, v, attn out, intermediate, out) + pooler
    assert "pooler.dense" in rep.layers
    assert all("embeddings" in n for n in rep.skipped) and len(rep.skipped) == 3
    r8 = ev.run(q8)
    assert r8.cosine_mean >= 0.999, r8.cosine_mean
    q3, _ = api.quantize(minilm, api.make_config("rtn", QuantSpec(3, True, 64)))
    r3 = ev.run(q3)
    assert r3.cosine_mean < r8.cosine_mean  # fewer bits, measurably further away


def test_minilm_checkpoint_roundtrip(minilm, tmp_path: Path):
    q, _ = api.quantize(minilm, api.make_config("rtn", QuantSpec(4, False, 32)))
    back = load_model(api.save(q, tmp_path / "m4"))
    enc = minilm.tokenizer(["a quantized encoder", "still embeds text"], padding=True, return_tensors="pt")
    with torch.inference_mode():
        assert torch.equal(q.model(**enc).last_hidden_state, back.model(**enc).last_hidden_state)
