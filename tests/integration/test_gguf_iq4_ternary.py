"""IQ4_NL, IQ4_XS, TQ1_0, TQ2_0, IQ2_XXS and IQ2_XS files of smollm2: lowbit's export against llama.cpp's own
llama_model_quantize on lowbit's F32 export, tensor for tensor (types and bytes), with and without an
importance matrix. Needs llama-cpp-python (`make reference`); the golden fixtures cover the types
without it (tests/unit/test_ggml_types.py)."""

from __future__ import annotations

import importlib.util

import gguf
import numpy as np
import pytest

from lowbit.calib import load_corpus, token_windows
from lowbit.calib.imatrix import compute_imatrix
from lowbit.loaders import load_model
from lowbit.writers.gguf import export_gguf

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                reason="llama-cpp-python not installed (make reference)")


@pytest.fixture(scope="module")
def smollm2_f32(tmp_path_factory):
    ref = load_model("smollm2")
    path = tmp_path_factory.mktemp("f32") / "f32.gguf"
    export_gguf(ref, path, "F32")
    ids = token_windows(load_corpus("pydoc:calib"), ref.tokenizer, 2, 256, 0)
    return ref, path, compute_imatrix(ref.model, ids, dataset="pydoc:calib").weights()


def _tensors(path):
    return {t.name: (t.tensor_type, np.asarray(t.data).tobytes()) for t in gguf.GGUFReader(str(path)).tensors}


@pytest.mark.parametrize(("mix", "with_imatrix"), [(m, i) for m in ("IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0") for i in (False, True)]
                         + [("IQ2_XXS", True), ("IQ2_XS", True), ("IQ1_S", True), ("IQ1_M", True)])  # llama.cpp refuses these without an imatrix
def test_same_tensors_as_llama_quantize(smollm2_f32, tmp_path, mix: str, with_imatrix: bool) -> None:
    from lowbit.metrics.llamacpp import quantize_with_llamacpp

    ref, f32, im = smollm2_f32
    im = im if with_imatrix else None
    export_gguf(ref, tmp_path / "lowbit.gguf", mix, imatrix=im)
    quantize_with_llamacpp(f32, tmp_path / "llamacpp.gguf", mix, imatrix=im)
    mine, theirs = _tensors(tmp_path / "lowbit.gguf"), _tensors(tmp_path / "llamacpp.gguf")
    assert mine.keys() == theirs.keys()
    bad = [n for n in mine if mine[n] != theirs[n]]
    assert not bad, f"{len(bad)} of {len(mine)} tensors differ, e.g. {bad[:3]}"
    assert any(t == gguf.GGMLQuantizationType[mix] for t, _ in mine.values())


@pytest.mark.parametrize("mix", ["IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "IQ3_S", "IQ3_M",
                                 "IQ4_XS", "IQ4_NL", "TQ1_0"])
def test_i_quant_file_types_on_a_256_wide_model(bpe_llama, tmp_path, mix: str) -> None:
    """Every tensor of a tiny 256-wide Llama takes its i-quant without fallback, so each per-tensor rule
    of the file type shows: lowbit's file against llama_model_quantize's of lowbit's F32 export."""
    from lowbit.metrics.llamacpp import quantize_with_llamacpp

    from lowbit.writers.gguf import tensor_names

    rng = np.random.default_rng(0)
    shapes = {g: bpe_llama.model.get_parameter(hf).shape for hf, g in tensor_names(bpe_llama.model)}
    im = {g: (rng.random(sh[-1]) + 0.1).astype(np.float32) for g, sh in shapes.items() if g.startswith("blk.") and len(sh) == 2}
    export_gguf(bpe_llama, tmp_path / "f32.gguf", "F32")
    export_gguf(bpe_llama, tmp_path / "lowbit.gguf", mix, imatrix=im)
    quantize_with_llamacpp(tmp_path / "f32.gguf", tmp_path / "llamacpp.gguf", mix, imatrix=im)
    mine, theirs = _tensors(tmp_path / "lowbit.gguf"), _tensors(tmp_path / "llamacpp.gguf")
    bad = [n for n in mine if mine[n] != theirs.get(n)]
    assert not bad, f"{len(bad)} of {len(mine)} tensors differ, e.g. {bad[:3]}: " + ", ".join(
        f"{n} {mine[n][0].name} vs {theirs[n][0].name}" for n in bad[:3])
