"""report/inspect.py: per-tensor types, shapes and bits per weight of GGUF / safetensors / checkpoints."""

from __future__ import annotations

import pytest
import torch

from lowbit.errors import InputError
from lowbit.report.inspect import inspect_path


def test_inspect_gguf(tiny_gguf) -> None:
    info = inspect_path(tiny_gguf)
    assert info.format == "gguf"
    rows = {t.name: t for t in info.tensors}
    up, norm = rows["blk.0.ffn_up.weight"], rows["blk.0.attn_norm.weight"]
    assert (up.dtype, up.shape, up.nbytes, up.bpw) == ("F32", (32, 64), 32 * 64 * 4, 32.0)
    assert (norm.dtype, norm.shape, norm.nbytes, norm.bpw) == ("F16", (16, 32), 16 * 32 * 2, 16.0)
    assert info.bpw == pytest.approx(8 * (8192 + 1024) / (2048 + 512))


def test_inspect_plain_safetensors(tmp_path) -> None:
    from safetensors.torch import save_file

    p = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(4, 8), "b": torch.zeros(8, dtype=torch.bfloat16), "c": torch.zeros(3, dtype=torch.uint8)},
              str(p))
    info = inspect_path(p)
    assert info.format == "safetensors"
    assert {t.name: t.bpw for t in info.tensors} == {"a": 32.0, "b": 16.0, "c": 8.0}


def test_inspect_errors(tmp_path, tiny_gguf) -> None:
    with pytest.raises(InputError, match="not found"):
        inspect_path(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no .safetensors"):
        inspect_path(tmp_path / "empty")
    txt = tmp_path / "a.txt"
    txt.write_text("hello")
    with pytest.raises(InputError, match="neither a GGUF"):
        inspect_path(txt)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 20)
    with pytest.raises(InputError, match=r"not a safetensors file \(header length 0 in a 20-byte file\)"):
        inspect_path(bad)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[:-64])
    with pytest.raises(InputError, match="truncated"):
        inspect_path(cut)
