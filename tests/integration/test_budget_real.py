"""`lowbit export smollm2 --format gguf --budget ... --tensor-type-file TT` on the real model: the file
fits the budget, mixes types, and llama.cpp's own llama-quantize, given lowbit's F32 export, the
tensor-type file and the same importance matrix (or none), writes the very same file, byte for byte.
The llama-quantize part needs the binary (`make reference` builds it into .venv/bin)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import pytest
from typer.testing import CliRunner

from lowbit.cli import app
from lowbit.writers.gguf_mix import MIXES


def _llama_quantize() -> str | None:
    return shutil.which("llama-quantize", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))


def _file_type(path: Path) -> int:
    r = gguf.GGUFReader(str(path))
    f = r.fields["general.file_type"]
    return int(f.parts[f.data[0]][0])


@pytest.fixture(scope="module")
def f32(tmp_path_factory) -> Path | None:
    """lowbit's F32 export, the file llama-quantize starts from (only where llama-quantize is installed)."""
    if _llama_quantize() is None:
        return None
    path = tmp_path_factory.mktemp("f32") / "f32.gguf"
    r = CliRunner().invoke(app, ["export", "smollm2", "--format", "gguf", "--type", "F32", "--out", str(path)])
    assert r.exit_code == 0, r.output
    return path


@pytest.mark.parametrize("with_imatrix", [False, True])
def test_budget_file_and_llama_quantize_reproduces_it(f32, tmp_path, monkeypatch, with_imatrix: bool) -> None:
    if with_imatrix and f32 is None:  # the costly variant (every IQ type unlocked) runs where it can be compared
        pytest.skip("llama-quantize not installed (make reference): the imatrix variant is checked with it only")
    runner = CliRunner()
    args = ["--n-samples", "2", "--seq-len", "256"]
    im = []
    if with_imatrix:  # a relative path, as a user types it: llama-quantize records the string it is given
        monkeypatch.chdir(tmp_path)
        r = runner.invoke(app, ["imatrix", "smollm2", "--out", "im.gguf", "--n-samples", "2", "--seq-len", "256"])
        assert r.exit_code == 0, r.output
        im = ["--imatrix", "im.gguf"]
    out, tt = tmp_path / "budget.gguf", tmp_path / "tt.txt"
    r = runner.invoke(app, ["export", "smollm2", "--format", "gguf", "--budget", "4.8", "--out", str(out),
                            "--tensor-type-file", str(tt), *args, *im])
    assert r.exit_code == 0, r.output
    assert "predicted KL" in r.output and "bytes by type" in r.output
    reader = gguf.GGUFReader(str(out))
    weights = [t for t in reader.tensors]
    bpw = 8 * sum(int(t.n_bytes) for t in weights) / sum(int(t.n_elements) for t in weights)
    assert 4.6 < bpw <= 4.8
    types = {t.tensor_type.name for t in weights if len(t.shape) == 2}
    assert len(types) >= 3
    if with_imatrix:
        assert reader.fields["quantize.imatrix.file"].contents() == "im.gguf"
    binary = _llama_quantize()
    if binary is None or f32 is None:
        pytest.skip("llama-quantize not installed (make reference): the byte-identity half is not checked")
    ref = tmp_path / "llama-quantize.gguf"
    cmd = [binary, "--tensor-type-file", str(tt), *im, str(f32), str(ref), str(_file_type(out))]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, check=False)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert ref.read_bytes() == out.read_bytes(), f"{ref.stat().st_size} vs {out.stat().st_size} bytes"
    assert _file_type(out) in {v[1] for v in MIXES.values()}


def test_budget_below_the_smallest_file_is_one_line_exit_2(tmp_path) -> None:
    out = tmp_path / "x.gguf"
    r = CliRunner().invoke(app, ["export", "smollm2", "--format", "gguf", "--budget", "2", "--out", str(out)])
    assert r.exit_code == 2
    assert "below the smallest file" in r.output and "bpw" in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not out.exists()
    r = CliRunner().invoke(app, ["export", "smollm2", "--format", "gguf", "--budget", "20", "--out", str(out)])
    assert r.exit_code == 2 and "above the float16 file" in r.output


def test_quantize_budget_compressed_tensors_reloads_with_identical_logits(tmp_path) -> None:
    """smollm2 at 4.5 bits per weight, one grid per Linear: the compressed-tensors export (one config group
    per grid) reloads in transformers with lowbit's own logits, bit for bit."""
    import torch
    from transformers import AutoModelForCausalLM

    from lowbit.loaders import load_model
    from lowbit.modules.kernel_mode import kernel_mode

    runner = CliRunner()
    r = runner.invoke(app, ["quantize", "smollm2", "--budget", "4.5", "--out", str(tmp_path / "q"),
                            "--n-samples", "2", "--seq-len", "256"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["export", str(tmp_path / "q"), "--format", "compressed-tensors", "--out", str(tmp_path / "ct")])
    assert r.exit_code == 0, r.output
    q = load_model(str(tmp_path / "q"))
    grids = set(q.quant["budget"]["grids"].values())
    assert len(grids) >= 2 and q.quant["budget"]["bpw"] <= 4.5
    m = AutoModelForCausalLM.from_pretrained(tmp_path / "ct").eval()
    ids = q.tokenizer("The quick brown fox jumps over the lazy dog. " * 3, return_tensors="pt").input_ids
    with torch.no_grad(), kernel_mode(q.model, "dequant"):
        assert torch.equal(q.model(input_ids=ids).logits, m(input_ids=ids).logits)


@pytest.mark.parametrize("verb", ["export", "quantize"])
def test_an_encoder_budget_is_one_line_exit_2(tmp_path, verb: str) -> None:
    """minilm has no next-token predictions to take a KL of: --budget refuses it before any work."""
    out = tmp_path / ("m.gguf" if verb == "export" else "m")
    args = [verb, "minilm", "--budget", "5", "--out", str(out)] + (["--format", "gguf"] if verb == "export" else [])
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and "needs a causal language model" in r.output
    assert len(r.output.strip().splitlines()) == 1 and not out.exists()
