"""Bad input on the real CLI: one line, exit code 2, nothing left behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lowbit.loaders.builtin import builtin_path

LOWBIT = [sys.executable, "-m", "lowbit.cli"]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LOWBIT, *args], cwd=cwd, capture_output=True, text=True, timeout=600, check=False)


def _check(res: subprocess.CompletedProcess[str], cwd: Path, before: set[str], needle: str) -> None:
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert needle in lines[0].lower(), lines[0]
    assert {p.name for p in cwd.iterdir()} == before, "output left behind"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    gguf = builtin_path("smollm2").read_bytes()
    (tmp_path / "trunc.gguf").write_bytes(gguf[: 3_000_000])
    (tmp_path / "notes.txt").write_text("just some notes, not a model\n")
    (tmp_path / "empty.txt").write_text("")
    return tmp_path


@pytest.mark.parametrize(
    "args,needle",
    [
        (["quantize", "does/not/exist", "--out", "o"], "not found"),
        (["quantize", "trunc.gguf", "--out", "o"], "gguf"),
        (["quantize", "notes.txt", "--out", "o"], "not a model"),
        (["quantize", "smollm2", "--bits", "1", "--out", "o"], "bits"),
        (["quantize", "smollm2", "--group-size", "128", "--out", "o"], "does not divide"),
        (["eval", "smollm2", "--data", "empty.txt", "--json", "o.json"], "no text"),
    ],
)
def test_bad_input(workdir: Path, args: list[str], needle: str) -> None:
    before = {p.name for p in workdir.iterdir()}
    _check(run(*args, cwd=workdir), workdir, before, needle)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["quantize", "smollm2", "--method", "rtn", "--act-order", "--out", "o"], "method 'rtn' has no option --act-order"),
        (["quantize", "smollm2", "--method", "nf4", "--bits", "3", "--out", "o"], "method 'nf4' has no option --bits"),
        (["quantize", "smollm2", "--method", "hqq", "--out", "notes.txt"], "already exists"),
        (["export", "smollm2", "--format", "gguf", "--type", "Q7_X", "--out", "o.gguf"], "unknown gguf type"),
        (["imatrix", "smollm2", "--calib", "empty.txt", "--out", "o.gguf"], "no text"),
    ],
)
def test_bad_option_fails_before_loading(workdir: Path, args: list[str], needle: str) -> None:
    before = {p.name for p in workdir.iterdir()}
    _check(run(*args, cwd=workdir), workdir, before, needle)
