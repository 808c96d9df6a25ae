"""GGUF export on tiny Llama models: names, rotary layout, metadata and tokenizer survive a round trip
through transformers' GGUF loader; llama.cpp's mix rules; overrides; imatrix files; atomic writes."""

from __future__ import annotations

import logging
import re
from collections import Counter

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lowbit.calib.imatrix import Imatrix, compute_imatrix, load_imatrix, save_imatrix
from lowbit.cli import app
from lowbit.errors import ExportError, InputError
from lowbit.loaders import load_model
from lowbit.writers.gguf import export_gguf
from lowbit.writers.gguf_mix import MixPlanner, parse_overrides, use_more_bits

IDS = torch.tensor([[5, 9, 13, 40, 7, 3, 22, 61]])


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def test_f32_round_trip_is_exact(bpe_llama, tmp_path) -> None:
    path = tmp_path / "m.gguf"
    export_gguf(bpe_llama, path, "F32")
    back = load_model(str(path))
    assert torch.equal(_logits(back.model), _logits(bpe_llama.model))
    assert back.tokenizer("hello there").input_ids == bpe_llama.tokenizer("hello there").input_ids


@pytest.mark.parametrize(("mix", "bound"), [("F16", 2e-3), ("Q8_0", 0.05), ("Q6_K", 0.1), ("Q4_K_M", 0.5), ("Q2_K", 3.0)])
def test_quantized_round_trip_is_close(bpe_llama, tmp_path, mix: str, bound: float) -> None:
    path = tmp_path / "m.gguf"
    summary = export_gguf(bpe_llama, path, mix)
    err = (_logits(load_model(str(path)).model) - _logits(bpe_llama.model)).abs().max().item()
    assert 0 < err < bound, (mix, err)
    assert summary["types"]["blk.0.attn_norm.weight"] == "F32"


def test_k_quant_mix_types(bpe_llama, tmp_path) -> None:
    types = export_gguf(bpe_llama, tmp_path / "m.gguf", "Q4_K_M")["types"]
    n = 8
    for i in range(n):
        more = use_more_bits(i, n)
        assert types[f"blk.{i}.ffn_down.weight"] == ("Q6_K" if more else "Q4_K")
        assert types[f"blk.{i}.attn_v.weight"] == ("Q6_K" if more else "Q4_K")
        assert types[f"blk.{i}.attn_q.weight"] == "Q4_K"
    assert types["token_embd.weight"] == "Q6_K"  # tied: the embedding is the output
    assert "output.weight" not in types


def test_smollm2_shaped_q4_k_m_matches_llamacpp_counts() -> None:
    """llama.cpp's own Q4_K_M of smollm2 (shared/research/feasibility-llamacpp.md): Q5_0 x166,
    Q8_0 x15, Q6_K x14, Q4_K x16 and 61 F32 vectors."""
    plan = MixPlanner("Q4_K_M", n_layer=30, n_head=9, n_head_kv=3, tied_embeddings=True)
    shapes = {"attn_q": (576, 576), "attn_k": (192, 576), "attn_v": (192, 576), "attn_output": (576, 576),
              "ffn_gate": (1536, 576), "ffn_up": (1536, 576), "ffn_down": (576, 1536)}
    got = Counter([plan.type_for("token_embd.weight", (49152, 576))])
    for i in range(30):
        got[plan.type_for(f"blk.{i}.attn_norm.weight", (576,))] += 1
        got[plan.type_for(f"blk.{i}.ffn_norm.weight", (576,))] += 1
        for cat, shape in shapes.items():
            got[plan.type_for(f"blk.{i}.{cat}.weight", shape)] += 1
    got[plan.type_for("output_norm.weight", (576,))] += 1
    assert got == Counter({"Q5_0": 166, "Q8_0": 15, "Q6_K": 14, "Q4_K": 16, "F32": 61})
    assert len(plan.fallbacks) == 180  # "180 of 272 tensor(s) required fallback quantization"


@pytest.mark.parametrize(("mix", "v0", "down0", "out"), [
    ("Q2_K", "Q3_K", "Q3_K", "Q3_K"), ("Q3_K_S", "Q3_K", "Q3_K", "Q3_K"), ("Q3_K_M", "Q5_K", "Q5_K", "Q4_K"),
    ("Q3_K_L", "Q5_K", "Q5_K", "Q5_K"), ("Q4_K_S", "Q5_K", "Q5_K", "Q4_K"), ("Q5_K_S", "Q5_K", "Q5_K", "Q5_K"),
    ("Q5_K_M", "Q6_K", "Q6_K", "Q5_K"), ("Q6_K", "Q6_K", "Q6_K", "Q6_K"), ("Q8_0", "Q8_0", "Q8_0", "Q8_0"),
])
def test_first_layer_bumps_per_mix(mix, v0, down0, out) -> None:
    """Layer 0 of a 32-layer, GQA-2 model on 4096-wide tensors, per llama.cpp's rules."""
    plan = MixPlanner(mix, n_layer=32, n_head=32, n_head_kv=16, tied_embeddings=False)
    assert plan.type_for("blk.0.attn_v.weight", (4096, 4096)) == v0
    assert plan.type_for("blk.0.ffn_down.weight", (4096, 4096)) == down0
    assert plan.type_for("blk.0.attn_output.weight", (4096, 4096)) == out
    assert plan.type_for("output.weight", (32000, 4096)) == ("Q8_0" if mix == "Q8_0" else "Q6_K")


@pytest.mark.parametrize("mix", ["IQ4_NL", "IQ4_XS"])
@pytest.mark.parametrize("imatrix", [False, True])
@pytest.mark.parametrize("kv_heads", [8, 32])
def test_iq4_mix_rules(mix, imatrix, kv_heads) -> None:
    """llama.cpp's IQ4 file types: attn_v to Q5_K with GQA >= 4, the first eighth of ffn_down to Q5_K
    without an imatrix, the output Q6_K, the rest the base type."""
    plan = MixPlanner(mix, n_layer=32, n_head=32, n_head_kv=kv_heads, tied_embeddings=False, has_imatrix=imatrix)
    assert plan.type_for("token_embd.weight", (32000, 4096)) == mix
    for i in range(32):
        assert plan.type_for(f"blk.{i}.attn_v.weight", (1024, 4096)) == ("Q5_K" if kv_heads == 8 else mix)
        assert plan.type_for(f"blk.{i}.ffn_down.weight", (4096, 11008 // 256 * 256)) == (
            "Q5_K" if i < 4 and not imatrix else mix)
        assert plan.type_for(f"blk.{i}.attn_q.weight", (4096, 4096)) == mix
    assert plan.type_for("output.weight", (32000, 4096)) == "Q6_K"


def test_iq4_xs_and_ternary_fall_back_on_narrow_rows() -> None:
    """smollm2's 576-wide rows: IQ4_XS -> IQ4_NL (32-blocks), TQ1_0 / TQ2_0 -> Q4_0, as llama.cpp; a
    ternary mix keeps a Q4_K token embedding."""
    xs = MixPlanner("IQ4_XS", n_layer=30, n_head=9, n_head_kv=3, tied_embeddings=False, has_imatrix=True)
    assert xs.type_for("blk.0.attn_q.weight", (576, 576)) == "IQ4_NL"
    assert xs.type_for("blk.5.ffn_down.weight", (576, 1536)) == "IQ4_XS"
    tq = MixPlanner("TQ1_0", n_layer=30, n_head=9, n_head_kv=3, tied_embeddings=False)
    assert tq.type_for("blk.0.attn_q.weight", (576, 576)) == "Q4_0"
    assert tq.type_for("blk.0.ffn_down.weight", (576, 1536)) == "TQ1_0"
    assert tq.type_for("token_embd.weight", (49152, 1536)) == "Q4_K"


def test_iq2_xxs_rules_and_its_importance_matrix(bpe_llama, tmp_path) -> None:
    """llama.cpp's very-low-bit branch: output Q5_K, token_embd Q2_K, attn_v Q4_K under GQA >= 4 (else
    Q2_K), the first eighth of ffn_down Q2_K; and its refusal without an importance matrix, in its words."""
    plan = MixPlanner("IQ2_XXS", n_layer=16, n_head=32, n_head_kv=8, tied_embeddings=False, has_imatrix=True)
    assert plan.type_for("token_embd.weight", (32000, 4096)) == "Q2_K"
    assert plan.type_for("output.weight", (32000, 4096)) == "Q5_K"
    assert [plan.type_for(f"blk.{i}.ffn_down.weight", (4096, 11264)) for i in range(3)] == ["Q2_K", "Q2_K", "IQ2_XXS"]
    assert plan.type_for("blk.0.attn_v.weight", (1024, 4096)) == "Q4_K"
    assert plan.type_for("blk.0.attn_q.weight", (4096, 4096)) == "IQ2_XXS"
    assert MixPlanner("IQ2_XXS", 16, 32, 32, False).type_for("blk.0.attn_v.weight", (4096, 4096)) == "Q2_K"
    with pytest.raises(InputError, match=r"Missing importance matrix for tensor blk\.\d+\.\w+\.weight in a very low-bit"):
        export_gguf(bpe_llama, tmp_path / "m.gguf", "IQ2_XXS")
    assert not list(tmp_path.iterdir())


def test_any_ggml_type_as_a_tensor_override(bpe_llama, tmp_path) -> None:
    """--tensor-type takes every type lowbit writes (IQ2_S has no file type here); llama.cpp's imatrix
    rule still applies to it."""
    with pytest.raises(InputError, match=r"Missing importance matrix for tensor blk\.0\.ffn_up\.weight"):
        export_gguf(bpe_llama, tmp_path / "m.gguf", "Q4_K_M", tensor_types=["ffn_up=IQ2_S"])
    imatrix = {f"blk.{i}.ffn_up.weight": np.ones(256, np.float32) for i in range(8)}
    types = export_gguf(bpe_llama, tmp_path / "m.gguf", "Q4_K_M", tensor_types=["ffn_up=IQ2_S"], imatrix=imatrix)["types"]
    assert types["blk.3.ffn_up.weight"] == "IQ2_S"


@pytest.mark.parametrize("mix", ["IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0"])
def test_new_mixes_round_trip(bpe_llama, tmp_path, mix: str) -> None:
    summary = export_gguf(bpe_llama, tmp_path / "m.gguf", mix)
    assert mix in set(summary["types"].values())
    err = (_logits(load_model(str(tmp_path / "m.gguf")).model) - _logits(bpe_llama.model)).abs().max().item()
    assert 0 < err < (0.5 if mix.startswith("IQ4") else 10.0), (mix, err)


def test_overrides_win_and_bad_ones_are_rejected(bpe_llama, tmp_path) -> None:
    types = export_gguf(bpe_llama, tmp_path / "m.gguf", "Q4_K_M", tensor_types=[r"attn_v=Q8_0", r"blk\.0\..*=F16"])["types"]
    assert types["blk.0.attn_q.weight"] == "F16"
    assert types["blk.0.attn_v.weight"] == "Q8_0"  # first matching pattern wins
    assert all(t == "Q8_0" for k, t in types.items() if "attn_v" in k)
    for bad in ["attn_v", "attn_v=Q9_X", "(=Q4_0"]:
        with pytest.raises(InputError, match="--tensor-type"):
            parse_overrides([bad])


def test_unsupported_architecture_and_existing_out_are_refused(bpe_llama, tmp_path) -> None:
    import transformers

    from lowbit.loaders.handle import ModelHandle

    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64))
    handle = ModelHandle(model=gpt2, tokenizer=bpe_llama.tokenizer, kind="causal-lm", name="tiny-gpt2")
    with pytest.raises(InputError, match=r"supports the architectures bert, gemma2, .*qwen3; tiny-gpt2 is 'gpt2'"):
        export_gguf(handle, tmp_path / "b.gguf", "Q8_0")
    assert not list(tmp_path.iterdir())
    (tmp_path / "x.gguf").write_bytes(b"keep")
    with pytest.raises(ExportError, match="exists"):
        export_gguf(bpe_llama, tmp_path / "x.gguf", "Q8_0")
    assert (tmp_path / "x.gguf").read_bytes() == b"keep"


def test_a_failed_write_leaves_nothing(bpe_llama, tmp_path, monkeypatch) -> None:
    from lowbit.formats.ggml import q4_k

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(q4_k.Q4K, "quantize_blocks", classmethod(boom))
    with pytest.raises(RuntimeError, match="disk full"):
        export_gguf(bpe_llama, tmp_path / "m.gguf", "Q4_K_M")
    assert list(tmp_path.iterdir()) == []


def test_imatrix_compute_save_load_and_use(bpe_llama, tmp_path, caplog) -> None:
    ids = torch.randint(0, 90, (4, 32), generator=torch.Generator().manual_seed(0))
    im = compute_imatrix(bpe_llama.model, ids, "random")
    assert set(im.sums) == {f"blk.{i}.{c}.weight" for i in range(8) for c in
                            ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")} | {
                                "token_embd.weight"}  # tied: the output matmul reads token_embd
    assert all(im.counts[k] == 4 * 32 for k in im.sums)
    for suffix in ("gguf", "dat"):
        back = load_imatrix(save_imatrix(im, tmp_path / f"im.{suffix}"))
        for k, v in im.weights().items():
            np.testing.assert_allclose(back.weights()[k], v, rtol=1e-6)
    w = im.weights()
    del w["blk.3.ffn_up.weight"]
    with caplog.at_level(logging.WARNING):
        s = export_gguf(bpe_llama, tmp_path / "m.gguf", "Q3_K_M", imatrix=w)
    assert s["no_imatrix"] == ["blk.3.ffn_up.weight"] and "no importance-matrix data" in caplog.text
    plain = export_gguf(bpe_llama, tmp_path / "p.gguf", "Q3_K_M")
    assert (tmp_path / "m.gguf").read_bytes() != (tmp_path / "p.gguf").read_bytes()
    assert plain["no_imatrix"] == []


def test_bad_imatrix_files(tmp_path, bpe_llama) -> None:
    (tmp_path / "t.dat").write_bytes(b"\x02\x00\x00\x00\x05\x00\x00\x00abc")
    with pytest.raises(InputError, match="truncated"):
        load_imatrix(tmp_path / "t.dat")
    (tmp_path / "huge.dat").write_bytes(b"\xff\xff\xff\x7f")
    with pytest.raises(InputError, match="not an imatrix"):
        load_imatrix(tmp_path / "huge.dat")
    export_gguf(bpe_llama, tmp_path / "model.gguf", "F16")
    with pytest.raises(InputError, match="not an imatrix"):
        load_imatrix(tmp_path / "model.gguf")
    with pytest.raises(InputError, match="not found"):
        load_imatrix(tmp_path / "missing.gguf")
    bad = Imatrix(sums={"blk.0.attn_q.weight": np.ones(7, np.float32)}, counts={"blk.0.attn_q.weight": 1})
    with pytest.raises(InputError, match="7 values"):
        export_gguf(bpe_llama, tmp_path / "n.gguf", "Q4_K_M", imatrix=bad.weights())


def test_cli_export_gguf(bpe_llama, tmp_path) -> None:
    src = tmp_path / "hf"
    bpe_llama.model.save_pretrained(src)
    bpe_llama.tokenizer.save_pretrained(src)
    runner = CliRunner(env={"LOWBIT_PROGRESS": "0", "HF_HUB_OFFLINE": "1", "COLUMNS": "200"})
    out = tmp_path / "m.gguf"
    res = runner.invoke(app, ["export", str(src), "--format", "gguf", "--type", "q4_k_m", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert re.search(r"gguf Q4_K_M -> .*m\.gguf", res.output) and out.stat().st_size > 0
    res = runner.invoke(app, ["export", str(src), "--format", "gguf", "--type", "Q7_X", "--out", str(tmp_path / "z.gguf")])
    assert res.exit_code == 2 and "Q7_X" in res.stderr and not (tmp_path / "z.gguf").exists()
    res = runner.invoke(app, ["imatrix", str(src), "--calib", str(src / "config.json"), "--n-samples", "2",
                              "--seq-len", "16", "--out", str(tmp_path / "im.dat")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["export", str(src), "--format", "gguf", "--type", "Q2_K", "--imatrix",
                              str(tmp_path / "im.dat"), "--out", str(tmp_path / "q2.gguf")])
    assert res.exit_code == 0, res.output


def test_llamacpp_runtime_missing_is_a_clear_error(bpe_llama, tmp_path, monkeypatch) -> None:
    from lowbit.metrics import llamacpp

    monkeypatch.setattr(llamacpp, "available", lambda: False)
    export_gguf(bpe_llama, tmp_path / "m.gguf", "Q8_0")
    runner = CliRunner(env={"LOWBIT_PROGRESS": "0", "HF_HUB_OFFLINE": "1", "COLUMNS": "200"})
    res = runner.invoke(app, ["eval", str(tmp_path / "m.gguf"), "--runtime", "llama.cpp", "--no-speed"])
    assert res.exit_code == 2 and "make reference" in res.stderr, res.output


@pytest.mark.skipif(not __import__("lowbit.metrics.llamacpp", fromlist=["x"]).available(),
                    reason="llama-cpp-python not installed (make reference)")
@pytest.mark.parametrize("mix", ["F32", "Q8_0", "Q4_K_M"])
def test_llamacpp_runs_our_files_like_torch(bpe_llama, tmp_path, mix: str) -> None:
    """llama.cpp loads lowbit's GGUF and its logits match transformers' on the same file."""
    from lowbit.metrics.llamacpp import load_llamacpp

    path = tmp_path / "m.gguf"
    export_gguf(bpe_llama, path, mix)
    lc = load_llamacpp(path, n_ctx=64)
    torch_logits = _logits(load_model(str(path)).model)
    lc_logits = lc.model(input_ids=IDS).logits
    assert lc_logits.shape == torch_logits.shape
    assert (lc_logits - torch_logits).abs().max().item() < 0.05 * torch_logits.abs().max().item()


def test_metadata_arrays_pack_like_gguf_py_and_round_trip(tmp_path) -> None:
    """The fast array packing gives gguf-py's bytes, and a vocabulary with undecodable token bytes is
    read back and copied unchanged."""
    import gguf

    from lowbit.loaders.gguf_check import read_metadata
    from lowbit.writers.gguf import _copy_kv, _Writer

    V = gguf.GGUFValueType
    cases = [(["a", "héllo", "", "\u0120the"], V.STRING), ([1, -2, 3], V.INT32), ([0.5, -1.25], V.FLOAT32),
             ([True, False, True], V.BOOL), ([7, 8], V.UINT64)]
    plain, fast = gguf.GGUFWriter(tmp_path / "p.gguf", "llama"), _Writer(tmp_path / "f.gguf", "llama")
    for val, sub in cases:
        for add_vtype in (True, False):
            assert fast._pack_val(val, V.ARRAY, add_vtype, sub) == plain._pack_val(val, V.ARRAY, add_vtype, sub)
    assert fast._pack_val(["x", "y"], V.ARRAY, True) == plain._pack_val(["x", "y"], V.ARRAY, True)  # type inferred

    src = tmp_path / "src.gguf"
    w = gguf.GGUFWriter(src, "llama")
    w.add_key_value("tokenizer.ggml.tokens", [b"ok", b"\xff\xfe", "\u00e9".encode()], V.ARRAY, sub_type=V.STRING)
    w.add_key_value("tokenizer.ggml.token_type", [1, 3, 6], V.ARRAY, sub_type=V.INT32)
    for step in (w.write_header_to_file, w.write_kv_data_to_file, w.write_tensors_to_file, w.close):
        step()
    copy = tmp_path / "copy.gguf"
    w2 = _Writer(copy, "llama")
    _copy_kv(w2, str(src), lambda k: k == "general.architecture")
    for step in (w2.write_header_to_file, w2.write_kv_data_to_file, w2.write_tensors_to_file, w2.close):
        step()
    assert read_metadata(copy) == read_metadata(src)
    r = gguf.GGUFReader(copy)
    f = r.fields["tokenizer.ggml.tokens"]
    assert [bytes(f.parts[i]) for i in f.data] == [b"ok", b"\xff\xfe", "\u00e9".encode()]
