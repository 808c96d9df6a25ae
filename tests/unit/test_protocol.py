"""The llama-perplexity protocol (consecutive chunks, BOS first, the second half scored) and the
reference's log-probs kept on disk across evaluators and reruns."""

from __future__ import annotations

import math

import pytest
import torch

import lowbit
from lowbit.calib import load_corpus
from lowbit.calib.sample import adds_bos, text_chunks
from lowbit.errors import InputError
from lowbit.metrics.lm import llama_perplexity_kl, window_logprobs
from lowbit.metrics.refstore import LogprobStore, prune, store_dir
from lowbit.metrics.run import EvalSettings, Evaluator
from lowbit.spec import QuantSpec

N_CTX = 32


def bos_tokenizer():
    """The tiny character tokenizer with a <bos> that encoding puts first (as Llama-2's does)."""
    from tests.conftest import TINY_CHARS, TINY_SPECIALS
    from tokenizers import Tokenizer, models, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate((*TINY_SPECIALS, "<bos>", *TINY_CHARS))}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tk.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>")


def test_chunks_are_consecutive_without_bos(text_file, tiny_tokenizer) -> None:
    corpus = load_corpus(str(text_file))
    chunks, text = text_chunks(corpus, tiny_tokenizer, 3, N_CTX)
    assert not adds_bos(tiny_tokenizer)
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert chunks.shape == (3, N_CTX)
    assert chunks.flatten().tolist() == ids[: 3 * N_CTX]  # the text's tokens, in order, nothing replaced
    assert text.startswith(corpus.docs[0]()[:50])  # the corpus in its own order, not shuffled


def test_chunks_put_bos_first_where_the_tokenizer_adds_it(text_file) -> None:
    tok = bos_tokenizer()
    assert adds_bos(tok)
    chunks, text = text_chunks(load_corpus(str(text_file)), tok, 3, N_CTX)
    ids = [tok.bos_token_id, *tok(text, add_special_tokens=False)["input_ids"]]
    assert (chunks[:, 0] == tok.bos_token_id).all()
    for i in range(3):  # llama-perplexity: chunk i is tokens[i*n_ctx:(i+1)*n_ctx] with its first set to BOS
        assert chunks[i, 1:].tolist() == ids[i * N_CTX + 1 : (i + 1) * N_CTX]


def test_too_little_text_for_one_chunk(tmp_path, tiny_tokenizer) -> None:
    from lowbit.errors import CalibrationError

    f = tmp_path / "short.txt"
    f.write_text("a few words")
    with pytest.raises(CalibrationError, match="fewer than one chunk of 32"):
        text_chunks(load_corpus(str(f)), tiny_tokenizer, 2, N_CTX)


def test_llama_perplexity_scores_the_second_half(tiny_llama, text_file) -> None:
    q, _ = lowbit.quantize(tiny_llama, lowbit.make_config("rtn", QuantSpec(3, False, 32)))
    s = EvalSettings(data=str(text_file), windows=3, seq_len=N_CTX, speed=False, protocol="llama-perplexity")
    ev = Evaluator(tiny_llama, s)
    res = ev.run(q)
    first = N_CTX // 2
    assert res.n_tokens == 3 * (N_CTX - 1 - first)  # llama-perplexity: n_ctx/2 - 1 tokens per chunk
    nll = kl = exact = 0.0
    agree = 0
    for w in ev.windows(tiny_llama.tokenizer):
        p, r = window_logprobs(tiny_llama.model, w)[first:], window_logprobs(q.model, w)[first:]
        nll -= float(r.gather(1, w[first + 1 :, None]).sum())
        kl += float(llama_perplexity_kl(p, r).sum())  # from llama-perplexity's 16-bit reference log-probs
        exact += float((p.exp() * (p - r)).sum())
        agree += int((p.argmax(-1) == r.argmax(-1)).sum())
    assert res.ppl == pytest.approx(math.exp(nll / res.n_tokens), rel=1e-5)
    assert res.kl_mean == pytest.approx(kl / res.n_tokens, rel=1e-4)
    assert res.kl_mean == pytest.approx(exact / res.n_tokens, rel=1e-2) and res.kl_mean != exact / res.n_tokens
    assert res.top1_agreement == agree / res.n_tokens
    d = res.protocol.to_dict()
    assert d["name"] == "llama-perplexity" and d["seed"] is None and "second half" in d["description"]
    assert sum(res.blocks["n"]) == res.n_tokens


def test_unknown_protocol_and_encoder(tiny_bert, text_file) -> None:
    with pytest.raises(InputError, match="--protocol 'wikitext'"):
        Evaluator(tiny_bert, EvalSettings(data=str(text_file), protocol="wikitext"))
    ev = Evaluator(tiny_bert, EvalSettings(data=str(text_file), speed=False, texts=4, protocol="llama-perplexity"))
    with pytest.raises(InputError, match="an encoder is scored by the cosine"):
        ev.run(tiny_bert)


def test_reference_logprobs_are_read_back_not_recomputed(tiny_llama, text_file) -> None:
    q, _ = lowbit.quantize(tiny_llama, lowbit.make_config("rtn", QuantSpec(4, True, 32)))
    s = EvalSettings(data=str(text_file), windows=3, seq_len=N_CTX, speed=False)
    first = Evaluator(tiny_llama, s, ref_key="tiny-key")
    a = first.run(q)
    assert first._ref_lm.computed == 3 and len(list(store_dir("tiny-key").glob("*.safetensors"))) == 3
    second = Evaluator(tiny_llama, s, ref_key="tiny-key")  # another candidate, another run
    b = second.run(q)
    assert second._ref_lm.computed == 0
    assert (a.kl_mean, a.ppl, a.ref_ppl, a.top1_agreement) == (b.kl_mean, b.ppl, b.ref_ppl, b.top1_agreement)
    more = Evaluator(tiny_llama, EvalSettings(data=str(text_file), windows=5, seq_len=N_CTX, speed=False),
                     ref_key="tiny-key")
    more.run(q)
    assert more._ref_lm.computed == 2  # the first three windows are the shorter run's
    other = Evaluator(tiny_llama, s, ref_key="another-model")
    other.run(q)
    assert other._ref_lm.computed == 3


def test_a_damaged_store_file_is_recomputed(tiny_llama, text_file) -> None:
    s = EvalSettings(data=str(text_file), windows=2, seq_len=N_CTX, speed=False)
    ev = Evaluator(tiny_llama, s, ref_key="damaged")
    a = ev.run(tiny_llama)
    for f in store_dir("damaged").glob("*.safetensors"):
        f.write_bytes(f.read_bytes()[:100])
    again = Evaluator(tiny_llama, s, ref_key="damaged")
    b = again.run(tiny_llama)
    assert again._ref_lm.computed == 2 and b.ref_ppl == a.ref_ppl


def test_prune_keeps_the_most_recent(tmp_path) -> None:
    import os
    import time

    store = LogprobStore(tmp_path / "m")
    wins = [torch.arange(i, i + 9) for i in range(3)]
    for k, w in enumerate(wins):
        store.put(w, torch.zeros(8, 1000))
        p = store._path(w)
        os.utime(p, (time.time() - 100 + k, time.time() - 100 + k))
    streamed = tmp_path / "streamed"  # a block-by-block reference's cache (metrics/streamed.py) is not the store's
    streamed.mkdir()
    (streamed / "w0.safetensors").write_bytes(b"x" * 10)
    os.utime(streamed / "w0.safetensors", (0, 0))
    size = store._path(wins[0]).stat().st_size
    prune(tmp_path, limit_gb=2.5 * size / 2**30)
    assert store.get(wins[0]) is None and store.get(wins[1]) is not None and store.get(wins[2]) is not None
    assert (streamed / "w0.safetensors").exists()


def test_llama_perplexity_kl_drops_the_tail() -> None:
    """Its reference log-probs in 16-bit steps over the 16 nats below the top (lower ones floored there,
    which is at or below -16), and the terms whose stored log-prob is at or below -16 dropped."""
    ref = torch.log_softmax(torch.tensor([[8.0, 7.0, 0.0, -9.5]]), -1)  # the last: log p = -17.8
    q = torch.log_softmax(torch.tensor([[7.0, 8.0, -5.0, -1e5]]), -1)  # ... which q all but rules out
    kept = [float(ref[0, i].exp() * (ref[0, i] - q[0, i])) for i in range(3)]
    exact = float((ref.exp() * (ref - q)).sum())
    assert float(llama_perplexity_kl(ref, q)[0]) == pytest.approx(sum(kept), abs=16 / 65535)
    assert exact - sum(kept) > 1e-3  # the dropped term
