"""LLM.int8: vector-wise int8 codes identical to bitsandbytes (golden fixtures, live when installed), the
outlier decomposition computed exactly, and the fast integer kernel equal to the exact product."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lowbit.compare.candidates import candidates_for
import lowbit
from lowbit.formats.int8 import int8_vectorwise_quant
from lowbit.modules.int8_linear import LinearInt8
from lowbit.modules.kernel_mode import kernel_mode


def quantize_llm_int8(model, threshold=6.0):
    return lowbit.quantize(model, lowbit.make_config("int8", threshold=threshold))

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bnb" / "bnb4.npz"


@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_vectorwise_codes_equal_bitsandbytes(threshold) -> None:
    with np.load(FIXTURES) as f:
        a = torch.from_numpy(f["int8/a"])
        codes, stats, cols = int8_vectorwise_quant(a, threshold)
        assert np.array_equal(codes.numpy(), f[f"int8/{threshold}/codes"])
        assert np.array_equal(stats.numpy(), f[f"int8/{threshold}/stats"])
        want = f[f"int8/{threshold}/cols"]
        assert (cols.numpy() if cols is not None else np.empty(0, dtype=np.int64)).tolist() == want.tolist()
    if threshold:
        assert 7 in cols.tolist() and 40 in cols.tolist() and int(codes[:, 7].abs().max()) == 0


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")
def test_vectorwise_live() -> None:
    import bitsandbytes.functional as F

    a = torch.randn(64, 576) * torch.exp(torch.randn(1, 576))
    for th in (0.0, 6.0):
        c1, s1, _ = F.int8_vectorwise_quant(a.clone(), threshold=th)
        c2, s2, _ = int8_vectorwise_quant(a, th)
        assert torch.equal(c1, c2) and torch.equal(s1, s2)


def test_outlier_decomposition_is_exact() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    m = LinearInt8(lin, threshold=6.0)
    x = torch.randn(5, 64)
    x[:, 3] = 25.0  # an outlier column
    ca, sca, cols = int8_vectorwise_quant(x, 6.0)
    int_part = (ca.long() @ m.CB.long().T).double() * sca.double()[:, None] * m.SCB.double()[None, :] / 127**2
    want = int_part + (x[:, cols].double() @ m.dequantize()[:, cols].double().T) + lin.bias.double()
    with kernel_mode(m, "dequant"):
        got = m(x)
    assert torch.allclose(got.double(), want, atol=1e-5)
    assert float((got - lin(x)).norm() / lin(x).norm()) < 0.02  # the outlier column kept in float
    no_split = LinearInt8(lin, threshold=0.0)
    with kernel_mode(no_split, "dequant"):
        worse = float((no_split(x) - lin(x)).norm() / lin(x).norm())
    assert worse > float((got - lin(x)).norm() / lin(x).norm())


def test_fast_integer_kernel_equals_the_exact_product() -> None:
    torch.manual_seed(1)
    m = LinearInt8(nn.Linear(96, 48), threshold=6.0)
    for rows in (1, 40):
        x = torch.randn(rows, 96)
        with kernel_mode(m, "dequant"):
            exact = m(x)
        try:
            fast = m(x)
        except RuntimeError:  # no _int_mm on this build: the exact path is the only one
            fast = exact
        assert torch.allclose(fast, exact, atol=1e-5)


def test_model_and_registration(tiny_llama) -> None:
    qh, rep = quantize_llm_int8(tiny_llama)
    assert rep.layers and 8 < rep.bits_per_weight < 9
    ids = torch.tensor([[4, 8, 15, 16, 23, 42]])
    with torch.no_grad():
        ref, out = tiny_llama.model(ids).logits, qh.model(ids).logits
    assert float((out - ref).norm() / ref.norm()) < 0.05
    assert "bnb-int8" in [c.id for c in candidates_for("causal-lm", None)]
