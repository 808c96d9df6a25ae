"""`lowbit plan`: every branch of the guide's rule is reached and explained on the five axes; the
rule and the hardware table are data; plan answers without importing torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from lowbit.cli import app
from lowbit.errors import InputError
from lowbit.plan import Inputs, ModelInfo, make_plan
from lowbit.plan.model_info import CAUSAL_LM, ENCODER
from lowbit.plan.rule import Target, rules

LLM = ModelInfo("llm", CAUSAL_LM, 7_000_000_000)
SMALL_ENCODER = ModelInfo("bert", ENCODER, 22_000_000)
AXES = ["bit width", "what is quantized", "granularity", "calibration cost", "hardware support"]


@pytest.mark.parametrize(("inputs", "model", "rule", "chosen", "runner_up"), [
    (Inputs(target="cuda:8.0", goal="experiment"), LLM, "experiment", "bnb-int8", "bnb-nf4"),
    (Inputs(target="cuda:8.0", goal="serve"), LLM, "gpu-4bit-serving", "gptq-w4", "awq-w4"),
    (Inputs(target="cpu", goal="serve"), LLM, "cpu-edge", "gguf-q4_k_m", "gguf-q5_k_m"),
    (Inputs(target="apple", goal="edge"), LLM, "cpu-edge", "gguf-q4_k_m", "gguf-q5_k_m"),
    (Inputs(target="cuda:9.0", goal="accuracy"), LLM, "qat", "qat", "gptq-w4"),
    (Inputs(target="cpu", goal="serve", latency_critical=True), SMALL_ENCODER, "tiny-latency", "w8a8", "int8-weight"),
    (Inputs(target="cuda:8.0", goal="serve"), SMALL_ENCODER, "default", "int8-weight", "rtn-w4g64"),
])
def test_each_branch_is_reached_and_explained(inputs, model, rule, chosen, runner_up) -> None:
    p = make_plan(inputs, model)
    assert (p.rule["id"], p.chosen.id, p.runner_up.id) == (rule, chosen, runner_up)
    ids = [r["id"] for r in rules()["rule"]]
    assert len(p.path) == ids.index(rule) + 1, "walks top-down and stops at the first match"
    assert [s.matched for s in p.path] == [False] * (len(p.path) - 1) + [True]
    assert all(s.reason for s in p.path)
    for c in (p.chosen, p.runner_up):
        assert [k for k, _ in c.axes()] == AXES and all(v for _, v in c.axes())
    text = p.render()
    assert p.chosen.method["label"] in text and p.runner_up.method["label"] in text and "YES" in text


def test_first_match_wins_over_later_rules() -> None:
    # a tiny, latency-critical LLM on CPU: rule 3 (GGUF) comes before rule 5 (W8A8) in the guide
    p = make_plan(Inputs(target="cpu", latency_critical=True), ModelInfo("small-llm", CAUSAL_LM, 100_000_000))
    assert p.rule["id"] == "cpu-edge"
    # too big to be "tiny": the default
    p = make_plan(Inputs(target="cuda", latency_critical=True), ModelInfo("big-enc", ENCODER, 3_000_000_000))
    assert p.rule["id"] == "default" and "not tiny" in p.path[-2].reason


def test_hardware_support_follows_the_compute_capability() -> None:
    new = make_plan(Inputs(target="cuda:8.6", goal="serve"), LLM).chosen.support
    old = make_plan(Inputs(target="cuda:7.0", goal="serve"), LLM).chosen.support
    assert any("Marlin" in s.runtime for s in new) and not any("Marlin" in s.runtime for s in old)
    assert any("ExLlama" in s.runtime for s in old)
    unknown = make_plan(Inputs(target="cuda", goal="serve"), LLM).chosen.support
    assert any("compute capability >= 8.0" in s.note for s in unknown)


def test_calibration_cost_scales_with_the_model() -> None:
    small = make_plan(Inputs(target="cuda:8.0"), ModelInfo("s", CAUSAL_LM, 134_515_008)).chosen
    big = make_plan(Inputs(target="cuda:8.0"), ModelInfo("b", CAUSAL_LM, 10 * 134_515_008)).chosen
    assert small.cost_seconds == pytest.approx(rules()["cost"]["gptq"]["seconds"])
    assert big.cost_seconds == pytest.approx(10 * small.cost_seconds)
    assert make_plan(Inputs(target="cuda:8.0"), ModelInfo("?")).chosen.cost_seconds is None


def test_a_measured_slow_format_is_flagged(tmp_path, monkeypatch) -> None:
    """compare writes what it measured here; plan shows a format slower than fp32 as slower."""
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path))
    (tmp_path / "speed.json").write_text(json.dumps({"int8-weight": {"prefill_ratio_vs_fp32": 0.41, "runtime": "fake"}}))
    p = make_plan(Inputs(target="cpu"), SMALL_ENCODER)  # default rule: int8-weight
    assert p.chosen.support[0].speed == "slow" and "SLOWER than full precision" in p.chosen.support[0].note


@pytest.mark.parametrize(("text", "want"), [("cpu", Target("cpu")), ("cuda:8.0", Target("cuda", 8.0)),
                                            ("cuda:86", Target("cuda", 8.6)), ("CUDA:sm_90", Target("cuda", 9.0)),
                                            ("cuda", Target("cuda"))])
def test_targets(text, want) -> None:
    assert Target.parse(text) == want


@pytest.mark.parametrize("bad", ["tpu", "cpu:8", "cuda:x", "cuda:99.0"])
def test_bad_targets_are_clear_errors(bad) -> None:
    with pytest.raises(InputError, match="--target"):
        make_plan(Inputs(target=bad), LLM)


def test_model_info_from_headers(tiny_llama_dir, tiny_gguf) -> None:
    info = ModelInfo.of(str(tiny_llama_dir))
    assert info.kind == CAUSAL_LM and info.params and info.params > 1000
    g = ModelInfo.of(str(tiny_gguf))
    assert g.kind == CAUSAL_LM and g.params == 32 * 64 + 16 * 32
    with pytest.raises(InputError):
        ModelInfo.of(str(tiny_gguf.parent / "missing"))


def test_cli_plan_help_shows_the_rule_and_json(tmp_path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["plan", "--help"], terminal_width=200)
    assert res.exit_code == 0
    for r in rules()["rule"]:
        assert r["question"][:30] in " ".join(res.output.split())
    res = runner.invoke(app, ["plan", "--target", "cuda:8.0", "--goal", "serve", "--json", str(tmp_path / "p.json")])
    assert res.exit_code == 0, res.output
    d = json.loads((tmp_path / "p.json").read_text())
    assert d["rule"] == "gpu-4bit-serving" and d["chosen"]["family"] == "gptq" and set(d["chosen"]["axes"]) == set(AXES)
    res = runner.invoke(app, ["plan", "--goal", "fast"])
    assert res.exit_code == 2 and "--goal" in res.output


def test_plan_does_not_import_torch() -> None:
    code = ("import sys; from typer.testing import CliRunner; from lowbit.cli import app; "
            "r = CliRunner().invoke(app, ['plan', '--target', 'cpu']); assert r.exit_code == 0, r.output; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
