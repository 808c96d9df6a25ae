"""minilm (a BERT encoder) as a GGUF file that llama.cpp embeds with: mean-pooled embeddings of 32
passages against transformers', and the same WordPiece tokens. Needs llama-cpp-python (`make reference`)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from lowbit.calib import load_corpus
from lowbit.loaders import load_model
from lowbit.writers.gguf import export_gguf

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                reason="llama-cpp-python not installed (make reference)")


def passages(n: int = 32) -> list[str]:
    text = " ".join(d() for d in load_corpus("pydoc:eval").docs[:20])
    words = text.split()
    return [" ".join(words[i * 40 : i * 40 + 40]) for i in range(n)]  # well under 256 tokens each


@pytest.mark.parametrize(("mix", "bound"), [("F32", 0.999), ("Q8_0", 0.99)])
def test_llamacpp_embeds_like_transformers(tmp_path, mix: str, bound: float) -> None:
    from llama_cpp import Llama

    h = load_model("minilm")
    export_gguf(h, tmp_path / "m.gguf", mix)
    texts = passages()
    enc = h.tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        states = h.model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    want = ((states * mask).sum(1) / mask.sum(1)).numpy()
    llm = Llama(model_path=str(tmp_path / "m.gguf"), embedding=True, n_ctx=512, verbose=False)
    cos = []
    for text, ref, ids in zip(texts, want, enc["input_ids"]):
        assert llm.tokenize(text.encode(), add_bos=True, special=False) == [int(i) for i in ids if i != 0]
        got = np.asarray(llm.embed(text, normalize=False), dtype=np.float32)
        cos.append(float(got @ ref / np.linalg.norm(got) / np.linalg.norm(ref)))
    assert min(cos) >= bound, (mix, min(cos))
