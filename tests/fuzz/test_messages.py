"""One hostile input of each category, through the code the CLI runs (tests/fuzz/runner.py's
``exercise``), with the exact one-line error it must give."""

from __future__ import annotations

import pytest

from fuzz.cases import structured
from fuzz.runner import exercise
from lowbit.errors import InputError

CASES = {c.id: c for c in structured()}
MISSING = "{d} lacks {n} of the model's weights (e.g. {names}); the weights on disk do not match the model config"
NOT_GGUF = "{f} is not a valid GGUF file: "
EXPECTED = {
    # safetensors headers
    "llama_dir:st:header-length-9223372036854775808":
        "{st}: not a safetensors file (header length 9223372036854775808 in a {size}-byte file)",
    "llama_dir:st:header-length-0": "{st}: not a safetensors file (header length 0 in a {size}-byte file)",
    "llama_dir:st:header-not-json": "{st}: not a safetensors file (its header is not JSON)",
    "llama_dir:st:duplicate-key": "{st}: its header names 'model.embed_tokens.weight' twice",
    "llama_dir:st:dtype-unknown": "{st}: tensor 'model.layers.0.self_attn.q_proj.weight' has a malformed entry in the header",
    "llama_dir:st:shape-mismatch": "{st}: tensor 'model.layers.0.self_attn.q_proj.weight' has 16384 bytes for shape [3, 7] F32",
    "llama_dir:st:overlap": "{st}: tensors 'model.layers.0.input_layernorm.weight' and 'model.embed_tokens.weight' overlap "
                            "in the file (bytes 0..256)",
    "llama_dir:st:offsets-past-end": "{st}: tensor 'model.layers.0.self_attn.q_proj.weight' lies past the end of the file "
                                     "(bytes 0-1000000000000 of 322048); the file is truncated",
    "llama_dir:st:unlisted-tensor": "{st}: tensor 'model.layers.0.mlp.gate_proj.weight' starts at data byte 58880, "
                                    "expected 26112 (a gap)",
    # config fields
    "llama_dir:config:hidden_size=str": "{d}/config.json: hidden_size must be an integer from 1 to 1048576, got '64'",
    "llama_dir:config:hidden_size=float": "{d}/config.json: hidden_size must be an integer from 1 to 1048576, got 64.5",
    "llama_dir:config:hidden_size=null": "{d}/config.json: hidden_size must be an integer from 1 to 1048576, got None",
    "llama_dir:config:quantization_config=str": "{d}/config.json: quantization_config must be a JSON object, got str 'lowbit'",
    "llama_dir:config:quantization_config=list": "{d}/config.json: quantization_config must be a JSON object, got list [1]",
    "llama_dir:config:layers-1e6": "{d}/config.json: num_hidden_layers must be an integer from 1 to 4096, got 1000000",
    "llama_dir:config:layers-3": "{d}: config.json says num_hidden_layers = 3, but the weights hold 2 layer(s)",
    "llama_dir:config:hidden-32": "{d}: tensor model.embed_tokens.weight has shape [101, 64], the model config needs [101, 32]",
    # nothing missing
    "llama_dir:st:drop-down_proj": MISSING.format(d="{d}", n=1, names="model.layers.0.mlp.down_proj.weight"),
    "llama_dir:st:drop-embeddings": MISSING.format(d="{d}", n=2, names="model.embed_tokens.weight, lm_head.weight"),
    "llama_dir:st:rename-tensor": MISSING.format(d="{d}", n=1, names="model.layers.0.mlp.down_proj.weight"),
    "bert_dir:st:drop-embeddings": MISSING.format(d="{d}", n=1, names="embeddings.LayerNorm.bias"),
    "llama_gguf:gguf:drop-ffn_down": MISSING.format(d="{d}", n=1, names="model.layers.1.mlp.down_proj.weight"),
    "llama_gguf:gguf:rename-tensor": MISSING.format(d="{d}", n=1, names="model.layers.0.mlp.down_proj.weight"),
    # nothing poisoned
    "llama_dir:st:nan-weight": "{d}: tensor model.layers.0.mlp.down_proj.weight holds 1 NaN/inf value(s); pass "
                               "--allow-nonfinite to load it anyway",
    "llama_gguf:gguf:nan-weight": "{d}: tensor model.layers.0.self_attn.q_proj.weight holds 2 NaN/inf value(s); pass "
                                  "--allow-nonfinite to load it anyway",
    "llama_gguf:gguf:retype-f32-q4_0": "{d}: tensor model.layers.0.mlp.up_proj.weight holds 64 NaN/inf value(s); pass "
                                       "--allow-nonfinite to load it anyway",
    # GGUF metadata and tensor table
    "llama_gguf:gguf:utf8-key": NOT_GGUF + "a metadata key is not valid UTF-8 (at byte 89 of 325536)",
    "llama_gguf:gguf:utf8-value": NOT_GGUF + "value of general.name is not valid UTF-8 (at byte 106 of 325536)",
    "llama_gguf:gguf:utf8-tensor": NOT_GGUF + "a tensor name is not valid UTF-8 (at byte 2455 of 325536)",
    "llama_gguf:gguf:dup-key": NOT_GGUF + "metadata key general.name appears twice (at byte 2341 of 325600)",
    "llama_gguf:gguf:block_count-2^20": NOT_GGUF + "llama.block_count must be an integer from 1 to 4096, got 1048576 (type 4)",
    "llama_gguf:gguf:block_count-3": NOT_GGUF + "llama.block_count is 3, but the file holds 2 block(s) of tensors",
    "llama_gguf:gguf:rms_eps-str": NOT_GGUF + "llama.attention.layer_norm_rms_epsilon must be a number from 0 to 1, got "
                                              "'1e-6' (type 8)",
    "llama_gguf:gguf:tokens-empty": NOT_GGUF + "tokenizer.ggml.tokens must be a non-empty list of strings",
    "llama_gguf:gguf:bos-past-vocab": NOT_GGUF + "tokenizer.ggml.bos_token_id is 1000000, not a token id below the "
                                                 "vocabulary size 101",
    "llama_gguf:gguf:overlap": "{d} is corrupt: the data of tensors blk.0.attn_k.weight and token_embd.weight overlap",
    # lowbit checkpoint records
    "checkpoint:record:bits-2": "{d}: tensor model.layers.0.self_attn.q_proj.qweight has shape [2048], expected [1024] "
                                "(layer model.layers.0.self_attn.q_proj: {{'bits': 2, 'symmetric': True, 'group_size': 64, "
                                "'scale_dtype': 'float16'}}); the record does not match the stored tensors",
    "checkpoint:record:group-32": "{d}: tensor model.layers.0.self_attn.q_proj.scale has shape [64], expected [128] "
                                  "(layer model.layers.0.self_attn.q_proj: {{'bits': 4, 'symmetric': True, 'group_size': 32, "
                                  "'scale_dtype': 'float16'}}); the record does not match the stored tensors",
    # importance matrices
    "imatrix_gguf:nan": "{d}: importance values of blk.0.attn_k.weight hold 1 NaN/inf; pass --allow-nonfinite to use it anyway",
    "imatrix_gguf:negative": "{d}: importance values of blk.0.attn_k.weight hold 1 negative value(s); a mean of squares "
                             "cannot be negative",
    "imatrix_dat:inf": "{d}: importance values of blk.0.attn_k.weight hold 1 NaN/inf; pass --allow-nonfinite to use it anyway",
    "imatrix_dat:duplicate": "{d}: tensor blk.0.attn_k.weight appears twice",
    "imatrix_gguf:names-unknown": "the importance matrix names none of this model's tensors (it has xlk.0.attn_k.weight, "
                                  "xlk.0.attn_output.weight, xlk.0.attn_q.weight; the model blk.0.attn_k.weight, "
                                  "blk.0.attn_output.weight, blk.0.attn_q.weight): it was made for another model",
}


@pytest.mark.parametrize("case_id", sorted(EXPECTED))
def test_exact_error(case_id, seeds, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))
    path = CASES[case_id].build(seeds, tmp_path)
    st = path / "model.safetensors"
    with pytest.raises(InputError) as ei:
        exercise(path, seeds, tmp_path)
    want = EXPECTED[case_id].format(d=path, f=path, st=st, size=st.stat().st_size if st.exists() else 0)
    assert str(ei.value) == want


def test_allow_nonfinite_loads_what_it_names(seeds, tmp_path, monkeypatch) -> None:
    """--allow-nonfinite is the explicit way past the NaN check: the same directory then loads, NaN kept."""
    from lowbit.loaders import load_model

    path = CASES["llama_dir:st:nan-weight"].build(seeds, tmp_path)
    monkeypatch.setenv("LOWBIT_ALLOW_NONFINITE", "1")
    w = load_model(path).model.get_parameter("model.layers.0.mlp.down_proj.weight")
    assert int(w.isnan().sum()) == 1


def test_valid_seeds_still_load(seeds, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))
    for name, path in seeds.items():
        (tmp_path / name).mkdir()
        exercise(path, seeds, tmp_path / name)  # no error: every check passes on a valid input
