"""`lowbit compare` on tiny models: the bar, the Pareto front and the guide's recommendation as pure
functions over rows; rows as results.json and the cache hold them; a whole run with its report, resume,
accuracy with flips, and the candidate registry."""

from __future__ import annotations

import ast
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from typer.testing import CliRunner

from lowbit.cli import app
from lowbit.compare import (
    CANDIDATES,
    Bar,
    Candidate,
    CompareSettings,
    Comparison,
    Row,
    cache,
    compare,
    pareto,
    recommend,
    register_candidate,
    speed,
)
from lowbit.compare.candidates import candidates_for
from lowbit.compare.domain import js_distance
from lowbit.errors import InputError

ROOT = Path(__file__).resolve().parents[2]
REF = Row("reference", "float32", "float", 32, ppl=10.0, accuracy=0.80)


def _row(cid, bits, bpw, size, kl, acc=None):
    return Row(cid, cid, "rtn", bits, bits_per_weight=bpw, size_bytes=size, kl_mean=kl, accuracy=acc,
               ppl=10.0 * (1 + kl))


def _metrics(**kw) -> Row:
    return Row("c", "c", "rtn", 4, **kw)


ROWS = [_row("w8", 8, 8.0, 800, 0.003), _row("w4-a", 4, 4.5, 450, 0.04), _row("w4-b", 4, 4.3, 430, 0.09),
        _row("w3", 3, 3.5, 350, 0.30), _row("w2", 2, 2.6, 260, 1.5)]


@pytest.mark.parametrize(("text", "ok_row", "bad_row"), [
    ("kl=0.05", {"kl_mean": 0.05}, {"kl_mean": 0.051}),
    ("ppl=+3%", {"ppl": 10.3}, {"ppl": 10.31}),
    ("ppl=+0.5", {"ppl": 10.5}, {"ppl": 10.6}),
    ("acc=-1", {"accuracy": 0.79}, {"accuracy": 0.785}),
    ("cos=0.99", {"cosine_mean": 0.995}, {"cosine_mean": 0.98}),
])
def test_bars(text, ok_row, bad_row) -> None:
    bar = Bar.parse(text)
    assert bar.holds(_metrics(**ok_row), REF) is True and bar.holds(_metrics(**bad_row), REF) is False
    assert bar.holds(_metrics(), REF) is None


@pytest.mark.parametrize("bad", ["kl", "kl=", "speed=2", "kl=5%", "kl=-1"])
def test_bad_bars(bad) -> None:
    with pytest.raises(InputError, match="--bar"):
        Bar.parse(bad)


def test_pareto_front() -> None:
    rows = [*ROWS, _row("dominated", 4, 4.6, 460, 0.05)]
    assert pareto(rows) == {"w8", "w4-a", "w4-b", "w3", "w2"}


def test_the_recommendation_follows_the_bar() -> None:
    strict = recommend(ROWS, REF, Bar.parse("kl=0.01"))
    assert strict.id == "w8" and strict.met_bar
    assert "The next smaller, w4-a (0.0 MB), misses it (kl_mean 0.04); stop here." in strict.reasons
    loose = recommend(ROWS, REF, Bar.parse("kl=0.5"))
    assert loose.id == "w3" and "The next smaller, w2 (0.0 MB), misses it (kl_mean 1.5); stop here." in loose.reasons
    mid = recommend(ROWS, REF, Bar.parse("kl=0.1"))
    assert mid.id == "w4-b", "the smallest passing candidate at the lowest passing rung"
    budget = recommend(ROWS, REF, Bar.parse("kl=0.05"), budget_bpw=4.4)
    assert budget.id == "w8" and not any(r.startswith("Recommended: w4") for r in budget.reasons)
    none = recommend(ROWS, REF, Bar.parse("kl=0.001"))
    assert not none.met_bar and none.id == "w8" and "quantization-aware training" in none.reasons[-1]


def test_js_distance() -> None:
    a, b = Counter({1: 5, 2: 5}), Counter({3: 10})
    assert js_distance(a, a) == 0.0 and js_distance(a, b) == pytest.approx(1.0)
    assert 0 < js_distance(a, Counter({1: 5, 3: 5})) < 1



def test_rows_read_back_as_results_json_holds_them() -> None:
    """Every row of a real run's results.json reads back into a Row and writes the same keys, in order."""
    res = json.loads((ROOT / "docs" / "compare-smollm2.json").read_text())
    for d in [res["reference"], *res["candidates"]]:
        back = Row.from_dict(d).to_dict()
        assert back == d and list(back) == list(d)
    with pytest.raises(ValueError, match="unknown key"):
        Row.from_dict({**res["candidates"][0], "speed": 1.0})


def test_row_keys_follow_what_was_measured() -> None:
    ref = Row("reference", "float32", "float", 32, prefill_tok_s=100.0, accuracy=0.5, flips=0)
    assert list(ref.to_dict())[-4:] == ["prefill_tok_s", "decode_tok_s", "accuracy", "flips"]
    c = Row("rtn-w8", "rtn-w8", "rtn", 8, label="RTN", format="int8-weight", layer_errors={"l0": 0.1})
    d = c.to_dict()
    assert not {"pareto", "meets_bar", "axes", "accuracy", "prefill_tok_s"} & d.keys()
    assert list(d)[-1] == "slower_than_fp32" and d["layer_errors"] == {"l0": 0.1}
    c.pareto, c.meets_bar = False, None  # decided; the row lacks the bar's metric
    assert list(c.to_dict())[-2:] == ["pareto", "meets_bar"] and c.to_dict()["meets_bar"] is None


def test_a_cached_row_reads_back_the_same(tmp_path) -> None:
    row = Row("gptq-w3g64@pydoc:calib", "gptq-w3g64", "gptq", 3, kl_mean=0.1, label="GPTQ", format="int4-weight",
              calib_seconds=1.5, calibrated=True, layer_errors={"l0": 0.2}, axes={"bit width": "3"}, accuracy=0.5,
              flips=2, flips_to_wrong=1, flips_to_right=0)
    path = tmp_path / "c" / "x.json"
    assert cache.read_row(path) is None
    cache.write_row(path, row)
    assert cache.read_row(path) == row and [f.name for f in path.parent.iterdir()] == ["x.json"]


def test_compare_records_speed_through_the_one_writer(tmp_path, monkeypatch) -> None:
    from lowbit.plan import rule

    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path))
    old = {"bnb-nf4": {"prefill_ratio_vs_fp32": 0.5}, "cuda": {"fp16": {"prefill_ratio_vs_fp32": 3.0}}}
    (tmp_path / "speed.json").write_text(json.dumps(old))
    rows = [Row("rtn-w8", "rtn-w8", "rtn", 8, format="int8-weight", speed_ratio_vs_fp32=0.9, decode_ratio_vs_fp32=0.8,
                speed_note="torch"), Row("gguf-q8_0", "gguf-q8_0", "gguf", 8, format="gguf")]  # the GGUF one: not timed
    calls, writer = [], rule.record_speed
    monkeypatch.setattr(rule, "record_speed", lambda entries, section=None: calls.append((entries, section)) or
                        writer(entries, section))
    speed.record(rows, "tiny")
    assert [(list(e), sec) for e, sec in calls] == [(["int8-weight"], None)]
    data = json.loads((tmp_path / "speed.json").read_text())
    assert data["bnb-nf4"] == old["bnb-nf4"] and data["cuda"] == old["cuda"]  # merged, not replaced
    assert data["int8-weight"]["prefill_ratio_vs_fp32"] == 0.9 and data["int8-weight"]["runtime"] == "torch"

    def full(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(rule, "record_speed", full)
    speed.record(rows, "tiny")  # a speed cache that cannot be written does not fail the run


def test_layer_errors_is_a_metric() -> None:
    import copy

    import torch
    from torch import nn

    from lowbit.metrics.layer_error import layer_errors

    class Dequantizes(nn.Module):
        def __init__(self, w: torch.Tensor) -> None:
            super().__init__()
            self.w = w

        def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
            return self.w.to(dtype)

    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(8, 6), nn.Linear(6, 4), nn.Linear(4, 2))
    cand = copy.deepcopy(ref)
    with torch.no_grad():
        cand[0].weight.mul_(1.1)  # 10% off; cand[2] stays in float and is skipped
    cand[1] = Dequantizes(ref[1].weight.detach() * 0.5)
    assert layer_errors(ref, cand) == pytest.approx({"0": 0.1, "1": 0.5}, rel=1e-5)


def test_compare_imports_no_api() -> None:
    """compare sits above methods and metrics, below the API: no module of it imports lowbit.api."""
    for f in sorted((ROOT / "src" / "lowbit" / "compare").glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or "", *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert not any(n == "lowbit.api" or n.startswith("lowbit.api.") for n in names), (f.name, names)


def test_default_set_covers_every_family_and_a_new_one_joins(monkeypatch) -> None:
    families = {c.family for c in candidates_for("causal-lm", None)}
    assert {"rtn", "hqq", "gptq", "awq", "gguf", "bitsandbytes"} <= families
    bits = [c.bits for c in candidates_for("causal-lm", None)]
    assert bits == sorted(bits, reverse=True), "conservative first"
    assert {c.family for c in candidates_for("encoder", None)} >= {"rtn", "hqq"}
    fake = Candidate("zz-fake-w4", "fakefam", 4, "a new family", "int4-weight", lambda ref, ctx: None)
    register_candidate(fake)
    try:
        assert "fakefam" in {c.family for c in candidates_for("causal-lm", None)}
    finally:
        CANDIDATES._entries.pop("zz-fake-w4")
    with pytest.raises(InputError, match="cannot run on an encoder"):
        candidates_for("encoder", ["gptq-w4g64"])


@pytest.fixture
def settings(text_file):
    return CompareSettings(calib=str(text_file), eval=str(text_file), methods=["rtn-w8", "rtn-w4g64", "gptq-w3g64"],
                           windows=2, seq_len=32, calib_samples=4, speed=False, bar="kl=0.05")


def test_a_whole_run_writes_the_report_and_resumes(tiny_llama, settings, tmp_path, monkeypatch) -> None:
    out = compare(tiny_llama, settings, tmp_path / "rep")
    for f in ("report.md", "report.html", "results.json", "size_quality.png", "layer_error.png"):
        assert (tmp_path / "rep" / f).stat().st_size > 100
    res = json.loads((tmp_path / "rep" / "results.json").read_text())
    assert [c["method"] for c in res["candidates"]] == ["rtn-w8", "rtn-w4g64", "gptq-w3g64"]
    for c in res["candidates"]:
        for k in ("method", "family", "bits_per_weight", "size_bytes", "kl_mean", "ppl", "calib_seconds",
                  "speed_ratio_vs_fp32", "pareto"):
            assert k in c
        assert c["layer_errors"] and all(v > 0 for v in c["layer_errors"].values())
    w8, w4 = res["candidates"][0], res["candidates"][1]
    assert w8["kl_mean"] < w4["kl_mean"] and w8["bits_per_weight"] > w4["bits_per_weight"]
    assert res["recommendation"]["method"] == out["recommendation"]["method"] and res["recommendation"]["reasons"]
    html = (tmp_path / "rep" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "Recommendation" in html

    # a rerun skips every finished candidate: building any of them again would fail
    for name in ("rtn-w8", "rtn-w4g64", "gptq-w3g64"):
        c = CANDIDATES.get(name)
        monkeypatch.setitem(CANDIDATES._entries, name, Candidate(c.id, c.family, c.bits, c.label, c.format, _boom,
                                                                 c.needs_calib, c.kinds, c.config))
    rerun = Comparison(tiny_llama, settings, tmp_path / "rep")
    again = rerun.run().to_dict()
    assert [r["kl_mean"] for r in again["candidates"]] == [r["kl_mean"] for r in res["candidates"]]
    assert rerun.evaluator._ref_lm.computed == 0  # the reference's log-probs come from the disk store
    assert again["reference"]["ppl"] == res["reference"]["ppl"]


def test_llama_perplexity_protocol_is_named_and_keyed(tiny_llama, settings, tmp_path) -> None:
    from dataclasses import replace

    lp = replace(settings, protocol="llama-perplexity", methods=["rtn-w8"])
    res = compare(tiny_llama, lp, tmp_path / "rep")
    assert res["protocol"]["protocol"] == "llama-perplexity"
    assert res["candidates"][0]["n_tokens"] == 2 * (32 // 2 - 1)
    assert "Protocol (`--protocol llama-perplexity`): llama-perplexity's chunks" in (tmp_path / "rep" / "report.md").read_text()
    windows = compare(tiny_llama, replace(settings, methods=["rtn-w8"]), tmp_path / "rep")  # not the cached row
    assert windows["candidates"][0]["n_tokens"] == 2 * 31
    assert "Protocol (`--protocol windows`)" in (tmp_path / "rep" / "report.md").read_text()


def _boom(*a, **k):
    raise AssertionError("a cached candidate was rebuilt")


def test_multiple_choice_accuracy_with_flips(tiny_llama, settings, tmp_path) -> None:
    mc = tmp_path / "mc.jsonl"
    items = [{"question": f"the {w} is", "choices": ["red", "blue", "green"], "answer": i % 3}
             for i, w in enumerate(["sky", "sea", "grass", "sun", "moon", "tree"])]
    mc.write_text("\n".join(json.dumps(i) for i in items))
    s = CompareSettings(calib=settings.calib, eval=str(mc), eval_text=settings.eval, methods=["rtn-w8", "rtn-w3g64"],
                        windows=2, seq_len=32, speed=False)
    out = compare(tiny_llama, s, tmp_path / "rep")
    assert out["task"]["kind"] == "multiple-choice" and out["bar"].startswith("accuracy")
    assert 0 <= out["reference"]["accuracy"] <= 1
    for c in out["candidates"]:
        assert 0 <= c["accuracy"] <= 1
        assert c["flips"] >= c["flips_to_wrong"] + c["flips_to_right"]  # the rest moved between wrong answers
        assert c["accuracy"] == pytest.approx(out["reference"]["accuracy"] + (c["flips_to_right"] - c["flips_to_wrong"]) / 6)


def test_classification_for_encoders(tiny_bert, tmp_path) -> None:
    data = tmp_path / "cls.jsonl"
    rows = [{"text": f"good fine great nice {i}", "label": "pos"} for i in range(6)]
    rows += [{"text": f"bad awful poor sad {i}", "label": "neg"} for i in range(6)]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    text = tmp_path / "t.txt"
    text.write_text(" ".join(r["text"] for r in rows) * 5)
    s = CompareSettings(calib=None, eval=str(data), eval_text=str(text), methods=["rtn-w8", "rtn-w3g64"], speed=False)
    out = compare(tiny_bert, s, tmp_path / "rep")
    assert out["task"]["kind"] == "classification"
    assert all(c["cosine_mean"] is not None and c["flips"] is not None for c in out["candidates"])


def test_bad_eval_files_are_clear_errors(tiny_llama, settings, tmp_path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer": 5}))
    with pytest.raises(InputError, match="answer"):
        compare(tiny_llama, CompareSettings(eval=str(bad), calib=settings.calib, methods=["rtn-w8"]), tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_cli_compare_and_list(tiny_llama_dir, text_file, tmp_path) -> None:
    r = CliRunner().invoke(app, ["compare", "x", "--list"])
    assert r.exit_code == 0 and "gguf-q4_k_m" in r.output and "gptq-w4g64" in r.output
    r = CliRunner().invoke(app, ["compare", str(tiny_llama_dir), "--calib", str(text_file), "--eval", str(text_file),
                                 "--methods", "rtn-w8,rtn-w4g64", "--windows", "2", "--seq-len", "32", "--no-speed",
                                 "--bar", "kl=1", "--report", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    assert "Recommendation: rtn-w4g64" in r.output
    r = CliRunner().invoke(app, ["compare", str(tiny_llama_dir), "--methods", "rtn-w9"])
    assert r.exit_code == 2 and "did you mean" in r.output


def test_qat_joins_when_training_data_and_steps_are_given(tiny_llama, text_file, tmp_path) -> None:
    assert "qat" not in {c.family for c in candidates_for("causal-lm", None)}
    with_training = candidates_for("causal-lm", None, training=True)
    assert {c.id for c in with_training if c.family == "qat"} == {"qat-w4g64", "qat-w3g64"}
    assert "qat-w3g64" in {c.id for c in candidates_for("encoder", None, training=True)}
    base = {"calib": str(text_file), "eval": str(text_file), "windows": 2, "seq_len": 32, "speed": False}
    with pytest.raises(InputError, match="--train-data"):
        compare(tiny_llama, CompareSettings(**base, methods=["qat-w3g64"]), tmp_path / "r0")
    s = CompareSettings(**base, methods=["rtn-w3g64", "qat-w3g64"], train_data=str(text_file), qat_steps=3)
    res = compare(tiny_llama, s, tmp_path / "r1")
    rows = {r["method"]: r for r in res["candidates"]}
    assert rows["qat-w3g64"]["family"] == "qat" and rows["qat-w3g64"]["calib_seconds"] > 0
    assert rows["qat-w3g64"]["bits_per_weight"] == pytest.approx(rows["rtn-w3g64"]["bits_per_weight"])
    assert rows["qat-w3g64"]["kl_mean"] != rows["rtn-w3g64"]["kl_mean"]  # trained: not the RTN start any more


def test_the_ladder_reads_real_size_not_nominal_bits() -> None:
    """A nominal "4-bit" file that fell back to wider types (6.16 bpw, like Q4_K_M on smollm2) is larger than a
    "5-bit" one at 5.1 bpw: when both hold the bar, the smaller real size wins, and its reasons say so."""
    rows = [_row("gguf-q4_k_m", 4, 6.16, 105_500_000, 0.03), _row("rtn-w5g64", 5, 5.1, 90_000_000, 0.04),
            _row("rtn-w8", 8, 8.5, 145_000_000, 0.002)]
    rec = recommend(rows, REF, Bar.parse("kl=0.05"))
    assert rec.id == "rtn-w5g64" and rec.met_bar
    assert rec.reasons[-1] == "Recommended: rtn-w5g64, the smallest that holds the bar (5.10 bits per weight)."


def _blocks(kl_per_block: list[float], n: float = 64.0) -> dict:
    return {"n": [n] * len(kl_per_block), "nll": [2.0 * n] * len(kl_per_block), "kl": [k * n for k in kl_per_block],
            "agree": [0.9 * n] * len(kl_per_block)}


def test_paired_differences_name_what_noise_cannot_separate() -> None:
    """Same tokens: a candidate whose per-block KL tracks the pick's within noise is indistinguishable; one
    that is clearly worse on every block is not, and the intervals are honest about it."""
    from lowbit.compare.decide import settle
    from lowbit.metrics import stats

    rng = np.random.default_rng(0)
    base = list(0.04 + 0.01 * rng.standard_normal(32))
    twin = [k + 0.0005 * s for k, s in zip(base, rng.standard_normal(32))]
    worse = [k + 0.02 for k in base]
    rows = [_row("pick", 4, 4.3, 430, float(np.mean(base))), _row("twin", 4, 4.5, 450, float(np.mean(twin))),
            _row("worse", 4, 4.6, 460, float(np.mean(worse)))]
    for r, b in zip(rows, (base, twin, worse)):
        r.blocks, r.ci95 = _blocks(b), stats.ci95(_blocks(b))
    rec = recommend(rows, REF, Bar.parse("kl=0.05"))
    assert rec.id == "pick"
    settle(rows, rec, Bar.parse("kl=0.05"))
    assert rec.indistinguishable_from == ["twin"]
    worse_diff = rows[2].paired_vs_recommended
    assert worse_diff["distinguishable"] and worse_diff["ci95"][0] > 0.019 and worse_diff["diff"] == pytest.approx(0.02)
    lo, hi = rows[0].ci95["kl_mean"]
    assert lo < np.mean(base) < hi and hi - lo < 0.01
    assert any(r.startswith("Indistinguishable at this sample size from pick on kl_mean") for r in rec.reasons)


@pytest.mark.parametrize(("args", "message"), [
    (["--bar", "kl=abc"], "error: --bar 'kl=abc': expected kl=0.05, ppl=+3%, acc=-1, cos=0.99 or top1=0.9"),
    (["--budget-bpw", "-3"], "error: --budget-bpw -3: expected bits per weight above 0 and at most 32"),
    (["--methods", "rtn-w8,nosuch"], "error: unknown compare candidate 'nosuch'"),
    (["--until-decided", "0"], "error: --until-decided 0: expected a time budget in seconds above 0"),
    (["--protocol", "wikitext"], "error: --protocol 'wikitext': expected one of windows, llama-perplexity"),
    (["--eval", "TINY"], "error: data 'TINY' has 6 tokens, fewer than one window of 32; give more text or a shorter --seq-len"),
])
def test_bad_compare_input_is_one_line_and_leaves_no_report(tiny_llama_dir, tmp_path, args, message) -> None:
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("hello")
    args = [str(tiny) if a == "TINY" else a for a in args]
    message = message.replace("TINY", str(tiny))
    r = CliRunner().invoke(app, ["compare", str(tiny_llama_dir), "--seq-len", "32", "--no-speed", *args,
                                 "--report", str(tmp_path / "rep")])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith(message), r.output
    assert not (tmp_path / "rep").exists()


def test_speed_ratios_are_medians_of_interleaved_pairs_and_say_when_under_load() -> None:
    from lowbit.compare.speed import Ratios

    calm = Ratios.of([(2.0, 1.5), (2.1, 1.4), (1.9, 1.5)], "torch")
    assert calm.prefill == 2.0 and calm.decode == 1.5 and calm.note == "torch"
    assert calm.spread == {"prefill": [1.9, 2.1], "decode": [1.4, 1.5]}
    loaded = Ratios.of([(2.0, 1.5), (0.9, 1.4), (2.1, 1.5)], "torch")
    assert loaded.prefill == 2.0
    assert loaded.note == "torch; measured under load (prefill pair ratios spread over 25%)"
    assert Ratios.of([(None, None)], "torch") == Ratios()


def test_size_breakdown_adds_up_and_names_the_policy(tiny_llama_factory, tmp_path) -> None:
    import lowbit
    from lowbit.metrics.size import gguf_size_breakdown, model_bytes, size_breakdown
    from lowbit.writers.gguf import export_gguf

    q, _ = lowbit.quantize(tiny_llama_factory(tie_word_embeddings=False))
    b = size_breakdown(q.model)
    assert b["total"] == model_bytes(q.model) == b["quantized_layers"] + b["embeddings"] + b["head"] + b["other"]
    assert b["embeddings"] == b["head"] == 128 * 64 * 4 and b["quantized_layers"] > 0
    assert b["embeddings_policy"] == "embeddings kept as stored; head kept as stored"
    path = tmp_path / "m.gguf"
    export_gguf(tiny_llama_factory(tie_word_embeddings=False), path, "Q8_0")
    g = gguf_size_breakdown(str(path))
    assert g["embeddings"] == g["head"] == 128 * 64 // 32 * 34
    assert g["embeddings_policy"] == "in the file: embeddings Q8_0, head Q8_0"
    assert g["total"] == path.stat().st_size > g["quantized_layers"] + g["embeddings"] + g["head"] + g["other"]


def test_layer_error_scores_outputs_so_a_rescaled_layer_is_not_penalised(tiny_llama_factory) -> None:
    """A scale folded into the norm before gate/up (as AWQ and SmoothQuant do) moves the weights a lot and
    the outputs not at all: the output error says so, the weight error does not."""
    import copy

    import torch

    from lowbit.compare.report import layer_grid
    from lowbit.metrics.layer_error import layer_errors, layer_outputs, output_errors

    ref = tiny_llama_factory().model
    cand = copy.deepcopy(ref)
    with torch.no_grad():
        for layer in cand.model.layers:
            s = torch.linspace(0.5, 2.0, layer.post_attention_layernorm.weight.numel())
            layer.post_attention_layernorm.weight.mul_(s)
            layer.mlp.gate_proj.weight.div_(s)
            layer.mlp.up_proj.weight.div_(s)
    ids = torch.arange(1, 33)[None]
    names = [n for n, m in ref.named_modules() if isinstance(m, torch.nn.Linear)]
    out = output_errors(layer_outputs(ref, names, ids), cand, ids)
    w = layer_errors(ref, cand)
    assert w["model.layers.0.mlp.up_proj"] > 0.1 and out["model.layers.0.mlp.up_proj"] < 1e-5
    types, blocks, cell = layer_grid(list(out))
    assert types[:2] == ["self_attn.q_proj", "self_attn.k_proj"] and blocks == [0, 1]
    assert cell["model.layers.1.mlp.down_proj"] == (types.index("mlp.down_proj"), 1) and "lm_head" not in cell


def test_encoder_rows_get_cosine_intervals_and_paired_differences() -> None:
    import torch

    from lowbit.compare.decide import settle
    from lowbit.metrics import stats

    rng = np.random.default_rng(1)
    base = torch.tensor(0.995 + 0.002 * rng.standard_normal(32))
    rows = []
    for cid, shift, size in (("a", 0.0, 100), ("b", -0.004, 90)):
        r = Row(cid, cid, "rtn", 4, size_bytes=size, bits_per_weight=4.0, cosine_mean=float((base + shift).mean()))
        r.blocks = stats.cosine_blocks(base + shift)
        r.ci95 = stats.ci95(r.blocks)
        rows.append(r)
    lo, hi = rows[0].ci95["cosine_mean"]
    assert lo < float(base.mean()) < hi and set(rows[0].ci95) == {"cosine_mean"}
    rec = recommend(rows, REF, Bar.parse("cos=0.98"))
    assert rec.id == "b"
    settle(rows, rec, Bar.parse("cos=0.98"))
    d = rows[0].paired_vs_recommended
    assert d["stat"] == "cosine_mean" and d["diff"] == pytest.approx(0.004) and d["distinguishable"]


def test_bitsandbytes_speed_is_not_lowbits_torch_layer(monkeypatch) -> None:
    """Without bitsandbytes, NF4 / LLM.int8 get no speed figure and a note saying how to get one."""
    import importlib.util

    from lowbit.compare.speed import NO_BITSANDBYTES, SpeedMeter

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "bitsandbytes" else real(n, *a))
    meter = SpeedMeter(None, None, None, enabled=True)
    r = meter.bitsandbytes_ratio(None)
    assert r.prefill is None and r.decode is None and r.note == NO_BITSANDBYTES


def _kl_row(id_: str, size: int, kl: float, ci: tuple[float, float]) -> Row:
    return Row(id=id_, method=id_, family="rtn", bits=4, size_bytes=size, bits_per_weight=size / 100, kl_mean=kl,
               ci95={"kl_mean": list(ci)})


def test_open_candidates_are_those_the_decision_hinges_on() -> None:
    from lowbit.compare.decide import Recommendation
    from lowbit.compare.until import open_candidates

    bar, ref = Bar.parse("kl=0.05"), Row(id="float32", method="float32", family="float", bits=32, ppl=10.0)
    rows = [_kl_row("big", 800, 0.01, (0.008, 0.012)), _kl_row("pick", 400, 0.04, (0.035, 0.045)),
            _kl_row("twin", 420, 0.041, (0.036, 0.046)), _kl_row("small", 300, 0.06, (0.045, 0.07)),
            _kl_row("tiny", 200, 0.3, (0.25, 0.35)), _kl_row("bigger-unsure", 900, 0.05, (0.04, 0.06))]
    rec = Recommendation("pick", [], True)
    assert open_candidates(rows, rec, bar, ref) == ["small"]  # small may hold the bar with more tokens
    rec.indistinguishable_from = ["twin"]
    assert open_candidates(rows, rec, bar, ref) == ["pick", "twin", "small"]
    settled = [_kl_row("pick", 400, 0.01, (0.009, 0.011)), _kl_row("small", 300, 0.3, (0.25, 0.35))]
    assert open_candidates(settled, Recommendation("pick", [], True), bar, ref) == []
    unsure = [_kl_row("pick", 400, 0.048, (0.045, 0.052)), _kl_row("small", 300, 0.3, (0.25, 0.35))]
    assert open_candidates(unsure, Recommendation("pick", [], True), bar, ref) == ["pick"]
    ppl_bar = Bar.parse("ppl=+10%")  # threshold 11.0: an interval of PPL across it is open
    r = Row(id="pick", method="p", family="rtn", bits=4, size_bytes=1, ppl=10.9, ci95={"ppl": [10.5, 11.3]})
    assert open_candidates([r], Recommendation("pick", [], True), ppl_bar, ref) == ["pick"]


def test_until_decided_estimates_a_round_from_the_cached_seconds() -> None:
    from lowbit.compare.until import estimate

    ref = Row(id="reference", method="float32", family="float", bits=32, n_tokens=8 * 511)
    rows = [Row(id="a", method="a", family="rtn", bits=4, n_tokens=4 * 511, seconds=40.0),  # scored on 4 windows
            Row(id="b", method="b", family="rtn", bits=4, n_tokens=8 * 511, seconds=16.0),  # on 8
            Row(id="c", method="c", family="rtn", bits=4, n_tokens=8 * 511, seconds=None)]  # an old cached row
    # next round: 16 windows each for a (10 s a window) and b (2 s), 8 new reference windows at their mean rate
    assert estimate(rows, ["a", "b"], ref, 8) == pytest.approx(16 * 10 + 16 * 2 + 8 * 6)
    assert estimate(rows, ["c"], ref, 8) == 0.0


def test_until_decided_rescores_only_the_open_candidates(tiny_llama, settings, tmp_path) -> None:
    from dataclasses import replace

    first = compare(tiny_llama, replace(settings, methods=["rtn-w8", "rtn-w3g64"]), tmp_path / "r0")
    w3 = first["candidates"][1]
    bar = f"kl={w3['kl_mean']:.6f}"  # right on rtn-w3g64's estimate: its interval straddles the bar
    s = replace(settings, methods=["rtn-w8", "rtn-w3g64"], bar=bar, until_decided=120.0)
    c = Comparison(tiny_llama, s, tmp_path / "rep")
    res = c.run().to_dict()
    u = res["until_decided"]
    assert "rtn-w3g64" in u["rounds"][0]["open"] and u["rounds"][0]["windows"] == 2
    assert len(u["rounds"]) >= 2 and [r["windows"] for r in u["rounds"]][:2] == [2, 4]
    assert u["why"] in ("decided", "out of time", "out of data") and u["decided"] == (u["why"] == "decided")
    sample = {"rtn-w8": 2, "rtn-w3g64": 2}  # windows each was last scored on: open in a round -> the next one's
    for now, nxt in zip(u["rounds"], u["rounds"][1:]):
        for cid in now["open"]:
            sample[cid] = nxt["windows"]
    assert {r["id"]: r["n_tokens"] for r in res["candidates"]} == {k: 31 * w for k, w in sample.items()}
    assert sample["rtn-w3g64"] > 2 and res["reference"]["n_tokens"] == 31 * u["rounds"][-1]["windows"]
    assert any(r.startswith(("Decided (--until-decided)", "Could not decide (--until-decided"))
               for r in res["recommendation"]["reasons"])
    pv = next(r for r in res["candidates"] if r["id"] != res["recommendation"]["method"])["paired_vs_recommended"]
    assert pv is not None and pv["blocks"] == min(sample.values())  # on the tokens both were scored on
    assert "--until-decided 120" in (tmp_path / "rep" / "report.md").read_text()
    again = Comparison(tiny_llama, s, tmp_path / "rep").run().to_dict()  # a rerun: every round's rows cached
    assert again["until_decided"]["rounds"] == u["rounds"] and again["candidates"] == res["candidates"]


@pytest.mark.parametrize("tied", [False, True])
def test_embeddings_quantized_is_one_rule_for_every_family(tiny_llama_factory, text_file, tmp_path, tied) -> None:
    """--embeddings quantized: the torch candidates' embeddings and head in int8 rows, the GGUF file's in Q8_0;
    a tied head stays one copy."""
    s = CompareSettings(calib=str(text_file), eval=str(text_file), methods=["rtn-w4g64", "bnb-nf4", "gguf-q4_k_m"],
                        windows=1, seq_len=32, calib_samples=2, speed=False, embeddings="quantized")
    model = tiny_llama_factory(tie_word_embeddings=tied)
    res = compare(model, s, tmp_path / "rep")
    vocab, width = 128, 64
    int8_rows, q8_0 = vocab * width + vocab * 2, vocab * width // 32 * 34  # codes + one float16 scale per row
    for row in res["candidates"]:
        b = row["size_breakdown"]
        if row["family"] == "gguf":
            assert b["embeddings"] == q8_0 and b["head"] == (0 if tied else q8_0)
        else:
            assert b["embeddings"] == int8_rows and b["head"] == (0 if tied else int8_rows), row["id"]
            assert b["embeddings_policy"] == ("embeddings quantized; head tied to the embeddings" if tied else
                                              "embeddings quantized; head quantized")
    assert "quantizes the token embeddings and the output head by one rule" in (tmp_path / "rep" / "report.md").read_text()
    stored = compare(model, replace(s, methods=["rtn-w4g64"], embeddings="stored"), tmp_path / "rep")
    assert stored["candidates"][0]["size_breakdown"]["embeddings"] == vocab * width * 4  # not the cached quantized row


def test_until_decided_adds_passages_for_an_encoder(tiny_bert, text_file, tmp_path) -> None:
    s = CompareSettings(calib=None, eval=str(text_file), methods=["rtn-w8", "rtn-w3g64"], windows=1, speed=False)
    first = compare(tiny_bert, s, tmp_path / "r0")
    w3 = first["candidates"][1]
    assert w3["n_tokens"] == first["reference"]["n_tokens"]  # 16 passages: one window's worth
    bar = f"cos={w3['cosine_mean']!r}"  # right on rtn-w3g64's estimate: its interval straddles the bar
    res = compare(tiny_bert, replace(s, bar=bar, until_decided=120.0), tmp_path / "rep")
    u = res["until_decided"]
    assert u["rounds"][0]["windows"] == 1 and "rtn-w3g64" in u["rounds"][0]["open"]
    assert len(u["rounds"]) >= 2 and u["rounds"][1]["windows"] == 2  # 32 passages asked: the file holds 24
    assert u["why"] in ("decided", "out of data")
    got = next(r for r in res["candidates"] if r["id"] == "rtn-w3g64")
    assert got["n_tokens"] > w3["n_tokens"] and res["reference"]["n_tokens"] == got["n_tokens"]


def test_embeddings_quantized_on_an_encoder_without_a_head(tiny_bert, text_file, tmp_path) -> None:
    s = CompareSettings(calib=None, eval=str(text_file), methods=["rtn-w4g64"], windows=1, speed=False,
                        embeddings="quantized")
    b = compare(tiny_bert, s, tmp_path / "rep")["candidates"][0]["size_breakdown"]
    assert b["embeddings_policy"] == "embeddings quantized; no output head" and b["head"] == 0
    word = tiny_bert.model.get_input_embeddings().weight
    assert b["embeddings"] < sum(m.weight.numel() * 4 for m in tiny_bert.model.modules()
                                 if isinstance(m, torch.nn.Embedding))  # the word table in int8 rows
    assert b["embeddings"] >= word.shape[0] * word.shape[1]


def test_budget_candidates_join_with_their_allocation(tiny_llama, settings, tmp_path) -> None:
    """`compare --budget`: GGUF files mixed to each size, scored like the fixed mixes, with the allocation
    (tensor, type, bytes, predicted dKL) in results.json and in both reports."""
    s = replace(settings, methods=["gguf-q8_0", "gguf-q4_k_m"], budgets=["11", "14"], budget_check=8)
    res = compare(tiny_llama, s, tmp_path / "rep")
    rows = {c["method"]: c for c in res["candidates"]}
    lo, hi = rows["gguf-budget-11bpw"], rows["gguf-budget-14bpw"]
    for r, bpw in ((lo, 11), (hi, 14)):
        assert r["family"] == "gguf-budget" and r["kl_mean"] is not None and r["predicted_kl"] > 0
        assert r["calib_seconds"] > 0  # the file's cost, the proxy check's seconds taken out
        names = [a[0] for a in r["allocation"]]
        assert "token_embd.weight" in names and "blk.0.attn_q.weight" in names
        assert dict((a[0], a[1]) for a in r["allocation"])["token_embd.weight"] == "F32"  # --embeddings stored
        assert sum(a[2] for a in r["allocation"]) * 8 <= bpw * sum(  # the budget holds over every tensor's weights
            np.prod(p.shape) for p in tiny_llama.model.parameters())
    assert lo["size_bytes"] < hi["size_bytes"] and lo["predicted_kl"] > hi["predicted_kl"]
    assert lo["proxy"] == hi["proxy"] and len(lo["proxy"]["pairs"]) == 8  # measured once, for both
    pairs = np.array([p[2:] for p in lo["proxy"]["pairs"]])
    assert (pairs[:, 1] > 0).all() and lo["proxy"]["spearman"] == pytest.approx(spearmanr(pairs[:, 0], pairs[:, 1]).statistic)
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Allocation of `gguf-budget-11bpw`" in md and "| blk.0.ffn_down.weight |" in md
    assert f"Spearman's rank correlation between predicted and measured dKL is {lo['proxy']['spearman']:.3f} over 8" in md
    assert "Allocation of gguf-budget-14bpw" in (tmp_path / "rep" / "report.html").read_text()
    with pytest.raises(InputError, match="--budget"):
        compare(tiny_llama, replace(s, budgets=["lots"]), tmp_path / "bad")


def test_budget_section_states_its_checks_or_their_absence() -> None:
    """The allocation's intro: the measured KL always, the additivity ratio only where a prediction is
    non-zero (a model on the file's own grid predicts 0), and the proxy check or that it was skipped."""
    from lowbit.compare.budget_report import markdown_sections
    from lowbit.compare.row import Row

    alloc = [["blk.0.attn_q.weight", "Q4_1", 1000, 0.0], ["token_embd.weight", "Q8_0", 3000, 0.0]]
    r = Row("gguf-budget-1mb", "gguf-budget-1mb", "gguf-budget", 4, kl_mean=0.0, size_bytes=4_000_000,
            bits_per_weight=5.0, allocation=alloc, predicted_kl=0.0, label="GGUF mixed to 1 MB")
    md = "\n".join(markdown_sections([r]))
    assert "measured 0.0000." in md and "additivity" not in md and "not checked against measured KL" in md
    r.predicted_kl, r.kl_mean = 0.02, 0.03
    r.proxy = {"spearman": 0.9, "within_type": {"Q4_1": 0.8}, "pairs": [["a", "Q4_1", 0.1, 0.2]] * 4}
    md = "\n".join(markdown_sections([r]))
    assert "measured / predicted 1.50" in md and "is 0.900 over 4 (tensor, type) pairs" in md and "Q4_1 0.80" in md
    assert "Bytes by type: Q8_0 75%, Q4_1 25%" in md


def test_the_i_quant_and_ternary_mixes_are_candidates_and_their_fallbacks_are_reported(tiny_llama, text_file,
                                                                                       tmp_path) -> None:
    """The new GGUF mixes join compare (those whose own type llama.cpp quantizes only with an importance
    matrix ask for calibration); a tensor whose width refuses the mix's type is reported with what it took,
    in the row and as a warning (tiny_llama is 64 wide: IQ4_XS's 256-blocks fall back to IQ4_NL)."""
    needs = {c.id: c.needs_calib for c in candidates_for("causal-lm", [
        "gguf-iq3_m", "gguf-iq3_xxs", "gguf-iq2_m", "gguf-iq2_xxs", "gguf-tq2_0", "gguf-iq1_m"])}
    assert needs == {"gguf-iq3_m": False, "gguf-iq3_xxs": True, "gguf-iq2_m": True, "gguf-iq2_xxs": True,
                     "gguf-tq2_0": False, "gguf-iq1_m": True}
    s = CompareSettings(calib=str(text_file), eval=str(text_file), methods=["gguf-q8_0", "gguf-iq4_xs"],
                        windows=1, seq_len=32, calib_samples=2, speed=False)
    res = compare(tiny_llama, s, tmp_path / "rep")
    rows = {r["id"]: r for r in res["candidates"]}
    assert "fallbacks" not in rows["gguf-q8_0"]
    falls = rows["gguf-iq4_xs"]["fallbacks"]
    assert falls and all("IQ4_XS -> IQ4_NL" in f for f in falls)
    assert any(w.startswith(f"gguf-iq4_xs: {len(falls)} tensor(s) could not take") for w in res["warnings"])
    assert "could not take the mix's type" in (tmp_path / "rep" / "report.md").read_text()
