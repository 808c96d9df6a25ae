"""Hostile input on the real models: minilm's directory with a tensor dropped, or one NaN weight, and
smollm2's GGUF with a block count it does not hold, give one line naming what is wrong."""

from __future__ import annotations

import math
import shutil
import struct

import pytest
from fuzz import gguf_edit as ge
from fuzz.cases import st_read, st_write

from lowbit.errors import InputError
from lowbit.loaders import load_model
from lowbit.loaders.builtin import builtin_path


@pytest.fixture
def minilm_dir(tmp_path):
    src = builtin_path("minilm")
    dst = tmp_path / "minilm"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("1_Pooling", "*.md"))
    return dst


def test_minilm_missing_a_tensor_names_it(minilm_dir) -> None:
    header, data = st_read(minilm_dir / "model.safetensors")
    gone = "encoder.layer.3.output.dense.weight"
    keep = sorted((k for k in header if k not in ("__metadata__", gone)), key=lambda k: header[k]["data_offsets"][0])
    out, packed = {"__metadata__": header["__metadata__"]} if "__metadata__" in header else {}, b""
    for k in keep:
        b, e = header[k]["data_offsets"]
        out[k] = dict(header[k], data_offsets=[len(packed), len(packed) + e - b])
        packed += data[b:e]
    st_write(minilm_dir / "model.safetensors", out, packed)
    with pytest.raises(InputError) as ei:
        load_model(minilm_dir)
    assert str(ei.value) == (f"{minilm_dir} lacks 1 of the model's weights (e.g. {gone}); the weights on disk do not "
                             f"match the model config")


def test_minilm_nan_weight_names_it(minilm_dir) -> None:
    header, data = st_read(minilm_dir / "model.safetensors")
    b = header["encoder.layer.0.attention.self.query.weight"]["data_offsets"][0]
    data = data[:b] + struct.pack("<f", math.nan) + data[b + 4:]
    st_write(minilm_dir / "model.safetensors", header, data)
    with pytest.raises(InputError) as ei:
        load_model(minilm_dir)
    assert str(ei.value) == (f"{minilm_dir}: tensor encoder.layer.0.attention.self.query.weight holds 1 NaN/inf value(s); "
                             f"pass --allow-nonfinite to load it anyway")


def test_smollm2_gguf_block_count_past_its_blocks(tmp_path) -> None:
    g = ge.parse(builtin_path("smollm2").read_bytes())
    g.set("llama.block_count", 4, ge.scalar(4, 2**20))
    path = tmp_path / "smollm2.gguf"
    path.write_bytes(g.to_bytes())
    with pytest.raises(InputError) as ei:
        load_model(path)
    assert str(ei.value).startswith(f"{path} is not a valid GGUF file: llama.block_count must be an integer from 1 to "
                                    f"4096, got 1048576")
