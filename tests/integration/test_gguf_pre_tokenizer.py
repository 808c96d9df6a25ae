"""lowbit's GGUF vocabulary in llama.cpp (`make reference`; skipped without it): smollm2's vocabulary under
each pre-tokenizer lowbit names (writers/gguf_vocab.py), tokenized by llama.cpp, equals transformers'."""

from __future__ import annotations

import copy
import dataclasses

import pytest
from tests.unit.test_gguf_vocab import VARIANTS


def test_llama_cpp_splits_real_text_as_transformers(smollm2, tmp_path) -> None:
    """smollm2's vocabulary under each pre-tokenizer: lowbit's file, tokenized by llama.cpp, gives
    transformers' tokens on 8 pydoc:eval and 8 stdlib:eval samples (digits, code, punctuation)."""
    from lowbit.metrics import llamacpp

    if not llamacpp.available():
        pytest.skip("llama-cpp-python is not installed (make reference)")
    from llama_cpp import Llama

    from lowbit.calib import load_corpus
    from lowbit.writers.gguf import export_gguf

    # its vocabulary converted from the Hugging Face tokenizer (not copied from the source file)
    h = dataclasses.replace(smollm2, gguf_source=None, tokenizer=copy.deepcopy(smollm2.tokenizer))
    samples = [doc()[:1500] for data in ("pydoc:eval", "stdlib:eval") for doc in load_corpus(data).docs[:8]]
    for name, pre in VARIANTS.items():
        h.tokenizer.backend_tokenizer.pre_tokenizer = pre
        out = tmp_path / f"{name}.gguf"
        export_gguf(h, out, "Q8_0")
        llm = Llama(model_path=str(out), n_ctx=64, verbose=False, vocab_only=True)
        for text in samples:
            want = h.tokenizer(text, add_special_tokens=False)["input_ids"]
            assert llm.tokenize(text.encode(), add_bos=False, special=False) == want, (name, text[:80])
        out.unlink()
