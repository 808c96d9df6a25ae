"""The pre-tokenizer name lowbit writes in ``tokenizer.ggml.pre`` (writers/gguf_vocab.py), read off the
Hugging Face tokenizer's own pre-tokenizer (tests/integration/test_gguf_pre_tokenizer.py: llama.cpp
then splits real text as transformers does)."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging

import gguf
import pytest
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

from lowbit.writers.gguf_vocab import pre_tokenizer_name

LLAMA3, QWEN2 = GGUF_PRE_TOKENIZER_SPLITS["llama-bpe"], GGUF_PRE_TOKENIZER_SPLITS["qwen2"]


def _split(regex: str) -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(regex), behavior="isolated"),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


VARIANTS = {  # pre-tokenizer -> the name llama.cpp knows it by
    "gpt-2": pre_tokenizers.ByteLevel(add_prefix_space=False),
    "smollm": pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                       pre_tokenizers.ByteLevel(add_prefix_space=False)]),
    "llama3": _split(LLAMA3),
    "qwen2": _split(QWEN2),
}


def _spec(pre: pre_tokenizers.PreTokenizer | None) -> dict:
    tk = Tokenizer(models.BPE(vocab={"a": 0, "b": 1}, merges=[]))
    if pre is not None:
        tk.pre_tokenizer = pre
    return json.loads(tk.to_str())


@pytest.mark.parametrize("name", list(VARIANTS))
def test_known_pre_tokenizers_get_llama_cpp_s_name(name: str) -> None:
    assert pre_tokenizer_name(_spec(VARIANTS[name])) == name


@pytest.mark.parametrize("pre", [
    None,
    pre_tokenizers.Metaspace(),  # SentencePiece-style: not a byte-level BPE split
    pre_tokenizers.ByteLevel(add_prefix_space=True),  # a leading space added: llama.cpp's gpt-2 adds none
    pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=False), pre_tokenizers.ByteLevel()]),
    _split(r"\p{L}+|\s+"),  # a regex no llama.cpp name stands for
    pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3), behavior="removed"),
                             pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
])
def test_other_pre_tokenizers_have_no_name(pre) -> None:
    assert pre_tokenizer_name(_spec(pre)) is None


def test_the_export_records_the_name_and_warns_without_one(tiny_llama, tmp_path, caplog) -> None:
    from lowbit.writers.gguf import export_gguf

    h = copy.deepcopy(tiny_llama)
    for pre, want in ((VARIANTS["smollm"], "smollm"), (pre_tokenizers.Metaspace(), "default")):
        h.tokenizer.backend_tokenizer.pre_tokenizer = pre
        out = tmp_path / f"{want}.gguf"
        with caplog.at_level(logging.WARNING, logger="lowbit.writers.gguf_vocab"):
            caplog.clear()
            export_gguf(h, out, "F32")
        field = gguf.GGUFReader(str(out)).fields["tokenizer.ggml.pre"]
        assert bytes(field.parts[field.data[0]]).decode() == want
        assert ("has no llama.cpp name" in caplog.text) == (want == "default")
