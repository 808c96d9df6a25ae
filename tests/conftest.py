"""Shared fixtures: tiny randomly initialised models and a character-level tokenizer.

Nothing here downloads or loads a real model; everything is built from a config in milliseconds, so
both unit and integration tests can use these fixtures freely.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("LOWBIT_PROGRESS", "0")

import pytest

# Printable ASCII plus newline and tab: 97 characters + 3 specials = 100 ids, below the tiny vocab (128).
TINY_SPECIALS = ("<pad>", "<eos>", "<unk>")
TINY_CHARS = tuple(chr(c) for c in range(32, 127)) + ("\n", "\t")
TINY_VOCAB = 128


def make_tiny_tokenizer():
    """A character-level fast tokenizer (BPE with no merges): one token per character."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(TINY_SPECIALS + TINY_CHARS)}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
                                   model_max_length=512)


def make_tiny_llama(seed: int = 0, tokenizer=None, **overrides):
    """A 2-layer LLaMA (hidden 64, tied embeddings) with random weights, as a causal-lm ModelHandle."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lowbit.loaders import ModelHandle

    kw = {"vocab_size": TINY_VOCAB, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": True,
          "max_position_embeddings": 512}
    kw.update(overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**kw)).eval()
    return ModelHandle(model=model, tokenizer=tokenizer or make_tiny_tokenizer(), kind="causal-lm", name="tiny")


def make_tiny_bert(seed: int = 0, tokenizer=None, **overrides):
    """A 2-layer BERT encoder (hidden 64) with random weights, as an encoder ModelHandle."""
    import torch
    from transformers import BertConfig, BertModel

    from lowbit.loaders import ModelHandle

    kw = {"vocab_size": TINY_VOCAB, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
          "intermediate_size": 128}
    kw.update(overrides)
    torch.manual_seed(seed)
    model = BertModel(BertConfig(**kw)).eval()
    return ModelHandle(model=model, tokenizer=tokenizer or make_tiny_tokenizer(), kind="encoder", name="tiny-bert")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """Character-level tokenizer (100 ids, eos and pad set). Shared: do not mutate."""
    return make_tiny_tokenizer()


@pytest.fixture
def tiny_llama(tiny_tokenizer):
    """A fresh tiny LLaMA ModelHandle (kind causal-lm, seed 0) per test."""
    return make_tiny_llama(tokenizer=tiny_tokenizer)


@pytest.fixture
def tiny_bert(tiny_tokenizer):
    """A fresh tiny BERT ModelHandle (kind encoder, seed 0) per test."""
    return make_tiny_bert(tokenizer=tiny_tokenizer)


@pytest.fixture
def tiny_llama_factory(tiny_tokenizer):
    """``make(seed=0, **config_overrides)`` -> a fresh tiny LLaMA handle (e.g. ``vocab_size=50``)."""
    return lambda seed=0, **kw: make_tiny_llama(seed, tokenizer=tiny_tokenizer, **kw)


@pytest.fixture
def tiny_llama_dir(tmp_path, tiny_llama):
    """The tiny LLaMA and its tokenizer written with save_pretrained, as a Hugging Face directory."""
    path = tmp_path / "tiny-llama-hf"
    tiny_llama.model.save_pretrained(path)
    tiny_llama.tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def bpe_llama():
    """A tiny Llama (hidden 256, so the k-quants apply) with a byte-pair tokenizer that has a merge."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(TINY_SPECIALS + TINY_CHARS)}
    vocab["he"] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[("h", "e")], unk_token="<unk>"))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    return make_tiny_llama(tokenizer=tok, hidden_size=256, intermediate_size=512, vocab_size=len(vocab),
                           num_hidden_layers=8)


@pytest.fixture
def text_file(tmp_path):
    """A small English text file (several paragraphs, a few thousand characters)."""
    paras = [
        f"Paragraph {i}: the quick brown fox jumps over the lazy dog while counting to {i * 7}. "
        "Quantization maps real weights onto a small integer grid and stores one scale per block."
        for i in range(24)
    ]
    path = tmp_path / "data.txt"
    path.write_text("\n\n".join(paras), encoding="utf-8")
    return path


def write_tiny_gguf(path):
    """A small valid GGUF file (arch llama, no model metadata) with an F32 and an F16 tensor."""
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_tensor("blk.0.ffn_up.weight", np.linspace(-1, 1, 32 * 64, dtype=np.float32).reshape(32, 64))
    w.add_tensor("blk.0.attn_norm.weight", np.ones((16, 32), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def tiny_gguf(tmp_path):
    """Path of a tiny valid GGUF file: tensors (32, 64) F32 and (16, 32) F16, 28.8 bits per weight."""
    return write_tiny_gguf(tmp_path / "tiny.gguf")
