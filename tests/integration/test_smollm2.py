"""smollm2 end to end: RTN quality bars, size, checkpoint round trip, speed measurement."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lowbit import api
from lowbit.loaders import load_model
from lowbit.modules.qlinear import QuantizedLinear
from lowbit.spec import QuantSpec


def test_reference_is_float32_llama(smollm2):
    m = smollm2.model
    assert type(m).__name__ == "LlamaForCausalLM"
    assert smollm2.kind == "causal-lm"
    assert all(p.dtype == torch.float32 for p in m.parameters())
    assert sum(p.numel() for p in m.parameters()) == 134_515_008


def test_rtn_int8_per_channel_is_near_lossless(smollm2, smollm2_eval):
    ref = smollm2_eval.run(smollm2)
    q, rep = api.quantize(smollm2, api.make_config("rtn", QuantSpec(8, True, -1)))
    r = smollm2_eval.run(q)
    assert len(rep.layers) == 210 and rep.skipped == ["model.embed_tokens", "lm_head"]
    assert abs(r.ppl / ref.ppl - 1) < 0.01, (r.ppl, ref.ppl)
    assert r.kl_mean < 0.01
    assert r.top1_agreement > 0.95
    assert r.n_tokens == 2 * 511


def test_rtn_int4_g64_size_and_roundtrip(smollm2, smollm2_eval, tmp_path: Path):
    q, rep = api.quantize(smollm2, api.make_config("rtn", QuantSpec(4, False, 64)))
    r = smollm2_eval.run(q)
    assert r.bits_per_weight <= 4.6
    assert rep.bits_per_weight == pytest.approx(4.375)
    # quality is measurably worse than int8 but not broken
    assert 0.05 < r.kl_mean < 1.0
    assert all(isinstance(q.model.get_submodule(n), QuantizedLinear) for n in rep.layers)
    out = api.save(q, tmp_path / "q4")
    ref_bytes = (Path(smollm2.path) / "model.safetensors").stat().st_size  # fp32, embeddings included
    q_bytes = (out / "model.safetensors").stat().st_size
    assert q_bytes <= 0.45 * ref_bytes, (q_bytes, ref_bytes)
    # in memory too: the packed model is well under half the float32 bytes
    assert r.size_bytes <= 0.45 * smollm2_eval.run(smollm2).size_bytes
    back = load_model(out)
    assert back.reference_name == "smollm2"
    ids = smollm2_eval.windows(None)[:1]
    with torch.inference_mode():
        assert torch.equal(q.model(input_ids=ids).logits, back.model(input_ids=ids).logits)
    assert torch.equal(q.model.lm_head.weight, back.model.lm_head.weight)
    assert back.model.lm_head.weight.data_ptr() == back.model.model.embed_tokens.weight.data_ptr()


def test_asym_beats_sym_at_3_bits(smollm2, smollm2_eval):
    """smollm2 was dequantized from an asymmetric format; symmetric 3-bit hurts it more."""
    sym, _ = api.quantize(smollm2, api.make_config("rtn", QuantSpec(3, True, 64)))
    rs = smollm2_eval.run(sym)
    del sym
    asym, _ = api.quantize(smollm2, api.make_config("rtn", QuantSpec(3, False, 64)))
    ra = smollm2_eval.run(asym)
    assert ra.kl_mean < rs.kl_mean
    assert rs.kl_mean > 0.5  # 3-bit RTN is far from lossless


def test_clip_search_reduces_kl_at_3_bits(smollm2, smollm2_eval):
    plain, _ = api.quantize(smollm2, api.make_config("rtn", QuantSpec(3, True, 64)))
    rp = smollm2_eval.run(plain)
    del plain
    clip, _ = api.quantize(smollm2, api.make_config("rtn", QuantSpec(3, True, 64), clip_search=True))
    rc = smollm2_eval.run(clip)
    assert rc.kl_mean < rp.kl_mean


def test_speed_is_measured(smollm2):
    from lowbit.metrics.run import EvalSettings, Evaluator

    ev = Evaluator(smollm2, EvalSettings(windows=1, seq_len=64, speed=True, decode_tokens=4))
    q, _ = api.quantize(smollm2, api.make_config("rtn", QuantSpec(4, True, 64)))
    r = ev.run(q)
    assert r.prefill_tok_s > 0 and r.decode_tok_s > 0


def test_gguf_file_loads_like_builtin(smollm2):
    from lowbit.loaders.builtin import builtin_path

    h = load_model(builtin_path("smollm2"))
    assert h.gguf_source.endswith(".gguf")
    a = dict(h.model.named_parameters())["model.layers.3.mlp.down_proj.weight"]
    b = dict(smollm2.model.named_parameters())["model.layers.3.mlp.down_proj.weight"]
    assert torch.equal(a, b)


def test_json_keys_from_cli(tmp_path: Path, smollm2):
    from typer.testing import CliRunner

    from lowbit.cli import app

    runner = CliRunner()
    out = tmp_path / "ck"
    res = runner.invoke(app, ["quantize", "smollm2", "--bits", "4", "--group-size", "64", "--out", str(out)])
    assert res.exit_code == 0, res.output
    js = tmp_path / "r.json"
    res = runner.invoke(app, ["eval", str(out), "--data", "pydoc:eval", "--reference", "smollm2", "--windows", "1",
                              "--seq-len", "128", "--json", str(js)])
    assert res.exit_code == 0, res.output
    d = json.loads(js.read_text())
    for key in ("ppl", "kl_mean", "kl_p99", "top1_agreement", "bits_per_weight", "size_bytes", "prefill_tok_s",
                "decode_tok_s", "n_tokens"):
        assert d[key] is not None, key
    assert d["n_tokens"] == 127 and d["protocol"]["seq_len"] == 128
    assert d["bits_per_weight"] == pytest.approx(4.25)
    res = runner.invoke(app, ["inspect", str(out)])
    assert res.exit_code == 0 and "int4-sym-group64" in res.output and "bits per weight overall" in res.output


def test_embeddings_and_head_can_be_quantized(smollm2, smollm2_eval, tmp_path: Path):
    """Overriding the defaults: the tied embedding table and lm_head quantize too, and the model shrinks."""
    from lowbit.modules.qembedding import QuantizedEmbedding

    q, rep = api.quantize(smollm2, api.make_config("rtn", QuantSpec(8, True, -1)), ignore=[], embeddings=True)
    assert rep.skipped == [] and len(rep.layers) == 212
    assert isinstance(q.model.model.embed_tokens, QuantizedEmbedding)
    assert isinstance(q.model.lm_head, QuantizedLinear)
    # the tied table is quantized once and shared by both modules, as the float model shares it
    assert q.model.lm_head.qweight.data_ptr() == q.model.model.embed_tokens.qweight.data_ptr()
    r = smollm2_eval.run(q)
    assert r.size_bytes < 0.26 * smollm2_eval.run(smollm2).size_bytes  # ~8/32 of everything
    assert r.kl_mean < 0.02
    out = api.save(q, tmp_path / "q8all")
    back = load_model(out)
    assert back.model.lm_head.qweight.data_ptr() == back.model.model.embed_tokens.qweight.data_ptr()
    ids = smollm2_eval.windows(None)[:1, :64]
    with torch.inference_mode():
        assert torch.equal(q.model(input_ids=ids).logits, back.model(input_ids=ids).logits)
