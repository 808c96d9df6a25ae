"""modules/swap.py: replacing a layer hands its memory-mapped weight back without changing any value."""

from __future__ import annotations

import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from lowbit import api
from lowbit.modules.swap import page_out, replace_module
from lowbit.spec import QuantSpec

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise / pagemap are Linux-only")


def _resident_kib(ptr: int) -> int:
    """Rss of the mapping holding ``ptr``, from /proc/self/smaps."""
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= ptr < hi
            elif inside and head == "Rss:":
                return int(line.split()[1])
    raise AssertionError("no mapping holds the pointer")


def _mapped(tmp_path, n: int = 1 << 20) -> torch.Tensor:
    path = tmp_path / "w.safetensors"
    save_file({"w": torch.arange(n, dtype=torch.float32)}, str(path))
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor("w")  # memory-mapped, read lazily


@linux
def test_page_out_drops_clean_file_pages_and_keeps_values(tmp_path) -> None:
    w = _mapped(tmp_path)
    assert float(w.sum()) == pytest.approx((w.numel() - 1) * w.numel() / 2)  # touch every page
    before = _resident_kib(w.data_ptr())
    assert before >= 4000
    assert page_out(w)
    assert _resident_kib(w.data_ptr()) < before / 4
    assert torch.equal(w, torch.arange(w.numel(), dtype=torch.float32))  # re-read from the file


@linux
def test_page_out_never_drops_written_pages(tmp_path) -> None:
    w = _mapped(tmp_path)
    w[: w.numel() // 2].mul_(-1)  # private copy-on-write pages: DONTNEED would lose them
    page_out(w)
    expect = torch.arange(w.numel(), dtype=torch.float32)
    expect[: w.numel() // 2].mul_(-1)
    assert torch.equal(w, expect)


def test_page_out_ignores_anonymous_memory() -> None:
    t = torch.randn(1 << 18)
    keep = t.clone()
    assert not page_out(t)
    assert torch.equal(t, keep)


def test_replace_module_installs_the_new_layer() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 2)))
    new = nn.Identity()
    replace_module(model, "1.0", new)
    assert model[1][0] is new


@linux
def test_inplace_quantize_of_a_mapped_model_keeps_the_reference_weights(tiny_llama, tmp_path) -> None:
    """The float weights that stay (the tied embedding here) are untouched after their neighbours are
    paged out, and the result matches quantizing an in-memory copy."""
    path = tmp_path / "m"
    tiny_llama.model.save_pretrained(path)
    tiny_llama.tokenizer.save_pretrained(path)
    mapped = api.load_model(str(path))
    emb = mapped.model.get_input_embeddings().weight.detach().clone()
    copy = api.load_model(str(path))
    copy.model.load_state_dict({k: v.clone() for k, v in copy.model.state_dict().items()})
    cfg = api.make_config("rtn", QuantSpec(4, True, 32))
    q1, _ = api.quantize(mapped, cfg, inplace=True)
    q2, _ = api.quantize(copy, cfg, inplace=True)
    assert torch.equal(q1.model.get_input_embeddings().weight, emb)
    ids = torch.tensor([[1, 5, 9, 3, 7]])
    with torch.no_grad():
        assert torch.equal(q1.model(ids).logits, q2.model(ids).logits)


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_replaced_float_layers_are_freed_while_calibrating(tiny_llama, text_file, method) -> None:
    """When the last block runs, nothing keeps block 0's replaced float Linear (and its weight) alive."""
    import gc
    import weakref

    model = tiny_llama.model
    ref = weakref.ref(model.get_submodule("model.layers.0.mlp.down_proj"))
    alive = []

    def check(*_):
        gc.collect()
        alive.append(ref() is not None)

    model.model.layers[-1].register_forward_pre_hook(check)
    api.quantize(tiny_llama, api.make_config(method, QuantSpec(4, True, 32)),
                 calib=api.CalibSettings(str(text_file), 2, 32), inplace=True)
    assert alive and not any(alive)
