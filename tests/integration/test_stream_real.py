"""The streaming path (one block in memory, read from the files) on the real models gives the results the
in-memory path gives: the same checkpoint tensors, PPL and KL, the same GGUF bytes."""

from __future__ import annotations

import pytest
import torch

from lowbit import api
from lowbit.loaders import load_model
from lowbit.pipeline.stream import quantize_stream

CALIB = api.CalibSettings("pydoc:calib", 8, 256)


def _same_checkpoint(a, b) -> None:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k].float(), sb[k].float()), k


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_smollm2_streams_to_the_in_memory_result(tmp_path, smollm2_eval, method):
    config = api.make_config(method)
    calib = CALIB if method == "gptq" else None
    quantize_stream("smollm2", config, tmp_path / "stream", calib=calib)
    quantized, _ = api.quantize(load_model("smollm2"), config, calib=calib)
    api.save(quantized, tmp_path / "memory")
    streamed, memory = load_model(str(tmp_path / "stream")), load_model(str(tmp_path / "memory"))
    _same_checkpoint(streamed, memory)
    a, b = smollm2_eval.run(streamed), smollm2_eval.run(memory)
    assert f"{a.ppl:.4g}" == f"{b.ppl:.4g}" and f"{a.kl_mean:.4g}" == f"{b.kl_mean:.4g}"


def test_minilm_gptq_streams_to_the_in_memory_result(tmp_path):
    config = api.make_config("gptq")
    quantize_stream("minilm", config, tmp_path / "stream", calib=CALIB)
    quantized, _ = api.quantize(load_model("minilm"), config, calib=CALIB)
    api.save(quantized, tmp_path / "memory")
    _same_checkpoint(load_model(str(tmp_path / "stream")), load_model(str(tmp_path / "memory")))


@pytest.mark.parametrize("model,options", [("smollm2", {"smooth": True, "alpha": 0.5}), ("minilm", {"act": "static"})])
def test_w8a8_streams_to_the_in_memory_result(tmp_path, model, options):
    """SmoothQuant's float statistics and folds, block by block: the same tensors (the alpha search is checked
    bit for bit on tiny models in tests/unit/test_stream.py)."""
    calib = api.CalibSettings("pydoc:calib", 2, 256)
    config = api.make_config("w8a8", **options)
    report = quantize_stream(model, config, tmp_path / "stream", calib=calib)
    quantized, mem_report = api.quantize(load_model(model), config, calib=calib)
    api.save(quantized, tmp_path / "memory")
    assert report.details == mem_report.details
    _same_checkpoint(load_model(str(tmp_path / "stream")), load_model(str(tmp_path / "memory")))


def test_smollm2_gguf_export_streams_to_the_same_bytes(tmp_path):
    from lowbit.writers.gguf import export_gguf

    api.export_to("smollm2", tmp_path / "stream.gguf", "gguf", gguf=api.GGUFSettings("Q4_K_M"))
    export_gguf(load_model("smollm2"), tmp_path / "memory.gguf", "Q4_K_M")
    assert (tmp_path / "stream.gguf").read_bytes() == (tmp_path / "memory.gguf").read_bytes()


def test_smollm2_eval_block_by_block_matches(tmp_path, smollm2_eval):
    """The reference evaluated from its GGUF block by block (as a 13B one would be) scores as in memory."""
    from lowbit.metrics.run import EvalSettings

    settings = EvalSettings(data="pydoc:eval", windows=2, seq_len=512, speed=False)
    whole, _ = api.evaluate_against("smollm2", settings)
    part, _ = api.evaluate_against("smollm2", settings, max_memory="1MiB")
    assert f"{whole.ppl:.4g}" == f"{part.ppl:.4g}"
