"""A SentencePiece vocabulary (Llama 2's, Gemma's, Phi-3's kind: byte-pair pieces with byte fallback)
converted from the Hugging Face tokenizer into llama.cpp's ``llama`` vocabulary (writers/gguf_vocab.py).

The tokenizer is trained here by sentencepiece on pydoc text and converted by transformers, the path the
real tokenizer.json files came by. The checks are against sentencepiece itself, which llama.cpp's own
converter reads: the pieces and types, and llama.cpp's merge rule (the adjacent pair whose joined text
has the highest score, leftmost first; unknown characters as <0xNN> bytes) run on lowbit's scores gives
sentencepiece's tokens. tests/integration/test_gguf_spm_vocab.py runs llama.cpp itself."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import pytest
from tests.unit.test_gguf_archs import tiny

from lowbit.writers.gguf import export_gguf

spm = pytest.importorskip("sentencepiece", reason="sentencepiece is in the dev extra (make venv)")

USER = ["<start_of_turn>", "<end_of_turn>"]


def train_spm(dest: Path) -> Path:
    """A 3000-piece byte-pair SentencePiece model of pydoc's topics (well under a second)."""
    import pydoc_data.topics

    dest.mkdir(parents=True, exist_ok=True)
    text = "\n".join(pydoc_data.topics.topics.values())
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text.splitlines()), model_prefix=str(dest / "spm"), vocab_size=3000, model_type="bpe",
        byte_fallback=True, split_digits=True, remove_extra_whitespaces=False, normalization_rule_name="identity",
        allow_whitespace_only_pieces=True, user_defined_symbols=USER, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        num_threads=1, minloglevel=2)
    return dest / "spm.model"


def spm_tokenizer(model: Path, cls: str, dest: Path):
    """transformers' ``cls`` (LlamaTokenizer: a space before the text; GemmaTokenizer: none) made from
    the SentencePiece ``model``, as from a Hugging Face directory holding tokenizer.model."""
    import shutil

    import transformers

    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(model, dest / "tokenizer.model")
    (dest / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": cls}))
    return transformers.AutoTokenizer.from_pretrained(dest)


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory) -> Path:
    return train_spm(tmp_path_factory.mktemp("spm"))


def _vocab(tok, tmp_path: Path) -> dict:
    out = tmp_path / "v.gguf"
    export_gguf(tiny("llama", tok), out, "F32", overwrite=True)
    f = gguf.GGUFReader(str(out)).fields
    strings = lambda k: [bytes(f[k].parts[i]).decode() for i in f[k].data]
    values = lambda k: [f[k].parts[i][0].item() for i in f[k].data]
    return {"model": bytes(f["tokenizer.ggml.model"].parts[-1]).decode(), "tokens": strings("tokenizer.ggml.tokens"),
            "scores": values("tokenizer.ggml.scores"), "types": values("tokenizer.ggml.token_type"),
            "prefix": bool(f["tokenizer.ggml.add_space_prefix"].parts[-1][0])}


def llama_cpp_spm(text: str, v: dict) -> list[int]:
    """llama.cpp's SentencePiece tokenizer (llm_tokenizer_spm_session), on one piece of raw text."""
    ids = {t: i for i, t in enumerate(v["tokens"])}
    syms = list((" " + text if v["prefix"] else text).replace(" ", "\u2581"))
    while True:
        best = None
        for i in range(len(syms) - 1):
            j = ids.get(syms[i] + syms[i + 1])
            if j is not None and (best is None or v["scores"][j] > best[0]):
                best = (v["scores"][j], i)
        if best is None:
            break
        i = best[1]
        syms[i:i + 2] = [syms[i] + syms[i + 1]]
    return [k for s in syms for k in ([ids[s]] if s in ids else [ids[f"<0x{b:02X}>"] for b in s.encode()])]


SAMPLES = ["Hello  world\n\n  x = 12345 ünïcödé 日本語 😀", "def f(a, b):\n    return a ** 2 + b  # done\n"]


def _samples() -> list[str]:
    from lowbit.calib import load_corpus

    return SAMPLES + [doc()[:300] for data in ("pydoc:eval", "stdlib:eval") for doc in load_corpus(data).docs[:3]]


def test_pieces_types_and_prefix_are_sentencepiece_s(spm_model, tmp_path) -> None:
    sp = spm.SentencePieceProcessor(model_file=str(spm_model))
    for cls, prefix in (("LlamaTokenizer", True), ("GemmaTokenizer", False)):
        v = _vocab(spm_tokenizer(spm_model, cls, tmp_path / cls), tmp_path)
        assert v["model"] == "llama" and v["prefix"] is prefix
        T = gguf.TokenType
        for i in range(sp.vocab_size()):
            want = (T.UNKNOWN if sp.IsUnknown(i) else T.CONTROL if sp.IsControl(i) else T.BYTE if sp.IsByte(i)
                    else T.USER_DEFINED if sp.IdToPiece(i) in USER else T.NORMAL)
            assert (v["tokens"][i], v["types"][i]) == (sp.IdToPiece(i), want), i


def test_llama_cpp_s_merge_rule_on_lowbit_s_scores_gives_sentencepiece_s_tokens(spm_model, tmp_path) -> None:
    sp = spm.SentencePieceProcessor(model_file=str(spm_model))
    v = _vocab(spm_tokenizer(spm_model, "LlamaTokenizer", tmp_path / "llama"), tmp_path)
    for text in _samples():
        assert llama_cpp_spm(text, v) == sp.encode(text), text[:60]
    flat = dict(v, scores=[0.0] * len(v["scores"]))  # without the merge order, the same rule goes wrong
    assert sum(llama_cpp_spm(text, flat) != sp.encode(text) for text in _samples()) >= len(_samples()) // 2


def test_scores_order_merged_pieces_as_sentencepiece_does(spm_model, tmp_path) -> None:
    sp = spm.SentencePieceProcessor(model_file=str(spm_model))
    v = _vocab(spm_tokenizer(spm_model, "LlamaTokenizer", tmp_path / "llama"), tmp_path)
    merged = [i for i in range(sp.vocab_size()) if len(sp.IdToPiece(i)) > 1 and v["types"][i] == gguf.TokenType.NORMAL
              and sp.GetScore(i) != 0]
    assert len(merged) > 2000
    assert sorted(merged, key=lambda i: -v["scores"][i]) == sorted(merged, key=lambda i: -sp.GetScore(i))


def test_bos_flag_follows_the_tokenizer(spm_model, tmp_path) -> None:
    tok = spm_tokenizer(spm_model, "LlamaTokenizer", tmp_path / "llama")
    out = tmp_path / "v.gguf"
    for adds in (False, True):
        tok.add_bos_token = adds
        assert (tok("a")["input_ids"][0] == tok.bos_token_id) is adds
        export_gguf(tiny("llama", tok), out, "F32", overwrite=True)
        assert bool(gguf.GGUFReader(str(out)).fields["tokenizer.ggml.add_bos_token"].parts[-1][0]) is adds
