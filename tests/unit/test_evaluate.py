"""metrics/: KL, top-1, perplexity and token counts on a tiny LLaMA; cosine on a tiny BERT; sizes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import lowbit
from lowbit.errors import InputError
from lowbit.loaders import ModelHandle
from lowbit.metrics import EvalResult
from lowbit.metrics.lm import ReferenceLM, score_lm, window_logprobs
from lowbit.metrics.run import EvalSettings, Evaluator
from lowbit.metrics.size import model_bytes, quantized_layer_bits
from lowbit.modules.kernel_mode import kernel_mode
from lowbit.modules.qlinear import QuantizedLinear
from lowbit.spec import QuantSpec

WINDOWS, SEQ = 3, 24


@pytest.fixture
def settings(text_file) -> EvalSettings:
    return EvalSettings(data=str(text_file), windows=WINDOWS, seq_len=SEQ, seed=0, speed=False, texts=6)


def test_model_vs_itself(tiny_llama, settings) -> None:
    res = Evaluator(tiny_llama, settings).run(tiny_llama)
    assert isinstance(res, EvalResult)
    assert res.kl_mean == 0.0 and res.kl_p99 == 0.0
    assert res.top1_agreement == 1.0
    assert res.ppl == res.ref_ppl
    assert res.n_tokens == WINDOWS * (SEQ - 1)
    assert res.protocol.windows == WINDOWS and res.protocol.seq_len == SEQ
    assert res.protocol.to_dict()["stride"] == SEQ
    assert res.bits_per_weight == pytest.approx(32.0)
    assert res.reference == "tiny" and res.kind == "causal-lm"
    # a random 128-token model is close to uniform: PPL near the vocabulary size
    assert 60 < res.ppl < 260


def test_quantized_two_bit_differs(tiny_llama, settings) -> None:
    q2, rep = lowbit.quantize(tiny_llama, lowbit.make_config("rtn", QuantSpec(2, True, 64)))
    q8, _ = lowbit.quantize(tiny_llama, lowbit.make_config("rtn", QuantSpec(8, True, -1)))
    ev = Evaluator(tiny_llama, settings)
    ref = ev.run(tiny_llama)
    r2 = ev.run(q2, label="int2")
    r8 = ev.run(q8, label="int8")
    assert r2.model == "int2"
    assert r2.kl_mean > 0 and r2.kl_p99 >= r2.kl_mean
    assert 0 <= r8.kl_mean < r2.kl_mean
    assert 0 < r2.top1_agreement <= 1.0
    assert r2.ppl != ref.ppl and r2.ref_ppl == ref.ppl
    assert r2.n_tokens == WINDOWS * (SEQ - 1)
    assert r2.bits_per_weight == pytest.approx(rep.bits_per_weight)
    assert r2.quantized_params == rep.quantized_params
    assert r2.size_bytes < r8.size_bytes < ref.size_bytes


def test_evaluate_without_reference(tiny_llama, settings) -> None:
    res = lowbit.evaluate(tiny_llama, settings=settings)
    assert res.ppl is not None and res.kl_mean is None and res.top1_agreement is None and res.ref_ppl is None
    assert res.reference is None


def test_ppl_is_exp_mean_nll(tiny_llama, settings) -> None:
    ev = Evaluator(tiny_llama, settings)
    res = ev.run(tiny_llama)
    win = ev.windows(tiny_llama.tokenizer)
    nll = 0.0
    with torch.no_grad():
        for w in win:
            lp = torch.log_softmax(tiny_llama.model(input_ids=w[None]).logits[0, :-1].float(), -1)
            nll -= float(lp.gather(1, w[1:, None]).sum())
    assert res.ppl == pytest.approx(math.exp(nll / (WINDOWS * (SEQ - 1))), rel=1e-6)


def test_kl_matches_direct_computation(tiny_llama, settings) -> None:
    q, _ = lowbit.quantize(tiny_llama, lowbit.make_config("rtn", QuantSpec(3, False, 32)))
    ev = Evaluator(tiny_llama, settings)
    win = ev.windows(tiny_llama.tokenizer)
    sc = score_lm(q.model, win, ReferenceLM(tiny_llama.model, win))
    assert sc.kl.shape == (WINDOWS * (SEQ - 1),)
    p = window_logprobs(tiny_llama.model, win[0])
    r = window_logprobs(q.model, win[0])
    direct = torch.nn.functional.kl_div(r, p, log_target=True, reduction="none").sum(-1)
    torch.testing.assert_close(sc.kl[: SEQ - 1], direct, rtol=1e-4, atol=1e-7)


def test_quality_numbers_use_exact_dequantized_weights(tiny_llama) -> None:
    q, _ = lowbit.quantize(tiny_llama, lowbit.make_config("rtn", QuantSpec(4, True, 64)))
    win = torch.randint(3, 100, (SEQ,), generator=torch.Generator().manual_seed(0))
    layers = [m for m in q.model.modules() if isinstance(m, QuantizedLinear)]
    assert layers
    with kernel_mode(q.model, "kernel"):
        lp = window_logprobs(q.model, win)
        assert all(m.kernel_mode == "kernel" for m in layers)  # the model's own mode is put back
    with kernel_mode(q.model, "dequant"), torch.no_grad():
        ref = torch.log_softmax(q.model(input_ids=win[None]).logits[0, :-1].float(), -1)
    assert torch.equal(lp, ref)


def test_reference_cache_counts_each_window_once(tiny_llama) -> None:
    win = torch.randint(3, 100, (2, SEQ), generator=torch.Generator().manual_seed(1))
    ref = ReferenceLM(tiny_llama.model, win)
    a = ref.logprobs(0)
    nll = ref.nll_sum
    assert ref.logprobs(0) is a and ref.nll_sum == nll
    ref.logprobs(1)
    assert ref.ppl == pytest.approx(math.exp(ref.nll_sum / (2 * (SEQ - 1))))


def test_speed_numbers_are_filled(tiny_llama, settings) -> None:
    from dataclasses import replace

    q, _ = lowbit.quantize(tiny_llama, lowbit.make_config("rtn", QuantSpec(4, True, 32)))
    res = Evaluator(tiny_llama, replace(settings, speed=True, decode_tokens=2)).run(q)
    assert res.prefill_tok_s > 0 and res.decode_tok_s > 0


def test_encoder_vs_itself_and_quantized(tiny_bert, settings) -> None:
    ev = Evaluator(tiny_bert, settings)
    same = ev.run(tiny_bert)
    assert same.kind == "encoder" and same.cosine_mean == pytest.approx(1.0, abs=1e-5)
    assert same.cosine_min == pytest.approx(1.0, abs=1e-5)
    assert same.protocol.windows == 6 and same.n_tokens > 6 * 40
    assert same.ppl is None and same.kl_mean is None
    q, _ = lowbit.quantize(tiny_bert, lowbit.make_config("rtn", QuantSpec(2, True, 32)))
    r = ev.run(q)
    assert r.cosine_mean < 1.0 - 1e-6 and r.cosine_min <= r.cosine_mean
    assert r.size_bytes < same.size_bytes


def test_kind_mismatch_and_bare_module(tiny_llama, tiny_bert, settings) -> None:
    with pytest.raises(InputError, match="reference is a causal-lm model"):
        Evaluator(tiny_llama, settings).run(tiny_bert)
    with pytest.raises(InputError, match="causal LM or an encoder"):
        Evaluator(None, settings).run(ModelHandle(model=nn.Linear(4, 4)))


def test_token_ids_beyond_vocab_is_input_error(tiny_llama_factory, tiny_tokenizer, settings) -> None:
    small = tiny_llama_factory(vocab_size=50)  # the tokenizer has 100 ids
    with pytest.raises(InputError, match="exceed its vocabulary"):
        Evaluator(None, settings, tokenizer=tiny_tokenizer).run(small)


def test_size_helpers(tiny_llama) -> None:
    m = tiny_llama.model
    n_params = sum(p.numel() for p in m.parameters())  # parameters() yields the tied weight once
    assert model_bytes(m) == 4 * n_params
    bpw, n = quantized_layer_bits(m)
    assert bpw == 32.0 and n == 2 * (64 * 64 * 2 + 32 * 64 * 2 + 128 * 64 * 3)
    q, rep = lowbit.quantize(tiny_llama, lowbit.make_config("rtn", QuantSpec(4, True, 64)))
    bpw_q, n_q = quantized_layer_bits(q.model)
    assert n_q == n and bpw_q == pytest.approx(4.25)
    assert model_bytes(q.model) == model_bytes(m) - 4 * n + rep.quantized_bytes
    assert quantized_layer_bits(nn.Sequential(nn.ReLU()))[1] == 0


def test_eval_result_to_dict(tiny_llama, settings) -> None:
    d = Evaluator(tiny_llama, settings).run(tiny_llama).to_dict()
    assert d["protocol"]["data"] == settings.data and d["kl_mean"] == 0.0 and "extra" in d
