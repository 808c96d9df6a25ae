"""`lowbit hardware`: machine detection, per-format timing against float32, the slower-than-fp32
flag (proved with a deliberately slow fake kernel), and the hand-off to `lowbit plan`."""

from __future__ import annotations

import copy
import json
import time

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from lowbit.cli import app
from lowbit.metrics import hardware as hw
from lowbit.modules.kernel_mode import kernel_mode
from lowbit.plan import Inputs, ModelInfo, make_plan
from lowbit.plan.model_info import ENCODER

SMALL = [(64, 64), (128, 64)]


class _Slow(nn.Module):
    """A fake kernel: correct output, 5 ms late."""

    def __init__(self, lin: nn.Linear) -> None:
        super().__init__()
        self.lin, self.in_features = lin, lin.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.005)
        return self.lin(x)


def test_a_slow_kernel_is_flagged_and_a_fast_one_is_not(monkeypatch) -> None:
    """The flag logic on fixed timings (no wall clock in a unit test): a kernel 10x slower than float32
    is flagged, one as fast is not."""
    monkeypatch.setattr(hw, "_time", lambda layers, m, repeats, device="cpu":
                        10.0 if isinstance(layers[0], _Slow) else 1.0)
    table = {"fp32": ("float32", lambda lin: lin), "fake-slow": ("fake slow kernel", _Slow),
             "same": ("float32 again", lambda lin: lin)}
    rows = {r.format: r for r in hw.check(SMALL, repeats=3, prefill_batch=8, only=table)}
    assert rows["fake-slow"].slower_than_fp32 and rows["fake-slow"].prefill_ratio_vs_fp32 == pytest.approx(0.1)
    assert rows["fp32"].prefill_ratio_vs_fp32 == 1.0
    assert not rows["same"].slower_than_fp32 and rows["same"].prefill_ratio_vs_fp32 == 1.0


def test_every_format_runs_and_feeds_plan(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path))
    m = hw.detect()
    assert m.cores >= 1 and m.threads >= 1 and m.lines()
    rows = hw.check(SMALL, repeats=2, prefill_batch=8)
    assert {r.format for r in rows} >= {"fp32", "int8-weight", "int4-weight", "bnb-nf4", "w8a8-int8"}
    assert all(r.decode_ms > 0 or r.note for r in rows)
    slow = next(r for r in rows if r.format == "int8-weight")
    slow.prefill_ratio_vs_fp32 = 0.25  # as if measured slower: plan must say so
    hw.record(rows, m)
    data = json.loads((tmp_path / "speed.json").read_text())
    assert data["int8-weight"]["prefill_ratio_vs_fp32"] == 0.25
    p = make_plan(Inputs(target="cpu"), ModelInfo("enc", ENCODER, 20_000_000))  # the default rule: int8-weight
    assert p.chosen.id == "int8-weight" and "SLOWER than full precision" in p.chosen.support[0].note


def test_cli_hardware(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path))
    monkeypatch.setattr(hw, "BLOCK", SMALL)
    r = CliRunner().invoke(app, ["hardware", "--repeats", "2", "--json", str(tmp_path / "hw.json")], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert "CPU:" in r.output and "W8A8" in r.output
    d = json.loads((tmp_path / "hw.json").read_text())
    assert d["formats"][0]["format"] == "fp32" and (tmp_path / "speed.json").exists()


def test_gpu_figures_feed_plan_for_a_cuda_target_only(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path))
    m = hw.Machine("cpu", 2, 2, [], gpu="Fake GPU", compute_capability="9.0")
    rows = [hw.FormatTiming("fp32", "float32", 1.0, 1.0, 1.0, 1.0),
            hw.FormatTiming("int8-weight", "int8 dequant", 4.0, 4.0, 0.25, 0.25, slower_than_fp32=True)]
    hw.record(rows, m, device="cuda")
    data = json.loads((tmp_path / "speed.json").read_text())
    assert "int8-weight" not in data and data["cuda"]["int8-weight"]["compute_capability"] == "9.0"
    enc = ModelInfo("enc", ENCODER, 20_000_000)
    on_gpu = make_plan(Inputs(target="cuda:9.0"), enc)
    assert on_gpu.chosen.support[0].runtime.startswith("measured on this machine's GPU, Fake GPU")
    assert "SLOWER than full precision" in on_gpu.chosen.support[0].note
    other_gpu = make_plan(Inputs(target="cuda:8.0"), enc)  # measured on a 9.0 card: says nothing of an 8.0 one
    assert not other_gpu.chosen.support or not other_gpu.chosen.support[0].runtime.startswith("measured")
    cpu = make_plan(Inputs(target="cpu"), enc)
    assert not cpu.chosen.support[0].runtime.startswith("measured")


def test_the_speed_cache_has_one_atomic_writer(tmp_path, monkeypatch) -> None:
    """hardware.record (like compare) merges through plan.rule.record_speed; a write that fails midway
    leaves the previous cache whole and no temporary file behind."""
    from lowbit.plan import rule

    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path))
    calls, writer = [], rule.record_speed
    monkeypatch.setattr(rule, "record_speed", lambda entries, section=None: calls.append((sorted(entries), section)) or
                        writer(entries, section))
    m = hw.Machine("cpu", 2, 2, [], gpu="Fake GPU", compute_capability="9.0")
    rows = [hw.FormatTiming("fp32", "float32", 1.0, 1.0, 1.0, 1.0), hw.FormatTiming("int8-weight", "int8", 2.0, 2.0, 0.5, 0.5)]
    hw.record(rows, m)
    hw.record(rows, m, device="cuda")
    assert calls == [(["int8-weight"], None), (["int8-weight"], "cuda")]
    before = (tmp_path / "speed.json").read_text()
    assert json.loads(before)["int8-weight"]["machine"] == "cpu" and json.loads(before)["cuda"]["int8-weight"]

    def half_written(obj, f, **kw):
        f.write(json.dumps(obj)[:10])
        raise OSError("disk full")

    monkeypatch.setattr(rule.json, "dump", half_written)
    with pytest.raises(OSError, match="disk full"):
        writer({"bnb-nf4": {"prefill_ratio_vs_fp32": 0.1}})
    assert (tmp_path / "speed.json").read_text() == before
    assert [f.name for f in tmp_path.iterdir()] == ["speed.json"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (runs on the device machine)")
def test_every_format_runs_on_the_gpu_and_matches_the_cpu() -> None:
    """Each GPU format computes what the same module computes on the CPU, then is timed there."""
    x = torch.randn(5, 64)
    for key, (_, make) in hw.gpu_formats().items():
        lin = nn.Linear(64, 128, bias=False)
        ref_mod = make(lin)
        with kernel_mode(ref_mod, "dequant"):  # the exact arithmetic (the CPU's bfloat16 kernels aside)
            ref = ref_mod(x.to(_dtype(ref_mod))).float()
        got = copy.deepcopy(ref_mod).to("cuda")(x.to("cuda", _dtype(ref_mod))).float().cpu()
        tol = 5e-3 if key == "fp16" else 1e-4
        assert torch.allclose(got, ref, atol=tol, rtol=tol), (key, (got - ref).abs().max())
    rows = {r.format: r for r in hw.check(SMALL, repeats=3, prefill_batch=32, device="cuda")}
    assert set(rows) == set(hw.gpu_formats()) and all(r.decode_ms > 0 and r.prefill_ms > 0 for r in rows.values())


def _dtype(mod: nn.Module) -> torch.dtype:
    return hw._in_dtype(mod)
