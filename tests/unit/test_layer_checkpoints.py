"""NF4/FP4, LLM.int8 and W8A8 models save as lowbit checkpoints and reload with identical logits, from the
API and from `lowbit quantize --method ...`; `lowbit inspect` reads them."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from typer.testing import CliRunner

from lowbit import api
from lowbit.cli import app
from lowbit.loaders import load_model
from lowbit.calib.settings import CalibSettings
from lowbit.modules.kernel_mode import kernel_mode


def quantize_bnb4(model, quant_type="nf4", double_quant=False):
    return api.quantize(model, api.make_config(quant_type, double_quant=double_quant))


def quantize_llm_int8(model):
    return api.quantize(model, api.make_config("int8"))


def quantize_w8a8(model, act, smooth, alpha, calib, n_samples, seq_len):
    return api.quantize(model, api.make_config("w8a8", act=act, smooth=smooth, alpha=alpha),
                        calib=CalibSettings(calib, n_samples, seq_len))

IDS = torch.tensor([[5, 9, 13, 40, 7, 3, 22, 61]])


def _logits(model):
    with torch.no_grad(), kernel_mode(model, "dequant"):
        return model(IDS).logits


@pytest.mark.parametrize("make", ["nf4", "nf4-dq", "fp4", "int8", "w8a8-static-smooth", "w8a8-dynamic"])
def test_save_and_reload(tiny_llama, text_file, tmp_path, make) -> None:
    if make.startswith("nf4") or make == "fp4":
        qh, _ = quantize_bnb4(tiny_llama, make[:3], make.endswith("dq"))
    elif make == "int8":
        qh, _ = quantize_llm_int8(tiny_llama)
    else:
        act = make.split("-")[1]
        qh, _ = quantize_w8a8(tiny_llama, act, "smooth" in make, alpha=0.5, calib=str(text_file), n_samples=2, seq_len=32)
    path = api.save(qh, tmp_path / "ckpt")
    back = load_model(str(path))
    assert torch.equal(_logits(back.model), _logits(qh.model))
    assert type(back.model.get_submodule("model.layers.0.mlp.down_proj")) is type(qh.model.get_submodule("model.layers.0.mlp.down_proj"))


def test_cli_quantize_nf4_and_inspect(tiny_llama_dir, tmp_path) -> None:
    r = CliRunner().invoke(app, ["quantize", str(tiny_llama_dir), "--method", "nf4", "--double-quant",
                                 "--out", str(tmp_path / "q")])
    assert r.exit_code == 0, r.output
    assert "nf4:" in r.output and "bits/weight" in r.output
    r = CliRunner().invoke(app, ["inspect", str(tmp_path / "q")], terminal_width=200)
    assert r.exit_code == 0 and "nf4+dq" in r.output
    r = CliRunner().invoke(app, ["quantize", str(tiny_llama_dir), "--method", "nf4", "--out", str(tmp_path / "q")])
    assert r.exit_code == 2  # exists


@pytest.mark.parametrize("dq", [False, True])
def test_bitsandbytes_export(tiny_llama, tmp_path, dq) -> None:
    """The files transformers + bitsandbytes read: the config and, per layer, Linear4bit's tensors."""
    import json

    from safetensors import safe_open

    qh, _ = quantize_bnb4(tiny_llama, "nf4", dq)
    out = api.export(qh, tmp_path / "bnb", fmt="bitsandbytes")
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "bitsandbytes" and cfg["load_in_4bit"] and cfg["bnb_4bit_use_double_quant"] is dq
    name = "model.layers.0.mlp.down_proj.weight"
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        meta = json.loads(bytes(f.get_tensor(f"{name}.quant_state.bitsandbytes__nf4").tolist()).decode())
    assert {name, f"{name}.absmax", f"{name}.quant_map"} <= keys and (f"{name}.nested_absmax" in keys) is dq
    assert meta["shape"] == list(tiny_llama.model.get_submodule("model.layers.0.mlp.down_proj").weight.shape)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")
@pytest.mark.parametrize("dq", [False, True])
def test_bitsandbytes_export_loads_in_transformers(tiny_llama, tmp_path, dq) -> None:
    import bitsandbytes.functional as F
    from transformers import AutoModelForCausalLM

    qh, _ = quantize_bnb4(tiny_llama, "nf4", dq)
    out = api.export(qh, tmp_path / "bnb", fmt="bitsandbytes")
    m = AutoModelForCausalLM.from_pretrained(out, device_map="cpu")
    w = m.model.layers[0].mlp.down_proj.weight
    assert torch.equal(F.dequantize_4bit(w.data, w.quant_state).float(),
                       qh.model.model.layers[0].mlp.down_proj.dequantize())
    with torch.no_grad():
        a, b = m(IDS).logits, qh.model(IDS).logits
    assert float((a - b).norm() / b.norm()) < 0.02


def test_bitsandbytes_export_refuses_other_models(tiny_llama, tmp_path) -> None:
    from lowbit.errors import ExportError

    with pytest.raises(ExportError, match="nf4 or fp4"):
        api.export(tiny_llama, tmp_path / "x", fmt="bitsandbytes")
    assert not (tmp_path / "x").exists()
