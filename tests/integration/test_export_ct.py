"""smollm2 -> compressed-tensors pack-quantized (int4 g64 asym) -> transformers: same logits, llm-compressor's size."""

from __future__ import annotations

import json

import pytest
import torch

from lowbit import api
from lowbit.modules.kernel_mode import kernel_mode
from lowbit.spec import QuantSpec
from lowbit.writers.compressed_tensors import export_compressed_tensors

pytest.importorskip("compressed_tensors")


@pytest.mark.filterwarnings("ignore:You passed `quantization_config`:UserWarning")
def test_smollm2_int4_g64_asym_round_trip(smollm2, tmp_path) -> None:
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    q, rep = api.quantize(smollm2, api.make_config("rtn", QuantSpec(4, False, 64)))
    assert len(rep.layers) == 210
    path = export_compressed_tensors(q, tmp_path / "ct")

    # size: llm-compressor's RTN W4A16 g64 export of smollm2 was 169 MB (feasibility-python.md §6). The tensors:
    # float32 embedding (tied head stored once) and norms, 4-bit codes, float32 scales and, asym only, 4-bit zero
    # points; plus the safetensors header.
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}  # noqa: SIM118 - safe_open is not iterable
        q_proj = {k.rsplit(".", 1)[1]: (f.get_tensor(k).dtype, tuple(f.get_tensor(k).shape))
                  for k in f.keys() if k.startswith("model.layers.0.self_attn.q_proj.")}  # noqa: SIM118
    assert q_proj == {"weight_packed": (torch.int32, (576, 72)), "weight_scale": (torch.float32, (576, 9)),
                      "weight_zero_point": (torch.int32, (72, 9)), "weight_shape": (torch.int64, (2,))}
    assert "lm_head.weight" not in shapes and len(shapes) == 61 + 1 + 4 * 210
    linear = 106_168_320  # weights in the 210 quantized Linear layers
    expected = 4 * (28_311_552 + 61 * 576) + linear // 2 + 4 * linear // 64 + linear // 64 // 2 + 210 * 16
    size = (path / "model.safetensors").stat().st_size
    with (path / "model.safetensors").open("rb") as fh:
        header = 8 + int.from_bytes(fh.read(8), "little")  # JSON, ~100 bytes a tensor
    assert size == header + expected and header < 120_000, (size, header, expected)
    assert 165e6 < size < 180e6, size  # 173.9 MB; llm-compressor's symmetric export lacks the 0.8 MB of zero points
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["quantization_config"]["ignore"] == ["lm_head"] and cfg["tie_word_embeddings"] is True

    # asymmetric: transformers 5.24 + compressed-tensors 0.20 load packed zero points only with dequantize=True
    m = AutoModelForCausalLM.from_pretrained(path, quantization_config=CompressedTensorsConfig(dequantize=True)).eval()
    ids = q.tokenizer("The capital of France is Paris, and the capital of Italy is", return_tensors="pt").input_ids
    with torch.inference_mode(), kernel_mode(q.model, "dequant"):
        ours, theirs = q.model(input_ids=ids).logits, m(input_ids=ids).logits
    assert torch.equal(ours, theirs), (ours - theirs).abs().max()
    assert m.lm_head.weight is m.model.embed_tokens.weight
    assert torch.equal(m.model.layers[29].mlp.down_proj.weight, q.model.model.layers[29].mlp.down_proj.dequantize())
