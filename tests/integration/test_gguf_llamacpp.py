"""smollm2 exported by lowbit runs in llama.cpp itself (needs llama-cpp-python: `make reference`)."""

from __future__ import annotations

import pytest

from lowbit.metrics import llamacpp

pytestmark = pytest.mark.skipif(not llamacpp.available(), reason="llama-cpp-python not installed (make reference)")


def _answer(path) -> str:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=256, n_threads=1, verbose=False)
    return llm("The capital of France is", max_tokens=16, temperature=0.0)["choices"][0]["text"]


def test_exports_generate_in_llamacpp(tmp_path) -> None:
    """Greedy continuations of "The capital of France is" in llama.cpp: " Paris." as from the original file."""
    from lowbit.writers.gguf import export_gguf
    from lowbit.loaders import load_model

    ref = load_model("smollm2")
    q8, q4 = tmp_path / "q8.gguf", tmp_path / "q4km.gguf"
    export_gguf(ref, q8, "Q8_0")
    assert "Paris" in _answer(q8)
    summary = export_gguf(ref, q4, "Q4_K_M")
    assert summary["types"]["blk.0.ffn_down.weight"] == "Q6_K"
    assert "Paris" in _answer(q4)
