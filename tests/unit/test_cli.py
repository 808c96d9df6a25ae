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
