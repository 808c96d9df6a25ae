"""Rope scaling in GGUF, both ways: what lowbit writes for llama.cpp (keys, and the factor tensors no
parameter holds: Llama 3's ``rope_freqs``, Phi-3's long-rope ``rope_factors_long`` / ``_short``), and what
it reads back from a GGUF into the transformers config (loaders/gguf_rope.py), on tiny random models
whose q / k weights are scaled up so that the rope positions move the logits (by 0.05 to 1.9 here). Where
llama.cpp is installed (`make reference`), it runs each file to transformers' logits."""

from __future__ import annotations

import importlib.util
import math

import gguf
import numpy as np
import pytest
import torch
from tests.unit.test_gguf_archs import IDS, logits, tiny

from lowbit.errors import InputError
from lowbit.writers.gguf import export_gguf, header_bytes

_G = torch.Generator().manual_seed(0)
LONG, SHORT = (1 + torch.rand(32, generator=_G) * 3).tolist(), (1 + torch.rand(32, generator=_G) * 0.5).tolist()
LONGROPE = {"rope_type": "longrope", "long_factor": LONG, "short_factor": SHORT}
VARIANTS = {  # name -> (architecture, config overrides)
    "llama-llama3": ("llama", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                "high_freq_factor": 4.0, "original_max_position_embeddings": 256}}),
    "llama-linear": ("llama", {"rope_scaling": {"rope_type": "linear", "factor": 4.0}}),
    "qwen2-yarn": ("qwen2", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128}}),
    # long factors at 48 tokens (> 32; llama.cpp: its context > 32); short ones (<= 512 both)
    "phi3-longrope-long": ("phi3", {"max_position_embeddings": 512, "original_max_position_embeddings": 32,
                                    "rope_scaling": LONGROPE}),
    "phi3-longrope-short": ("phi3", {"max_position_embeddings": 2048, "original_max_position_embeddings": 512,
                                     "rope_scaling": LONGROPE}),
    # a full-attention layer after a sliding one (llama.cpp's own default is 5 sliding, 1 full)
    "gemma3-linear": ("gemma3", {"layer_types": ["sliding_attention", "full_attention"], "rope_parameters": {
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}}),
}


def tiny_rope(name: str, tokenizer, scaled: bool = True):
    """The tiny ``name`` model (or the same weights with the default rope), q / k weights x 6."""
    arch, over = VARIANTS[name]
    h = tiny(arch, tokenizer, **(over if scaled else {}))
    with torch.no_grad():
        for n, p in h.model.named_parameters():
            if p.ndim == 2 and any(k in n for k in ("q_proj", "k_proj", "qkv_proj")):
                p.mul_(6)
    return h


def _fields(path) -> dict:
    r = gguf.GGUFReader(str(path))
    out = {k: (bytes(f.parts[-1]).decode() if f.types[-1] == gguf.GGUFValueType.STRING else f.parts[-1][0].item())
           for k, f in r.fields.items() if ".rope." in k or "sliding_window_pattern" in k}
    out.update({t.name: np.asarray(t.data).reshape(-1) for t in r.tensors if t.name.startswith("rope_")})
    return out


def test_llama3_divisors_are_transformers_own_frequencies(bpe_llama, tmp_path) -> None:
    """llama.cpp divides each default rotary frequency by rope_freqs: the quotient is transformers' llama3 one."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    h = tiny_rope("llama-llama3", bpe_llama.tokenizer)
    export_gguf(h, tmp_path / "m.gguf", "F32")
    f = _fields(tmp_path / "m.gguf")
    default = 1.0 / (10000.0 ** (torch.arange(0, 64, 2, dtype=torch.float32) / 64))
    scaled = ROPE_INIT_FUNCTIONS["llama3"](h.model.config, None)[0]
    np.testing.assert_allclose(default.numpy() / f["rope_freqs.weight"], scaled.numpy(), rtol=1e-5)
    assert f["rope_freqs.weight"].max() == 8.0 and f["rope_freqs.weight"].min() == 1.0


def test_phi3_long_rope_factors_and_attention_factor(bpe_llama, tmp_path) -> None:
    h = tiny_rope("phi3-longrope-long", bpe_llama.tokenizer)
    export_gguf(h, tmp_path / "m.gguf", "Q8_0")
    f = _fields(tmp_path / "m.gguf")
    np.testing.assert_array_equal(f["rope_factors_long.weight"], np.float32(LONG))
    np.testing.assert_array_equal(f["rope_factors_short.weight"], np.float32(SHORT))
    assert f["phi3.rope.scaling.original_context_length"] == 32
    assert f["phi3.rope.scaling.attn_factor"] == pytest.approx(math.sqrt(1 + math.log(512 / 32) / math.log(32)))
    size = (tmp_path / "m.gguf").stat().st_size  # the factor tensors count among the bytes no type changes
    quantized = sum(t.n_bytes + (-t.n_bytes) % 32 for t in gguf.GGUFReader(str(tmp_path / "m.gguf")).tensors
                    if not t.name.startswith("rope_"))
    assert header_bytes(h, "Q8_0") + quantized == size


def test_linear_yarn_and_gemma3_layer_pattern_keys(bpe_llama, tmp_path) -> None:
    for name, want in (("llama-linear", {"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0}),
                       ("qwen2-yarn", {"qwen2.rope.scaling.type": "yarn", "qwen2.rope.scaling.factor": 4.0,
                                       "qwen2.rope.scaling.original_context_length": 128}),
                       ("gemma3-linear", {"gemma3.rope.scaling.type": "linear", "gemma3.rope.scaling.factor": 8.0,
                                          "gemma3.rope.freq_base_swa": 10000.0})):
        export_gguf(tiny_rope(name, bpe_llama.tokenizer), tmp_path / f"{name}.gguf", "F32")
        f = _fields(tmp_path / f"{name}.gguf")
        assert {k: f.get(k) for k in want} == want, name
    r = gguf.GGUFReader(str(tmp_path / "gemma3-linear.gguf")).fields["gemma3.attention.sliding_window_pattern"]
    assert [bool(r.parts[i][0]) for i in r.data] == [True, False]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_a_gguf_with_rope_scaling_loads_and_re_exports_with_it(bpe_llama, tmp_path, name: str, monkeypatch) -> None:
    """GGUF in: transformers' config gets the rope scaling back (whole and block by block: the same logits
    as the model written); GGUF out: the factor tensors and keys carried over."""
    from lowbit import api
    from lowbit.loaders import load_model
    from lowbit.loaders.lazy import open_lazy

    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))
    h = tiny_rope(name, bpe_llama.tokenizer)
    export_gguf(h, tmp_path / "src.gguf", "F32")
    want = logits(h.model)
    assert (want - logits(tiny_rope(name, bpe_llama.tokenizer, scaled=False).model)).abs().max() > 0.04
    assert torch.allclose(logits(load_model(str(tmp_path / "src.gguf")).model), want, atol=1e-5)
    lazy = open_lazy(str(tmp_path / "src.gguf"))
    lazy.materialize("")
    assert torch.allclose(logits(lazy.model), want, atol=1e-5)
    api.export_to(str(tmp_path / "src.gguf"), tmp_path / "q.gguf", "gguf", gguf=api.GGUFSettings("Q8_0"))
    src, out = _fields(tmp_path / "src.gguf"), _fields(tmp_path / "q.gguf")
    assert src.keys() == out.keys() and all(np.array_equal(src[k], out[k]) for k in src)


def test_rope_types_llama_cpp_does_not_run_are_refused(bpe_llama, tmp_path) -> None:
    h = tiny("llama", bpe_llama.tokenizer, rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    with pytest.raises(InputError, match="rope types default, linear, yarn, llama3; .* 'dynamic'"):
        export_gguf(h, tmp_path / "m.gguf", "F32")
    assert not (tmp_path / "m.gguf").exists()


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python not installed (make reference)")
@pytest.mark.parametrize("name", list(VARIANTS))
def test_llamacpp_runs_rope_scaling_like_transformers(bpe_llama, tmp_path, name: str) -> None:
    """llama.cpp on lowbit's F32 file: transformers' logits within float32 noise, while the same weights
    with the default rope are 20x that tolerance away or more."""
    from lowbit.metrics.llamacpp import load_llamacpp

    h = tiny_rope(name, bpe_llama.tokenizer)
    export_gguf(h, tmp_path / "m.gguf", "F32")
    want = logits(h.model)[0]
    got = load_llamacpp(tmp_path / "m.gguf", n_ctx=64).model(input_ids=IDS).logits[0]
    tol = 1e-3 * max(1.0, want.abs().max().item())
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    assert (got - want).abs().max().item() < tol
    assert (want - logits(tiny_rope(name, bpe_llama.tokenizer, scaled=False).model)[0]).abs().max().item() > 20 * tol


def test_a_gguf_source_without_factor_tensors_skips_gguf_py_s_reader(bpe_llama, tmp_path, monkeypatch) -> None:
    """Exporting from a GGUF looks for factor tensors to carry over. Its tensor table says whether there
    are any; gguf-py's reader (seconds on a real vocabulary: it made every smollm2 export 2-3 s slower)
    is opened only when there are."""
    from types import SimpleNamespace

    from lowbit.writers.gguf_extra import extras_of

    export_gguf(tiny("llama", bpe_llama.tokenizer), tmp_path / "plain.gguf", "F32")
    export_gguf(tiny_rope("llama-llama3", bpe_llama.tokenizer), tmp_path / "llama3.gguf", "F32")

    def refuse(*a, **k):
        raise AssertionError("gguf-py's reader opened")

    with monkeypatch.context() as m:
        m.setattr(gguf, "GGUFReader", refuse)
        assert extras_of(SimpleNamespace(gguf_source=tmp_path / "plain.gguf", model=None)) == {}
    got = extras_of(SimpleNamespace(gguf_source=tmp_path / "llama3.gguf", model=None))
    assert list(got) == ["rope_freqs.weight"] and got["rope_freqs.weight"].dtype == np.float32
