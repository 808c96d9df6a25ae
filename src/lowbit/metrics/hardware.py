"""`lowbit hardware`: what this machine is, and how fast each format lowbit can run here really is.

The guide's warning, measured: "confirm the format runs accelerated on the hardware you deploy to".
For every format, one transformer block's worth of matmuls (smollm2's shapes by default: q, k, v, o,
gate, up, down) is timed at batch 1 (a decode step) and batch 64 (prefill), as a ratio to float32.
A ratio below 1 is a format that is slower than not quantizing at all, and is flagged. The figures
are written to the user cache, where `lowbit plan` reads them for the hardware-support axis. Where a
GPU is present, the same block is timed there too (``check(device="cuda")``, ``gpu_formats``), and its
ratios are kept apart, under "cuda", for `lowbit plan --target cuda:SM`.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

BLOCK = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]  # smollm2
ISA = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "asimd", "asimddp",
       "sve")


@dataclass
class Machine:
    cpu: str
    cores: int
    threads: int
    isa: list[str]
    gpu: str | None = None
    compute_capability: str | None = None
    int8_engine: str | None = None

    def lines(self) -> list[str]:
        out = [f"CPU: {self.cpu}, {self.cores} cores, torch uses {self.threads} threads",
               f"ISA: {', '.join(self.isa) or 'none of ' + ', '.join(ISA)}",
               f"int8 GEMM engine (torch): {self.int8_engine or 'none'}"]
        out.append(f"GPU: {self.gpu} (compute capability {self.compute_capability})" if self.gpu else "GPU: none")
        return out


def detect() -> Machine:
    from lowbit.modules.int8_kernels import int8_engine
    from lowbit.plan.rule import cpu_flags

    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name)
    except OSError:
        pass
    flags = cpu_flags()
    gpu = cc = None
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
        cc = "{}.{}".format(*torch.cuda.get_device_capability(0))
    return Machine(name, os.cpu_count() or 1, torch.get_num_threads(), [f for f in ISA if f in flags], gpu, cc,
                   int8_engine())


@dataclass
class FormatTiming:
    format: str
    label: str
    decode_ms: float
    prefill_ms: float
    decode_ratio_vs_fp32: float = 0.0
    prefill_ratio_vs_fp32: float = 0.0
    note: str = ""
    slower_than_fp32: bool = field(default=False)


def _block_layers(make: Callable[[nn.Linear], nn.Module], shapes: list[tuple[int, int]]) -> list[nn.Module]:
    g = torch.Generator().manual_seed(0)
    out = []
    for n, k in shapes:
        lin = nn.Linear(k, n, bias=False)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(n, k, generator=g) * 0.02)
        out.append(make(lin))
    return out


def _in_features(layer: nn.Module) -> int:
    return layer.in_features if hasattr(layer, "in_features") else layer.weight.shape[1]


def _in_dtype(layer: nn.Module) -> torch.dtype:
    """A float16 layer is fed float16; every other format takes float32 activations."""
    w = getattr(layer, "weight", None)
    return w.dtype if isinstance(w, torch.Tensor) and w.is_floating_point() else torch.float32


@torch.inference_mode()
def _time(layers: list[nn.Module], m: int, repeats: int, device: str = "cpu") -> float:
    """Median ms for one pass of every layer at batch ``m``. On a GPU each timed sample is 20 passes
    between two synchronizations (one pass of small matmuls is shorter than the timer's resolution)."""
    xs = [torch.randn(m, _in_features(layer), device=device, dtype=_in_dtype(layer)) for layer in layers]
    cuda = device.startswith("cuda")
    inner = 20 if cuda else 1

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    for _ in range(3 if cuda else 1):  # warm-up (kernels pack their weights, pick algorithms on first use)
        for layer, x in zip(layers, xs):
            layer(x)
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            for layer, x in zip(layers, xs):
                layer(x)
        sync()
        times.append((time.perf_counter() - t0) / inner)
    times.sort()
    return 1000 * times[len(times) // 2]


def formats() -> dict[str, tuple[str, Callable[[nn.Linear], nn.Module]]]:
    """format key (plan/hardware.toml) -> (label, Linear -> module in that format)."""
    from lowbit.modules.bnb4_linear import Linear4bit
    from lowbit.modules.int8_kernels import int_mm
    from lowbit.modules.qlinear import QuantizedLinear
    from lowbit.modules.w8a8_linear import W8A8Linear
    from lowbit.spec import QuantSpec
    from lowbit.tensor import QuantizedTensor

    def qlin(spec: QuantSpec) -> Callable[[nn.Linear], nn.Module]:  # round-to-nearest: what RTN stores
        return lambda lin: QuantizedLinear.from_linear(lin, QuantizedTensor.round_to_nearest(lin.weight.data, spec))

    class IntMM(nn.Module):  # torch._int_mm: int8 x int8 -> int32, the "obvious" integer path
        def __init__(self, lin: nn.Linear) -> None:
            super().__init__()
            self.in_features = lin.in_features
            self.w = torch.clamp(torch.round(lin.weight.detach() / 0.001), -127, 127).to(torch.int8).T.contiguous()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return int_mm(torch.clamp(torch.round(x / 0.01), -127, 127).to(torch.int8), self.w).float()

    return {
        "fp32": ("float32 F.linear", lambda lin: lin),
        "int8-weight": ("int8 weight-only, per channel (lowbit, torch int8 kernel)", qlin(QuantSpec(8, True, -1))),
        "int4-weight": ("int4 weight-only, g64 (lowbit, torch int4 kernel)", qlin(QuantSpec(4, False, 64))),
        "bnb-nf4": ("NF4 (lowbit Linear4bit, dequantize + matmul)", lambda lin: Linear4bit.from_linear(lin, "nf4", True)),
        "w8a8-int8": ("W8A8 int8 (x86/fbgemm GEMM)", lambda lin: W8A8Linear(lin, "dynamic")),
        "int8-int_mm": ("int8 x int8 via torch._int_mm", IntMM),
    }


def gpu_formats() -> dict[str, tuple[str, Callable[[nn.Linear], nn.Module]]]:
    """The same formats as lowbit's modules run them on a GPU (weight-only formats dequantize to the
    activation dtype and call cuBLAS: lowbit has no fused GPU kernel for them, so they are expected to
    be flagged), plus float16, the usual GPU baseline. W8A8 runs torch._int_mm on the tensor cores."""
    table = formats()
    out = {"fp32": table["fp32"], "fp16": ("float16 F.linear (cuBLAS)", lambda lin: lin.half())}
    out["int8-weight"] = ("int8 weight-only, per channel (lowbit, dequantize + matmul)", table["int8-weight"][1])
    out["int4-weight"] = ("int4 weight-only, g64 (lowbit, dequantize + matmul)", table["int4-weight"][1])
    out["bnb-nf4"] = table["bnb-nf4"]
    out["w8a8-int8"] = ("W8A8 int8 (torch._int_mm, tensor cores)", table["w8a8-int8"][1])
    return out


def check(shapes: list[tuple[int, int]] | None = None, repeats: int = 7, prefill_batch: int = 64,
          only: dict[str, tuple[str, Callable[[nn.Linear], nn.Module]]] | None = None,
          device: str = "cpu") -> list[FormatTiming]:
    """Time every format against float32 on one block of ``shapes`` on ``device`` ("cpu" or "cuda");
    formats slower than fp32 are flagged."""
    shapes = shapes or BLOCK
    table = only if only is not None else (gpu_formats() if device.startswith("cuda") else formats())
    base = [layer.to(device) for layer in _block_layers(lambda lin: lin, shapes)]  # float32 F.linear
    fp_dec, fp_pre = _time(base, 1, repeats, device), _time(base, prefill_batch, repeats, device)
    out = [FormatTiming("fp32", "float32 F.linear", fp_dec, fp_pre, 1.0, 1.0)]
    for key, (label, make) in table.items():
        if key == "fp32":
            continue
        try:
            layers = [layer.to(device) for layer in _block_layers(make, shapes)]
            dec, pre = _time(layers, 1, repeats, device), _time(layers, prefill_batch, repeats, device)
        except (RuntimeError, NotImplementedError) as e:  # a kernel this machine lacks
            out.append(FormatTiming(key, label, float("nan"), float("nan"), note=f"not available here: {str(e).splitlines()[0]}"))
            continue
        t = FormatTiming(key, label, dec, pre, fp_dec / dec, fp_pre / pre)
        t.slower_than_fp32 = t.prefill_ratio_vs_fp32 < 1 or t.decode_ratio_vs_fp32 < 1
        out.append(t)
    return out


def record(timings: list[FormatTiming], machine: Machine, device: str = "cpu") -> None:
    """Write the kernel-level ratios where `lowbit plan` reads measured speeds (GPU ones under "cuda")."""
    from lowbit.plan.rule import record_speed

    gpu = device.startswith("cuda")
    entries: dict[str, dict[str, Any]] = {}
    for t in timings:
        if t.format != "fp32" and t.prefill_ratio_vs_fp32 == t.prefill_ratio_vs_fp32 and t.prefill_ratio_vs_fp32 > 0:
            entries[t.format] = {"prefill_ratio_vs_fp32": t.prefill_ratio_vs_fp32, "decode_ratio_vs_fp32": t.decode_ratio_vs_fp32,
                                 "runtime": f"lowbit hardware: {t.label}", "machine": machine.gpu if gpu else machine.cpu,
                                 "date": time.strftime("%Y-%m-%d")}
            if gpu:
                entries[t.format]["compute_capability"] = machine.compute_capability
    record_speed(entries, section="cuda" if gpu else None)


def to_dict(machine: Machine, timings: list[FormatTiming], gpu: list[FormatTiming] | None = None) -> dict[str, Any]:
    from dataclasses import asdict

    d = {"machine": asdict(machine), "formats": [asdict(t) for t in timings]}
    if gpu is not None:
        d["gpu_formats"] = [asdict(t) for t in gpu]
    return d
