"""Quantization-aware training on tiny models: the straight-through estimator and LSQ gradients,
prepare starting exactly at the PTQ model, convert agreeing with the fake-quantized model for every
spec kind, training lowering the loss, checkpoint + resume reproducing an uninterrupted run, saving
and exporting the converted model, and the errors for bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from lowbit import api, qat
from lowbit.cli import app
from lowbit.errors import InputError, ShapeError
from lowbit.loaders import ModelHandle, load_model
from lowbit.methods.rtn import RTNConfig, rtn
from lowbit.modules.bnb4_linear import Linear4bit
from lowbit.modules.fake_quant import IntQuantizer
from lowbit.modules.ggml_linear import GGMLLinear
from lowbit.modules.kernel_mode import kernel_mode
from lowbit.modules.qconv import QuantizedConv2d
from lowbit.modules.qlinear import QuantizedLinear
from lowbit.spec import QuantSpec

X = torch.randint(3, 100, (2, 24), generator=torch.Generator().manual_seed(0))


def _logits(h: ModelHandle) -> torch.Tensor:
    with torch.no_grad(), kernel_mode(h.model, "dequant"):
        return h.model(input_ids=X).logits


def _data(n: int = 8, seq: int = 24) -> torch.Tensor:
    return torch.randint(3, 100, (n, seq), generator=torch.Generator().manual_seed(1))


def test_parse_spec() -> None:
    s = qat.parse_spec("int3-asym-g64")
    assert s.kind == "int" and s.spec == QuantSpec(3, False, 64)
    assert qat.parse_spec("int4-sym-ch").spec == QuantSpec(4, True, -1)
    assert qat.parse_spec("int8-tensor").spec == QuantSpec(8, True, 0)
    assert qat.parse_spec("nf4-dq").double_quant and qat.parse_spec("nf4-dq").quant_type == "nf4"
    assert qat.parse_spec("q4_k").kind == "gguf" and qat.parse_spec("w8a8").kind == "w8a8"
    for bad in ("int9", "int3-g", "int1-sym", "Q9_K", "nf5"):
        with pytest.raises(InputError, match="--spec"):
            qat.parse_spec(bad)


def test_ste_passes_gradients_inside_the_range_and_lsq_follows_its_formula() -> None:
    spec = QuantSpec(2, False, 4)
    w0 = torch.tensor([[-1.0, -0.2, 0.3, 1.0], [0.5, 0.1, -0.4, 0.2]])
    q = IntQuantizer(spec, rtn(w0, RTNConfig(spec=spec)), lsq=True)
    w = w0.clone()
    w[0, 0] = -3.0  # moved far below the grid: clipped, no gradient
    w.requires_grad_(True)
    out = q(w)
    out.sum().backward()
    s = q.scale.detach().half().float()[:, None]
    z = q.zero[:, None]
    v = w.detach() / s
    inside = (torch.round(v) + z >= 0) & (torch.round(v) + z <= spec.qmax)
    assert not inside[0, 0] and inside.sum() >= 6
    assert torch.equal(w.grad, inside.float())  # identity inside the grid, zero where clipped
    want = torch.where(inside, torch.round(v) - v, torch.clamp(torch.round(v) + z, 0, spec.qmax) - z).sum(1)
    assert torch.allclose(q.scale.grad, want, atol=1e-5)


@pytest.mark.parametrize("start", ["rtn", "gptq"])
def test_prepare_starts_exactly_at_the_ptq_model(tiny_llama, start) -> None:
    spec = QuantSpec(3, False, 32)
    p = qat.prepare(tiny_llama, "int3-asym-g32", start=start, calib="pydoc:calib")
    q, _ = api.quantize(tiny_llama, api.make_config(start, spec), calib="pydoc:calib" if start == "gptq" else None)
    assert torch.equal(_logits(p), _logits(q))
    assert len(qat.fake_quant_layers(p.model)) == 14  # 2 blocks x 7 Linears; the tied head stays float
    lay = p.model.get_submodule("model.layers.1.mlp.down_proj")
    on_grid = lay.weight_quant(lay.weight).detach()
    # the latent weights sit where the PTQ rounding left them inside their bins, not on the grid points
    # (from grid points, a few hundred small steps moved no GPTQ code on smollm2)
    assert float((lay.weight - on_grid).abs().mean()) > 0.1 * float(lay.weight_quant.scale.abs().mean())


@pytest.mark.parametrize("spec,module", [("int3-asym-g32", QuantizedLinear), ("int4-sym-ch", QuantizedLinear),
                                         ("nf4", Linear4bit), ("nf4-dq", Linear4bit), ("Q8_0", GGMLLinear),
                                         ("Q4_0", GGMLLinear), ("w8a8", "W8A8Linear")])
def test_convert_gives_real_layers_with_the_same_logits(tiny_llama, spec, module) -> None:
    p = qat.prepare(tiny_llama, spec)
    qat.train(p, _data(), qat.TrainSettings(steps=3, lr=1e-3, distill=False))
    before = _logits(p)
    c = qat.convert(p)
    after = _logits(c)
    # W8A8 re-rounds every activation: float-order noise between (x_q s) @ (w_q s_w) and (x_q @ w_q) s s_w
    # can flip a code, so its logits agree to 1e-3 instead of 1e-5
    tol = 1e-3 if spec == "w8a8" else 1e-5
    assert torch.allclose(before, after, atol=tol, rtol=tol), float((before - after).abs().max())
    mod = c.model.get_submodule("model.layers.0.mlp.down_proj")
    assert (type(mod).__name__ == module) if isinstance(module, str) else type(mod) is module
    assert not qat.fake_quant_layers(c.model)


def test_training_lowers_the_distillation_loss(tiny_llama) -> None:
    p = qat.prepare(tiny_llama, "int2-asym-g32")
    ev = X  # scored on windows it trained on: this checks the optimisation; held-out text is in tests/integration
    kl = lambda h: float(torch.nn.functional.kl_div(torch.log_softmax(_logits(h), -1),
                                                      torch.log_softmax(_logits(tiny_llama), -1), log_target=True,
                                                      reduction="none").sum(-1).mean())
    start = kl(p)
    res = qat.train(p, torch.cat([_data(), ev]), qat.TrainSettings(steps=40, lr=1e-4, distill=True))
    assert len(res.losses) == 40 and res.seconds > 0
    assert kl(qat.convert(p)) < 0.6 * start  # measured: 0.41x


def test_only_quantized_layers_train_and_gradients_are_clipped(tiny_llama, monkeypatch) -> None:
    p = qat.prepare(tiny_llama, "int4-asym-g32")
    emb = p.model.model.embed_tokens.weight.clone()
    norm = p.model.model.layers[0].input_layernorm.weight.clone()
    w0 = p.model.model.layers[0].mlp.up_proj.weight.clone()
    seen = []
    real = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda ps, c: seen.append(c) or real(ps, c))
    qat.train(p, _data(), qat.TrainSettings(steps=2, lr=1e-3, clip=0.25))
    assert seen == [0.25, 0.25]
    assert torch.equal(emb, p.model.model.embed_tokens.weight) and torch.equal(norm, p.model.model.layers[0].input_layernorm.weight)
    assert not torch.equal(w0, p.model.model.layers[0].mlp.up_proj.weight)
    assert not any(t.requires_grad for t in p.model.parameters())  # back in inference mode


def test_checkpoint_and_resume_reproduce_an_uninterrupted_run(tiny_llama, tmp_path) -> None:
    s = {"steps": 6, "lr": 1e-3, "distill": True, "save_every": 3}
    a = qat.prepare(tiny_llama, "int3-asym-g32")
    qat.train(a, _data(), qat.TrainSettings(**s, checkpoint=str(tmp_path / "a.pt")))

    b = qat.prepare(tiny_llama, "int3-asym-g32")

    def stop(i, n, loss):
        if i == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        qat.train(b, _data(), qat.TrainSettings(**s, checkpoint=str(tmp_path / "b.pt")), progress=stop)
    c = qat.prepare(tiny_llama, "int3-asym-g32")
    res = qat.train(c, _data(), qat.TrainSettings(**s, checkpoint=str(tmp_path / "b.pt"), resume=True))
    assert res.resumed_from == 3 and len(res.losses) == 6
    assert torch.equal(_logits(a), _logits(c))
    state = torch.load(tmp_path / "b.pt", weights_only=True)  # tensors, numbers and strings only: no code runs
    assert state["step"] == 6 and state["spec"] == "int3-asym-g32" and state["settings"]["save_every"] == 3
    with pytest.raises(InputError, match="written for"):
        qat.train(qat.prepare(tiny_llama, "int4-asym-g32"), _data(),
                  qat.TrainSettings(**s, checkpoint=str(tmp_path / "b.pt"), resume=True))



class _NotAState:
    """Pickled into a fake checkpoint: ``weights_only`` loading must refuse it, not build it."""


def test_resume_refuses_a_file_that_is_not_a_training_checkpoint(tiny_llama, tmp_path) -> None:
    s = {"steps": 2, "lr": 1e-3, "resume": True}
    torch.save({"model": _NotAState()}, tmp_path / "obj.pt")  # loading it would run pickled code
    torch.save({"step": 1}, tmp_path / "partial.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    for name, match in (("obj.pt", "not a lowbit QAT training checkpoint"), ("partial.pt", "lacks model"),
                        ("junk.pt", "not a lowbit QAT training checkpoint"), ("missing.pt", "no checkpoint")):
        with pytest.raises(InputError, match=match):
            qat.train(qat.prepare(tiny_llama, "int4-asym-g32"), _data(),
                      qat.TrainSettings(**s, checkpoint=str(tmp_path / name)))


def test_prepare_records_the_run_and_convert_keeps_the_record(tiny_llama) -> None:
    p = qat.prepare(tiny_llama, "int3-asym-g32", lsq=True)
    assert p.teacher is tiny_llama and p.quant is None
    assert p.qat == {"spec": "int3-asym-g32", "start": "rtn", "lsq": True, "act": False,
                     "layers": list(qat.fake_quant_layers(p.model)), "skipped": ["model.embed_tokens", "lm_head"]}
    qat.train(p, _data(), qat.TrainSettings(steps=2, lr=1e-3, data="pydoc:calib"))
    c = qat.convert(p)
    assert c.qat is p.qat and c.teacher is None and not any(t.requires_grad for t in c.model.parameters())
    m = c.quant["method"]
    assert m == {"method": "qat", "version": 1, "qat_spec": "int3-asym-g32", "start": "rtn", "lsq": True,
                 "act": False, "steps": 2, "lr": 1e-3, "distill": True, "train_seconds": p.qat["train_seconds"],
                 "data": "pydoc:calib", "spec": QuantSpec(3, False, 32).to_dict()}
    assert c.quant["skipped"] == ["model.embed_tokens", "lm_head"] and c.quant["source"] == "tiny"
    assert c.quant["quantize_seconds"] == p.qat["train_seconds"]
    assert list(c.quant["layers"]) == p.qat["layers"]
    w = qat.convert(qat.prepare(tiny_llama, "w8a8"))  # no integer grid: the record has no "spec"
    assert w.quant["method"]["qat_spec"] == "w8a8" and "spec" not in w.quant["method"]
    with pytest.raises(InputError, match="not prepared"):
        qat.convert(tiny_llama)


def test_the_qat_package_imports_no_api_cli_or_compare() -> None:
    import subprocess
    import sys

    code = ("import sys, lowbit.qat; bad = sorted(m for m in sys.modules if m.startswith(('lowbit.api', 'lowbit.cli', "
            "'lowbit.compare'))); assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr

def test_converted_models_save_export_and_reload_identically(tiny_llama, tmp_path) -> None:
    p = qat.prepare(tiny_llama, "int4-asym-g32")
    qat.train(p, _data(), qat.TrainSettings(steps=3, lr=1e-3))
    c = qat.convert(p)
    api.save(c, tmp_path / "ckpt")
    back = load_model(tmp_path / "ckpt")
    assert torch.equal(_logits(c), _logits(back))
    assert back.quant["method"]["method"] == "qat" and back.quant["method"]["steps"] == 3
    ct = api.export(c, tmp_path / "ct", fmt="compressed-tensors")
    assert (ct / "model.safetensors").is_file()



@pytest.mark.parametrize("gtype,mix", [("Q8_0", "Q8_0"), ("Q5_K", "Q5_K_S"), ("IQ4_XS", "IQ4_XS"), ("IQ3_S", "IQ3_S"),
                                       ("TQ2_0", "TQ2_0")])
def test_gguf_grid_layers_reach_the_file_byte_for_byte(tiny_llama_factory, tmp_path, gtype, mix) -> None:
    """The trained GGML blocks are written as they are (k-quants re-quantized would drift), q/k rows
    permuted for llama.cpp like every other tensor; a checkpoint keeps them too."""
    from lowbit.writers.gguf import load_into

    ref = tiny_llama_factory(hidden_size=256, intermediate_size=512)
    g = qat.prepare(ref, gtype)
    qat.train(g, _data(), qat.TrainSettings(steps=3, lr=1e-3))
    gc = qat.convert(g)
    path = api.export(gc, tmp_path / "m.gguf", fmt="gguf", gguf_type=mix)
    again = load_into(path, ref)
    for name in ("model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj", "model.layers.0.mlp.up_proj"):
        mod = gc.model.get_submodule(name)
        assert isinstance(mod, GGMLLinear) and mod.ggml_type == gtype
        assert torch.equal(mod.dequantize(), again.model.get_submodule(name).weight)
    api.save(gc, tmp_path / "ckpt")
    back = load_model(tmp_path / "ckpt")
    assert torch.equal(back.model.get_submodule(name).blocks, mod.blocks)
    x = X.clamp_max(ref.model.config.vocab_size - 1)
    with torch.no_grad():
        assert torch.equal(gc.model(input_ids=x).logits, back.model(input_ids=x).logits)


def test_conv_layers_fake_quantize_and_convert() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 5))
    h = ModelHandle(model=net, kind="module", name="cnn")
    p = qat.prepare(h, "int2-asym-ch", ignore=[])
    x, y = torch.randn(32, 2, 4, 4), torch.randint(0, 5, (32,))
    res = qat.train(p, (x, y), qat.TrainSettings(steps=30, lr=1e-2, batch=8, distill=False))
    assert sum(res.losses[-5:]) < sum(res.losses[:5])
    c = qat.convert(p)
    assert isinstance(c.model[0], QuantizedConv2d) and isinstance(c.model[3], QuantizedLinear)
    with torch.no_grad(), kernel_mode(c.model, "dequant"):
        assert torch.allclose(p.model(x), c.model(x), atol=1e-5)
    sd = copy.deepcopy(c.model.state_dict())
    fresh = qat.convert(qat.prepare(h, "int2-asym-ch", ignore=[]))
    fresh.model.load_state_dict(sd)
    with torch.no_grad():
        assert torch.equal(fresh.model(x), c.model(x))


def test_a_gguf_type_that_needs_an_imatrix_is_refused_when_prepared(tiny_llama_factory) -> None:
    ref = tiny_llama_factory(hidden_size=256, intermediate_size=512)
    for t in ("IQ2_XXS", "IQ2_XS", "IQ1_S"):  # libggml quantizes these only with one
        with pytest.raises(InputError, match=f"{t} only with an importance matrix"):
            qat.prepare(ref, t)


def test_bad_input_is_refused(tiny_llama, tiny_bert) -> None:
    with pytest.raises(ShapeError):
        qat.prepare(tiny_llama, "int4-asym-g48")  # 48 does not divide 64
    with pytest.raises(InputError, match="start"):
        qat.prepare(tiny_llama, "int4", start="awq")
    with pytest.raises(InputError, match="integer spec"):
        qat.prepare(tiny_llama, "nf4", lsq=True)
    with pytest.raises(InputError, match="not prepared"):
        qat.train(tiny_llama, _data(), qat.TrainSettings(steps=1))
    p = qat.prepare(tiny_llama, "int4")
    with pytest.raises(InputError, match="--lr"):
        qat.train(p, _data(), qat.TrainSettings(steps=1, lr=0))
    with pytest.raises(InputError, match="--resume"):
        qat.train(p, _data(), qat.TrainSettings(steps=1, resume=True))
    with pytest.raises(InputError, match="distillation"):
        qat.train(qat.prepare(tiny_bert, "int4"), [], qat.TrainSettings(steps=1, distill=False))


def test_encoder_distillation_lowers_the_cosine_distance(tiny_bert) -> None:
    from lowbit.metrics.encoder import cosine_to_reference, embed

    texts = ["def f(x):\n    return x + 1", "The quick brown fox.", "import os\nprint(os.getcwd())", "Hello world"] * 4
    p = qat.prepare(tiny_bert, "int2-asym-g32")
    data = [dict(tiny_bert.tokenizer(t, return_tensors="pt")) for t in texts]
    ref = embed(tiny_bert.model, tiny_bert.tokenizer, texts)
    start = 1 - float(cosine_to_reference(embed(qat.convert(p).model, tiny_bert.tokenizer, texts), ref).mean())
    qat.train(p, data, qat.TrainSettings(steps=40, lr=3e-5, batch=4, distill=True))
    end = 1 - float(cosine_to_reference(embed(qat.convert(p).model, tiny_bert.tokenizer, texts), ref).mean())
    assert end < 0.7 * start, (start, end)  # cosine distance to the float model, measured: 0.49x


def test_cli_qat_trains_saves_and_resumes(tiny_llama_dir, tmp_path, text_file) -> None:
    out, ck = tmp_path / "out", tmp_path / "train.pt"
    args = ["qat", str(tiny_llama_dir), "--data", str(text_file), "--spec", "int4-asym-g32", "--steps", "4", "--lr",
            "1e-3", "--seq-len", "16", "--distill", "--checkpoint", str(ck), "--save-every", "2", "--out", str(out)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "4 steps" in r.output and ck.is_file() and (out / "model.safetensors").is_file()
    assert load_model(out).quant["method"]["qat_spec"] == "int4-asym-g32"
    again = CliRunner().invoke(app, args)  # --out exists: refused before any work
    assert again.exit_code != 0 and "already exists" in again.output
    r = CliRunner().invoke(app, [*args[:-1], str(tmp_path / "out2"), "--resume"])
    assert r.exit_code == 0 and "(0 run now)" in r.output, r.output
    bad = CliRunner().invoke(app, ["qat", str(tiny_llama_dir), "--spec", "int9", "--out", str(tmp_path / "o3")])
    assert bad.exit_code != 0 and "--spec" in bad.output and not (tmp_path / "o3").exists()


def test_lsq_scales_train_and_convert_stores_them(tiny_llama) -> None:
    p = qat.prepare(tiny_llama, "int3-asym-g32", lsq=True)
    q = p.model.get_submodule("model.layers.0.mlp.up_proj").weight_quant
    s0 = q.scale.detach().clone()
    qat.train(p, _data(), qat.TrainSettings(steps=5, lr=1e-3))  # scale lr: lr / 10
    assert not torch.equal(s0, q.scale) and float((q.scale - s0).abs().max()) <= 5 * 1e-4 + 1e-6
    c = qat.convert(p)
    assert torch.equal(c.model.get_submodule("model.layers.0.mlp.up_proj").scale, q.scale.detach().half())
    assert torch.allclose(_logits(p), _logits(c), atol=1e-5, rtol=1e-5)


def test_the_progress_bar_shows_the_loss(monkeypatch) -> None:
    from lowbit.progress import Steps

    monkeypatch.setenv("LOWBIT_PROGRESS", "1")
    with Steps(3, "qat int3") as bar:
        for i in range(3):
            bar.update(i + 1, f"loss {0.5 - i / 10:.4f}")
        task = bar._bar.tasks[0]
        assert task.description == "qat int3" and task.completed == 3 and task.fields["info"] == "loss 0.3000"
    monkeypatch.setenv("LOWBIT_PROGRESS", "0")
    with Steps(3, "quiet") as bar:  # off: no bar at all
        bar.update(1, "loss 1")
        assert bar._bar is None
