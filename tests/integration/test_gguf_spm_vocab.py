"""SentencePiece vocabularies converted by lowbit from Hugging Face tokenizers, tokenized by llama.cpp
itself (`make reference`; skipped without it).

- The real Llama (SPM) and Phi-3 vocabularies, from the vocabulary files llama.cpp ships in its source
  (build/reference, or $LOWBIT_LLAMA_VOCABS), read by transformers into Hugging Face tokenizers: lowbit's
  file gives llama.cpp's test-tokenizer-0 expected ids (made by the real Hugging Face tokenizers) on all
  of its strings, and transformers' ids on pydoc / stdlib samples.
- A SentencePiece model trained here, under transformers' Llama and Gemma tokenizers: transformers' ids."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tests.unit.test_gguf_archs import tiny
from tests.unit.test_gguf_vocab_spm import spm_tokenizer, train_spm

ROOT = Path(__file__).resolve().parents[2]


def vocab_dir() -> Path | None:
    """llama.cpp's own vocabulary files (models/ggml-vocab-*.gguf with .inp / .out), where `make reference`
    unpacked its source."""
    env = os.environ.get("LOWBIT_LLAMA_VOCABS")
    found = [Path(env)] if env else sorted((ROOT / "build" / "reference").glob("llama_cpp_python-*/vendor/llama.cpp/models"))
    return found[-1] if found and (found[-1] / "ggml-vocab-llama-spm.gguf").is_file() else None


def _llama():
    from lowbit.metrics import llamacpp

    if not llamacpp.available():
        pytest.skip("llama-cpp-python is not installed (make reference)")
    from llama_cpp import Llama
    return Llama


def _samples() -> list[str]:
    from lowbit.calib import load_corpus

    return [doc()[:1500] for data in ("pydoc:eval", "stdlib:eval") for doc in load_corpus(data).docs[:8]]


def tokens(llm, text: str) -> list[int]:
    return llm.tokenize(text.encode(), add_bos=False, special=False)


@pytest.mark.parametrize(("name", "arch"), [("llama-spm", "llama"), ("phi-3", "phi3")])
def test_real_vocabularies_tokenize_as_the_hugging_face_tokenizers(name: str, arch: str, tmp_path) -> None:
    Llama = _llama()
    models = vocab_dir()
    if models is None:
        pytest.skip("llama.cpp's vocabulary files are not unpacked (make reference)")
    import transformers

    from lowbit.writers.gguf import export_gguf

    tok = transformers.AutoTokenizer.from_pretrained(models, gguf_file=f"ggml-vocab-{name}.gguf")
    out = tmp_path / f"{name}.gguf"
    export_gguf(tiny(arch, tok), out, "F32")  # the vocabulary converted from the HF tokenizer, not copied
    mine = Llama(model_path=str(out), n_ctx=64, verbose=False, vocab_only=True)
    inputs = (models / f"ggml-vocab-{name}.gguf.inp").read_text().split("\n__ggml_vocab_test__\n")
    expected = [[int(i) for i in line.split()] for line in (models / f"ggml-vocab-{name}.gguf.out").read_text().split("\n")]
    assert len(inputs) == len(expected) > 40
    for text, want in zip(inputs, expected):
        assert tokens(mine, text) == want, text[:60]
    for text in _samples():
        assert tokens(mine, text) == tok(text, add_special_tokens=False)["input_ids"], text[:60]
    assert mine.tokenize(b"hi", add_bos=True)[0] == tok.bos_token_id


def test_trained_sentencepiece_under_llama_and_gemma_tokenizers(tmp_path) -> None:
    Llama = _llama()
    from lowbit.writers.gguf import export_gguf

    model = train_spm(tmp_path / "spm")
    for cls, arch in (("LlamaTokenizer", "llama"), ("GemmaTokenizer", "gemma2"), ("GemmaTokenizer", "gemma3")):
        tok = spm_tokenizer(model, cls, tmp_path / cls)
        out = tmp_path / f"{arch}.gguf"
        export_gguf(tiny(arch, tok), out, "F32")
        mine = Llama(model_path=str(out), n_ctx=64, verbose=False, vocab_only=True)
        for text in _samples():
            assert tokens(mine, text) == tok(text, add_special_tokens=False)["input_ids"], (cls, text[:60])
