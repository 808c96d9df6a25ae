"""cli.py through typer's CliRunner: exit codes, one-line errors, nothing left behind, real output."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from lowbit.cli import app

COMMANDS = ["quantize", "eval", "inspect", "demo", "plan", "compare", "hardware", "export", "imatrix"]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner(env={"LOWBIT_PROGRESS": "0", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                          "COLUMNS": "200"})


def assert_user_error(res, needle: str) -> None:
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert needle in lines[0], lines[0]
    assert "Traceback" not in res.output


# --- help ------------------------------------------------------------------------------------------
def test_root_help(runner) -> None:
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for cmd in COMMANDS:
        assert cmd in res.output


@pytest.mark.parametrize("cmd", COMMANDS)
def test_command_help(runner, cmd: str) -> None:
    res = runner.invoke(app, [cmd, "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage" in res.output and cmd in res.output


def test_no_arguments_prints_help(runner) -> None:
    res = runner.invoke(app, [])
    assert "Usage" in res.output and res.exit_code in (0, 2)


# --- user errors: exit 2, one line, nothing written -------------------------------------------------
def test_quantize_bits_1(runner, tmp_path, tiny_llama_dir) -> None:
    out = tmp_path / "out"
    res = runner.invoke(app, ["quantize", str(tiny_llama_dir), "--out", str(out), "--bits", "1"])
    assert_user_error(res, "bits=1")
    assert not out.exists()


def test_quantize_missing_model(runner, tmp_path) -> None:
    out = tmp_path / "out"
    res = runner.invoke(app, ["quantize", str(tmp_path / "missing-model"), "--out", str(out)])
    assert_user_error(res, "not found")
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_quantize_bad_group_size_leaves_nothing(runner, tmp_path, tiny_llama_dir) -> None:
    out = tmp_path / "out"
    res = runner.invoke(app, ["quantize", str(tiny_llama_dir), "--out", str(out), "--group-size", "48"])
    assert_user_error(res, "does not divide the input width 64")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [tiny_llama_dir.name]


def test_quantize_unknown_method(runner, tmp_path, tiny_llama_dir) -> None:
    res = runner.invoke(app, ["quantize", str(tiny_llama_dir), "--out", str(tmp_path / "o"), "--method", "rnt"])
    assert_user_error(res, "did you mean 'rtn'")


def test_quantize_existing_out_without_overwrite(runner, tmp_path, tiny_llama_dir) -> None:
    out = tmp_path / "out"
    out.mkdir()
    res = runner.invoke(app, ["quantize", str(tiny_llama_dir), "--out", str(out)])
    assert_user_error(res, "already exists")
    assert list(out.iterdir()) == []


def test_eval_empty_data_file(runner, tmp_path, tiny_llama_dir) -> None:
    data = tmp_path / "empty.txt"
    data.write_text("")
    res = runner.invoke(app, ["eval", str(tiny_llama_dir), "--data", str(data), "--no-speed"])
    assert_user_error(res, "holds no text")


def test_eval_missing_model(runner, tmp_path, text_file) -> None:
    res = runner.invoke(app, ["eval", str(tmp_path / "nope"), "--data", str(text_file)])
    assert_user_error(res, "not found")


def test_inspect_missing_and_not_a_model(runner, tmp_path) -> None:
    assert_user_error(runner.invoke(app, ["inspect", str(tmp_path / "nope.gguf")]), "not found")
    txt = tmp_path / "a.txt"
    txt.write_text("hi")
    assert_user_error(runner.invoke(app, ["inspect", str(txt)]), "neither a GGUF")


def test_inspect_truncated_gguf(runner, tmp_path, tiny_gguf) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[:-64])
    assert_user_error(runner.invoke(app, ["inspect", str(cut)]), "truncated")


# --- working commands --------------------------------------------------------------------------------
def test_inspect_gguf(runner, tiny_gguf) -> None:
    res = runner.invoke(app, ["inspect", str(tiny_gguf)])
    assert res.exit_code == 0, res.output
    assert "2 tensors, 2,560 weights, 9,216 bytes, 28.800 bits per weight overall" in res.output
    res = runner.invoke(app, ["inspect", str(tiny_gguf), "--all"])
    assert res.exit_code == 0 and "blk.0.ffn_up.weight" in res.output and "28.800 bits per weight" in res.output


def test_quantize_inspect_eval_end_to_end(runner, tmp_path, tiny_llama_dir, text_file) -> None:
    out = tmp_path / "q4"
    res = runner.invoke(app, ["quantize", str(tiny_llama_dir), "--out", str(out), "--bits", "4", "--group-size", "32"])
    assert res.exit_code == 0, res.output
    assert re.search(r"int4-sym-group32: 14 layers quantized \(\d+ kept: [^)]*\blm_head\b[^)]*\), 4\.500 bits/weight",
                     res.output), res.output
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([tiny_llama_dir.name, "q4", text_file.name])

    res = runner.invoke(app, ["inspect", str(out)])
    assert res.exit_code == 0, res.output
    assert "bits per weight overall" in res.output and "int4-sym-group32" in res.output
    # 14 quantized layers (4.5 bpw) + float32 embeddings and norms
    n_q, n_emb, n_norm = 73728, 128 * 64, 64 * 5
    bpw = (4.5 * n_q + 32 * (n_emb + n_norm)) / (n_q + n_emb + n_norm)
    assert f"{bpw:.3f} bits per weight overall" in res.output

    js = tmp_path / "r.json"
    res = runner.invoke(app, ["eval", str(out), "--data", str(text_file), "--windows", "2", "--seq-len", "16",
                              "--no-speed", "--json", str(js)])
    assert res.exit_code == 0, res.output
    d = json.loads(js.read_text())
    assert d["n_tokens"] == 2 * 15 and d["kl_mean"] > 0 and d["bits_per_weight"] == pytest.approx(4.5)
    assert d["reference"] == str(tiny_llama_dir)
    assert d["reference_result"]["kl_mean"] == 0.0 and d["reference_result"]["top1_agreement"] == 1.0
    assert d["ref_ppl"] == pytest.approx(d["reference_result"]["ppl"])


def test_quantize_overwrite(runner, tmp_path, tiny_llama_dir) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("x")
    res = runner.invoke(app, ["quantize", str(tiny_llama_dir), "--out", str(out), "--overwrite", "--bits", "8",
                              "--group-size", "-1", "--asym"])
    assert res.exit_code == 0, res.output
    assert "int8-asym-channel" in res.output
    assert not (out / "old.txt").exists() and (out / "model.safetensors").is_file()


def test_eval_default_reference_survives_a_change_of_directory(runner, tmp_path, tiny_llama_dir, text_file,
                                                               monkeypatch) -> None:
    monkeypatch.chdir(tiny_llama_dir.parent)
    res = runner.invoke(app, ["quantize", tiny_llama_dir.name, "--out", "q4", "--group-size", "32"])
    assert res.exit_code == 0, res.output
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    res = runner.invoke(app, ["eval", str(tmp_path / "q4"), "--data", str(text_file), "--windows", "1",
                              "--seq-len", "16", "--no-speed"])
    assert res.exit_code == 0, res.output


# --- one quantize path for every method ---------------------------------------------------------------
def test_cli_import_loads_no_torch_or_numpy() -> None:
    """main() sets OPENBLAS_THREAD_TIMEOUT before numpy loads: importing the CLI must not load it."""
    import subprocess
    import sys

    code = "import sys, lowbit.cli; print('torch' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.fixture
def captured(monkeypatch):
    """api.quantize_to replaced by a recorder: what the CLI parsed, without loading a model."""
    from types import SimpleNamespace

    from lowbit import api

    calls: list[dict] = []

    def fake(model, config, out, **kw):
        calls.append({"model": model, "config": config, "out": out, **kw})
        return SimpleNamespace(method=config.method, config=config, layers=["a"], skipped=[], bits_per_weight=4.0,
                               seconds=0.0, calibration=None, details={"alpha": 0.5})

    monkeypatch.setattr(api, "quantize_to", fake)
    return calls


def test_every_config_field_is_an_option(runner) -> None:
    import dataclasses

    from lowbit.methods import METHODS, get_method
    from lowbit.spec import QuantSpec

    res = runner.invoke(app, ["quantize", "--help"])
    assert res.exit_code == 0, res.output
    for name in METHODS:
        for f in dataclasses.fields(get_method(name).config):
            if not (f.name == "spec" and get_method(name).takes_spec):
                assert "--" + f.name.replace("_", "-") in res.output, (name, f.name)
    assert QuantSpec().bits == 4  # the defaults the grid flags fall back to


def test_act_order_help_says_what_the_default_does() -> None:
    from lowbit.cli.options import method_options

    text = method_options()["act_order"].help_text()
    assert "(gptq: default on)" in text and "first reaches" in text and "--static-groups" in text
    assert "(gptq: default off)" in method_options()["static_groups"].help_text()


@pytest.mark.parametrize("args,method,expected", [
    (["--method", "gptq", "--static-groups", "--no-act-order", "--damp", "0.05"], "gptq",
     {"static_groups": True, "act_order": False, "damp": 0.05}),
    (["--method", "awq", "--no-clip-search", "--n-grid", "5"], "awq", {"clip_search": False, "n_grid": 5}),
    (["--method", "hqq", "--lp-norm", "0.5", "--iters", "3"], "hqq", {"lp_norm": 0.5, "iters": 3}),
    (["--method", "nf4", "--double-quant", "--blocksize", "32"], "nf4", {"double_quant": True, "blocksize": 32}),
    (["--method", "int8", "--threshold", "0"], "int8", {"threshold": 0.0}),
    (["--method", "w8a8", "--smooth", "--alpha", "0.6", "--act", "static"], "w8a8",
     {"smooth": True, "alpha": 0.6, "act": "static"}),
    (["--method", "gguf", "--type", "Q8_0"], "gguf", {"type": "Q8_0"}),
])
def test_method_options_reach_the_config(runner, tmp_path, captured, args, method, expected) -> None:
    res = runner.invoke(app, ["quantize", "m", "--out", str(tmp_path / "o"), *args])
    assert res.exit_code == 0, res.output
    (call,) = captured
    assert call["config"].method == method
    for k, v in expected.items():
        assert getattr(call["config"], k) == v, k


def test_grid_flags_fill_quantspec_defaults(runner, tmp_path, captured) -> None:
    from lowbit.spec import QuantSpec

    assert runner.invoke(app, ["quantize", "m", "--out", str(tmp_path / "o"), "--method", "hqq"]).exit_code == 0
    assert runner.invoke(app, ["quantize", "m", "--out", str(tmp_path / "o"), "--bits", "3", "--asym",
                               "--scale-dtype", "float32"]).exit_code == 0
    assert captured[0]["config"].spec == QuantSpec()
    assert captured[1]["config"].spec == QuantSpec(bits=3, symmetric=False, group_size=64, scale_dtype="float32")


def test_calibrated_method_without_calib_uses_the_builtin_data(runner, tmp_path, captured) -> None:
    res = runner.invoke(app, ["quantize", "m", "--out", str(tmp_path / "o"), "--method", "w8a8", "--n-samples", "2"])
    assert res.exit_code == 0, res.output
    assert "w8a8 needs calibration data; using the built-in pydoc:calib (2 x 512 tokens)" in res.stderr
    assert captured[0]["calib"].data == "pydoc:calib" and captured[0]["calib"].n_samples == 2
    assert "w8a8: 1 layers quantized" in res.stdout and "(alpha 0.5)" in res.stdout
    res = runner.invoke(app, ["quantize", "m", "--out", str(tmp_path / "o"), "--ignore", "none"])
    assert captured[1]["calib"] is None and captured[1]["ignore"] == []


@pytest.mark.parametrize("args,needles", [
    (["--method", "rtn", "--act-order"], ["method 'rtn' has no option --act-order", "--clip-search", "--bits"]),
    (["--method", "gptq", "--type", "Q4_K"], ["method 'gptq' has no option --type", "--static-groups"]),
    (["--method", "nf4", "--bits", "3"], ["method 'nf4' has no option --bits", "own storage format",
                                          "--double-quant, --blocksize"]),
    (["--method", "int8", "--sym"], ["method 'int8' has no option --asym", "--threshold"]),
    (["--method", "w8a8", "--act", "sometimes"], ["act"]),
    (["--method", "gptq", "--damp", "-1"], ["damp=-1"]),
])
def test_option_for_another_method_is_one_line(runner, tmp_path, args, needles) -> None:
    out = tmp_path / "o"
    res = runner.invoke(app, ["quantize", str(tmp_path / "no-such-model"), "--out", str(out), *args])
    for needle in needles:
        assert_user_error(res, needle)
    assert not out.exists()


@pytest.mark.parametrize("method,extra,label", [
    ("nf4", ["--double-quant"], "nf4:"),
    ("int8", [], "int8:"),
    ("w8a8", ["--n-samples", "2", "--seq-len", "16"], "w8a8:"),
    ("gguf", ["--type", "Q8_0"], "gguf:"),
])
def test_layer_methods_share_the_one_path(runner, tmp_path, tiny_llama_dir, text_file, method, extra, label) -> None:
    out = tmp_path / method
    args = ["quantize", str(tiny_llama_dir), "--method", method, "--out", str(out), *extra]
    if method == "w8a8":
        args += ["--calib", str(text_file)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert re.search(label + r" 14 layers quantized \(\d+ kept: [^)]*\), \d+\.\d{3} bits/weight", res.stdout), res.stdout
    assert (out / "model.safetensors").is_file()


# --- the output guard runs before any model loads --------------------------------------------------------
@pytest.mark.parametrize("cmd", [
    ["quantize"], ["quantize", "--method", "nf4"], ["export"], ["export", "--format", "gguf"], ["imatrix"], ["qat"],
])
def test_existing_out_fails_before_loading(runner, tmp_path, cmd) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    res = runner.invoke(app, [cmd[0], str(tmp_path / "no-such-model"), "--out", str(out), *cmd[1:]])
    assert_user_error(res, "already exists; choose another --out or pass --overwrite")
    assert list(out.iterdir()) == []


def test_check_output(tmp_path) -> None:
    from lowbit.errors import ExportError
    from lowbit.writers.guard import check_output

    assert check_output(str(tmp_path / "new"), overwrite=False) == tmp_path / "new"
    assert check_output(tmp_path, overwrite=True) == tmp_path
    with pytest.raises(ExportError, match="already exists; choose another --out or pass --overwrite"):
        check_output(tmp_path, overwrite=False)
