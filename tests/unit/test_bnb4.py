"""NF4 / FP4 with and without double quantization against bitsandbytes' own bytes (golden fixtures made by
tests/fixtures/bnb/make_fixtures.py), and live when bitsandbytes is installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from lowbit.errors import InputError
from lowbit.formats.bnb4 import code4, dynamic_map, quantize_4bit, quantize_blockwise8

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bnb" / "bnb4.npz"
CASES = ["normal", "outlier", "zeros", "ragged", "tiny"]


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(FIXTURES) as f:
        return dict(f)


def _same(got: torch.Tensor, want: np.ndarray, what: str) -> None:
    got = got.reshape(-1).numpy()
    want = want.reshape(-1)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    bad = np.flatnonzero(got.view(np.uint8) != want.view(np.uint8)) if got.dtype == np.uint8 else \
        np.flatnonzero(got.view(np.uint32) != want.view(np.uint32))
    assert bad.size == 0, f"{what}: {bad.size} of {want.size} values differ from bitsandbytes (first at {bad[0]})"


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("qt", ["nf4", "fp4"])
@pytest.mark.parametrize("dq", [False, True])
def test_bit_exact_with_bitsandbytes(golden, case, qt, dq) -> None:
    w = torch.from_numpy(golden[f"{case}/w"])
    key = f"{case}/{qt}/{int(dq)}"
    q = quantize_4bit(w, qt, 64, dq)
    _same(q.packed, golden[f"{key}/packed"], f"{key} codes")
    _same(q.absmax, golden[f"{key}/absmax"], f"{key} absmax")
    if dq:
        _same(q.offset.reshape(1), golden[f"{key}/offset"].reshape(1), f"{key} offset")
        _same(q.absmax2, golden[f"{key}/absmax2"], f"{key} absmax2")
    np.testing.assert_array_equal(q.dequantize().numpy().reshape(-1), golden[f"{key}/dequant"].reshape(-1))


def test_double_quant_costs_what_qlora_says() -> None:
    w = torch.randn(576, 1536)
    assert abs(quantize_4bit(w, "nf4", 64, True).bits_per_weight - 4.127) < 0.01
    assert quantize_4bit(w, "nf4", 64, False).bits_per_weight == pytest.approx(4.5)


def test_codes_and_errors() -> None:
    nf4, fp4 = code4("nf4"), code4("fp4")
    assert nf4[0] == -1 and nf4[-1] == 1 and nf4[7] == 0 and bool((nf4.diff() > 0).all())
    assert sorted(fp4.abs().unique().tolist()) == pytest.approx([0, 1 / 192, 1 / 6, 0.25, 1 / 3, 0.5, 2 / 3, 1])
    dm = dynamic_map()
    assert dm.numel() == 256 and dm.max() == 1 and bool((dm.diff() >= 0).all())
    with pytest.raises(InputError, match="nf4 or fp4"):
        quantize_4bit(torch.randn(64), "int4")
    with pytest.raises(InputError, match="NaN"):
        quantize_4bit(torch.tensor([1.0, float("nan")] * 32))
    # nf4 is more faithful than fp4 on normal weights, and both round-trip within their grids
    w = torch.randn(64, 256)
    e = {qt: float((quantize_4bit(w, qt).dequantize() - w).norm() / w.norm()) for qt in ("nf4", "fp4")}
    assert e["nf4"] < e["fp4"] < 0.2


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")
@pytest.mark.parametrize("qt", ["nf4", "fp4"])
def test_live_against_bitsandbytes(qt) -> None:
    import bitsandbytes.functional as F

    g = torch.Generator().manual_seed(3)
    w = torch.randn(576, 1536, generator=g) * torch.exp(torch.randn(576, 1, generator=g))
    for dq in (False, True):
        q, st = F.quantize_4bit(w, blocksize=64, quant_type=qt, compress_statistics=dq)
        mine = quantize_4bit(w, qt, 64, dq)
        assert torch.equal(q.reshape(-1), mine.packed) and torch.equal(st.absmax.reshape(-1), mine.absmax)
        assert torch.equal(F.dequantize_4bit(q, st), mine.dequantize())
    a = torch.randn(1 << 18, generator=g) * torch.exp(torch.randn(1 << 18, generator=g) * 2)
    ref_q, ref_abs = torch.ops.bitsandbytes.quantize_blockwise.default(a, dynamic_map(), 256)
    q8, abs8 = quantize_blockwise8(a, dynamic_map(), 256)
    assert torch.equal(ref_q, q8) and torch.equal(ref_abs, abs8)


def test_linear4bit_model_and_compare_family(tiny_llama) -> None:
    from lowbit.compare.candidates import candidates_for
    from lowbit.metrics.size import quantized_layer_bits
    import lowbit
    from lowbit.modules.bnb4_linear import Linear4bit

    ids = torch.tensor([[3, 9, 14, 20, 7, 11]])
    with torch.no_grad():
        ref = tiny_llama.model(ids).logits
    for dq in (False, True):
        qh, rep = lowbit.quantize(tiny_llama, lowbit.make_config("nf4", double_quant=dq))
        mods = [m for m in qh.model.modules() if isinstance(m, Linear4bit)]
        assert len(mods) == len(rep.layers) > 0 and "lm_head" not in rep.layers
        lin = mods[0]
        w = tiny_llama.model.get_submodule(rep.layers[0]).weight
        assert torch.equal(lin.dequantize(), quantize_4bit(w, "nf4", 64, dq).dequantize())
        with torch.no_grad():
            out = qh.model(ids).logits
        assert not torch.equal(out, ref) and float((out - ref).norm() / ref.norm()) < 0.2
        bpw, _ = quantized_layer_bits(qh.model)
        assert bpw == pytest.approx(rep.bits_per_weight) and (bpw < 4.2 if dq else bpw == pytest.approx(4.5))
    assert "bitsandbytes" in {c.family for c in candidates_for("causal-lm", None)}
    assert "bitsandbytes" in {c.family for c in candidates_for("encoder", None)}
