"""GGUF export beyond Llama: tiny random models of each architecture (widths multiples of 256, so the
k-quants apply without fallbacks) written by lowbit and read back, and run by llama.cpp where it is
installed (`make reference`): the same next-token logits as transformers."""

from __future__ import annotations

import copy
import importlib.util

import gguf
import pytest
import torch

from lowbit.loaders.handle import ModelHandle
from lowbit.writers.gguf import export_gguf, load_into

COMMON = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 2, "max_position_embeddings": 512, "rms_norm_eps": 1e-6}
ARCHS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {"tie_word_embeddings": True}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"tie_word_embeddings": False, "sliding_window": None}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"tie_word_embeddings": False}),  # q/k/v biases
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"tie_word_embeddings": True, "head_dim": 64}),  # q/k norms
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {"tie_word_embeddings": False, "pad_token_id": 0}),  # fused qkv
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"head_dim": 64, "query_pre_attn_scalar": 64, "sliding_window": 16,
                                                     "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0}),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", {"head_dim": 64, "query_pre_attn_scalar": 64,
                                                         "sliding_window": 16}),
}
IDS = torch.tensor([[(7 * i + 3) % 60 + 4 for i in range(48)]])


def tiny(arch: str, tokenizer, **overrides) -> ModelHandle:
    """A random ``arch`` model: every parameter drawn (biases and norm weights too, so that a tensor
    written in the wrong place or layout shows); ``overrides`` go to its config."""
    import transformers

    conf, cls, extra = ARCHS[arch]
    if arch == "phi3":  # llama.cpp marks these Phi-3 tokens by name when it loads a "phi3" model: they must exist
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.add_special_tokens({"additional_special_tokens": ["<s>", "</s>", "<|endoftext|>"]})
    config = getattr(transformers, conf)(**{**COMMON, **extra, **overrides}, vocab_size=len(tokenizer))
    torch.manual_seed(1)
    model = getattr(transformers, cls)(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05 if p.ndim > 1 else 0.2)
    return ModelHandle(model=model, tokenizer=tokenizer, kind="causal-lm", name=f"tiny-{arch}")


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits.float()


@pytest.mark.parametrize("arch", list(ARCHS))
def test_f32_export_reads_back_exactly(bpe_llama, tmp_path, arch: str) -> None:
    """Every tensor named by gguf-py's map and laid out as llama.cpp's converter does: read back (layout
    undone), the model gives the same logits; the metadata sits under the architecture's own keys."""
    h = tiny(arch, bpe_llama.tokenizer)
    path = tmp_path / "m.gguf"
    export_gguf(h, path, "F32")
    r = gguf.GGUFReader(str(path))
    name = bytes(r.fields["general.architecture"].parts[-1]).decode()
    assert name == {"mistral": "llama", "gemma3": "gemma3"}.get(arch, arch)
    assert int(r.fields[f"{name}.block_count"].parts[-1][0]) == 2
    assert torch.equal(logits(load_into(path, h).model), logits(h.model))


@pytest.mark.parametrize("arch", ["qwen3", "gemma3"])
def test_quantized_export_of_other_architectures(bpe_llama, tmp_path, arch: str) -> None:
    h = tiny(arch, bpe_llama.tokenizer)
    summary = export_gguf(h, tmp_path / "m.gguf", "Q4_K_M")
    assert not summary["fallbacks"] and "Q4_K" in summary["types"].values()
    err = (logits(load_into(tmp_path / "m.gguf", h).model) - logits(h.model)).abs().max().item()
    assert 0 < err < 1.0


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python not installed (make reference)")
@pytest.mark.parametrize("arch", list(ARCHS))
def test_llamacpp_runs_each_architecture_like_transformers(bpe_llama, tmp_path, arch: str) -> None:
    """llama.cpp on lowbit's F32 file: the next token transformers predicts at every position, logits
    within float32 noise."""
    from lowbit.metrics.llamacpp import load_llamacpp

    h = tiny(arch, bpe_llama.tokenizer)
    path = tmp_path / "m.gguf"
    export_gguf(h, path, "F32")
    want = logits(h.model)[0]
    got = load_llamacpp(path, n_ctx=64).model(input_ids=IDS).logits[0]
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    assert (got - want).abs().max().item() < 1e-3 * max(1.0, want.abs().max().item()), arch


def test_fused_qkv_counts_as_attn_v_in_the_mixes() -> None:
    """llama.cpp's rules treat phi3's attn_qkv as attn_v (its own counter, use_more_bits): on 2 layers
    Q4_K_M gives Q4_K then Q6_K, as llama_model_quantize did on the tiny phi3 (bench/gguf_archs.py)."""
    from lowbit.writers.gguf_mix import MixPlanner

    plan = MixPlanner("Q4_K_M", n_layer=2, n_head=4, n_head_kv=2, tied_embeddings=False)
    assert [plan.type_for(f"blk.{i}.attn_qkv.weight", (512, 256)) for i in range(2)] == ["Q4_K", "Q6_K"]


def test_bert_encoder_exports_without_its_pooler(tmp_path) -> None:
    """A tiny random BERT (minilm's WordPiece vocabulary): llama.cpp's bert keys and phantom-space
    vocabulary, the pooler left out as llama.cpp's converter does, position and token-type embeddings
    never quantized, and the encoder read back exactly."""
    import transformers

    from lowbit.loaders import load_model

    tok = load_model("minilm").tokenizer
    config = transformers.BertConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                     num_attention_heads=4, max_position_embeddings=128)
    torch.manual_seed(0)
    h = ModelHandle(model=transformers.BertModel(config).eval(), tokenizer=tok, kind="encoder", name="tiny-bert")
    summary = export_gguf(h, tmp_path / "b.gguf", "Q8_0")
    assert summary["types"]["position_embd.weight"] == "F32" and summary["types"]["token_types.weight"] == "F32"
    assert summary["types"]["blk.0.attn_q.weight"] == "Q8_0" and not any("pooler" in n for n in summary["types"])
    r = gguf.GGUFReader(str(tmp_path / "b.gguf"))
    field = lambda k: r.fields[k].parts[-1]
    assert bytes(field("tokenizer.ggml.model")).decode() == "bert" and not bool(field("bert.attention.causal")[0])
    tokens = r.fields["tokenizer.ggml.tokens"]
    vocab = [bytes(tokens.parts[i]).decode() for i in tokens.data]
    assert vocab[tok.cls_token_id] == "[CLS]" and vocab[tok.convert_tokens_to_ids("the")] == "\u2581the"
    assert vocab[tok.convert_tokens_to_ids("##s")] == "s"
    export_gguf(h, tmp_path / "f32.gguf", "F32")
    ids = tok(["the quick brown fox", "jumps over"], padding=True, return_tensors="pt")
    with torch.no_grad():
        want = h.model(**ids).last_hidden_state
        got = load_into(tmp_path / "f32.gguf", h).model(**ids).last_hidden_state
    assert torch.equal(got, want)


@pytest.mark.parametrize("arch", ["qwen3", "phi3", "gemma2", "gemma3"])
def test_gguf_sources_of_other_architectures_load(bpe_llama, tmp_path, arch: str, monkeypatch) -> None:
    """A GGUF of each architecture opens as the model it was written from, whole (through transformers,
    with the head size and Gemma's attention scale it leaves at defaults) and block by block."""
    from lowbit.loaders import load_model
    from lowbit.loaders.lazy import open_lazy

    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))
    h = tiny(arch, bpe_llama.tokenizer)
    export_gguf(h, tmp_path / "m.gguf", "F32")
    want = logits(h.model)
    assert torch.allclose(logits(load_model(str(tmp_path / "m.gguf")).model), want, atol=1e-5)
    lazy = open_lazy(str(tmp_path / "m.gguf"))
    lazy.materialize("")
    assert torch.allclose(logits(lazy.model), want, atol=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python not installed (make reference)")
@pytest.mark.parametrize("arch", ["qwen3", "gemma3"])
def test_gguf_in_quantize_gguf_out_runs_in_llamacpp(bpe_llama, tmp_path, arch: str, monkeypatch) -> None:
    """GGUF in, Q4_K_M out (read tensor by tensor, the source's metadata copied), llama.cpp runs it to the
    logits torch computes from the very same file."""
    from lowbit import api
    from lowbit.metrics.llamacpp import load_llamacpp

    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))
    h = tiny(arch, bpe_llama.tokenizer)
    export_gguf(h, tmp_path / "src.gguf", "F32")
    api.export_to(str(tmp_path / "src.gguf"), tmp_path / "q.gguf", "gguf", gguf=api.GGUFSettings("Q4_K_M"))
    types = {t.tensor_type.name for t in gguf.GGUFReader(str(tmp_path / "q.gguf")).tensors}
    assert "Q4_K" in types
    want = logits(load_into(tmp_path / "q.gguf", h).model)[0]
    got = load_llamacpp(tmp_path / "q.gguf", n_ctx=64).model(input_ids=IDS).logits[0]
    # llama.cpp multiplies k-quant weights by activations rounded to 8 bits (Q8_K), torch by float ones:
    # close, not equal, and a random model's near-ties may flip
    assert (got.argmax(-1) == want.argmax(-1)).float().mean().item() >= 0.9
    assert (got - want).abs().max().item() < 0.05 * max(1.0, want.abs().max().item())
