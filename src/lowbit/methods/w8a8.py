"""INT8 weights and activations (W8A8), SmoothQuant-style: the guide's option for a tiny,
latency-critical model, with the integer matmul measured rather than assumed.

- weights: int8 per output channel, symmetric (absmax / 127);
- activations: int8 per token, computed at run time (``act="dynamic"``), or one static scale per
  layer from the calibration data (``act="static"``);
- smoothing (``smooth=True``): activation outliers are moved into the weights with
  ``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)``, folded into the norm that produces the input
  (Xiao et al., SmoothQuant); ``alpha=None`` searches {0.3 .. 0.8} for the lowest KL on a calibration
  window. Linears whose input no norm produces directly (o_proj, down_proj) are quantized unsmoothed.

Quality numbers come from an exact emulation of that integer arithmetic (integer-valued float32
matmul, scales applied after). Speed comes from a real int8 GEMM: the fbgemm / x86 engine behind
``torch.ops.quantized.linear_dynamic`` (its own activation quantization is per tensor), used
whenever QuantizedLinear's kernel mode is not "dequant".
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.compare.candidates import Built, Candidate, register_candidate
from lowbit.errors import InputError
from lowbit.loaders import ModelHandle, load_model
from lowbit.loaders.handle import CAUSAL_LM, ENCODER
from lowbit.methods.layers import layer_bits, quant_record, selected_linears
from lowbit.modules.qlinear import QuantizedLinear
from lowbit.modules.swap import replace_module

log = logging.getLogger(__name__)
ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# A gated MLP's down projection reads act(gate(x)) * up(x): scaling up's output rows by 1/s scales its
# input channels exactly, so up_proj is its producer (SmoothQuant's mapping for Llama-like MLPs).
MLP_PRODUCER = {"down_proj": "up_proj"}
QMAX = 127.0


def int8_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W8A8's weight grid: integer-valued codes in [-127, 127] per output row and the row scales
    (absmax / 127), both float32."""
    scale = (w.abs().amax(1) / QMAX).clamp_min(1e-12)
    return torch.clamp(torch.round(w / scale[:, None]), -QMAX, QMAX), scale


def token_scales(x: torch.Tensor) -> torch.Tensor:
    """Dynamic activation scales: one per token (row of the last dimension), absmax / 127."""
    return (x.abs().amax(-1, keepdim=True) / QMAX).clamp_min(1e-12)


class W8A8Linear(nn.Module):
    def __init__(self, linear: nn.Linear, act: str, act_scale: float | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features, self.act = linear.in_features, linear.out_features, act
        codes, wscale = int8_rows(linear.weight.detach().float())
        self.register_buffer("qweight", codes.to(torch.int8))
        self.register_buffer("wscale", wscale)
        self.register_buffer("act_scale", torch.tensor(act_scale if act_scale is not None else 0.0))
        self.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False) if linear.bias is not None else None
        self._packed: Any = None

    @classmethod
    def empty(cls, like: nn.Linear, info: dict) -> W8A8Linear:
        return cls(nn.Linear(like.in_features, like.out_features, bias=like.bias is not None), info["act"],
                   0.0 if info["act"] == "static" else None)

    def record(self) -> dict:
        return {"module": "w8a8", "shape": [self.out_features, self.in_features], "act": self.act,
                "format": f"w8a8 int8, {self.act} activations"}

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.qweight.float() * self.wscale[:, None]).to(dtype)

    @property
    def quant_nbytes(self) -> int:
        return self.qweight.numel() + 4 * self.wscale.numel() + (4 if self.act == "static" else 0)

    def _act_codes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Integer-valued activation codes and their scale (static, or one per token)."""
        s = self.act_scale if self.act == "static" else token_scales(x)
        return torch.clamp(torch.round(x / s), -QMAX, QMAX), s

    def _emulate(self, x: torch.Tensor) -> torch.Tensor:
        xq, s = self._act_codes(x)
        y = (xq @ self.qweight.float().T) * (s * self.wscale)
        return y + self.bias if self.bias is not None else y

    def _int8_gemm(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed is None:
            import warnings

            with warnings.catch_warnings():  # torch marks its quantized tensors deprecated (torchao is the successor);
                warnings.simplefilter("ignore")  # they are still the way to reach the x86 / fbgemm int8 GEMM
                qw = torch.quantize_per_channel(self.dequantize(), self.wscale.double(),
                                                torch.zeros(self.out_features, dtype=torch.long), 0, torch.qint8)
                self._packed = torch.ops.quantized.linear_prepack(qw, self.bias)
        y = torch.ops.quantized.linear_dynamic(x.reshape(-1, self.in_features).contiguous(), self._packed, True)
        return y.reshape(*x.shape[:-1], self.out_features)

    def _int_mm(self, x: torch.Tensor) -> torch.Tensor:
        """On a GPU: the same arithmetic as ``_emulate`` through torch._int_mm (int8 x int8 -> int32 on the
        tensor cores)."""
        from lowbit.methods.llm_int8 import int_mm

        xq, s = self._act_codes(x.reshape(-1, self.in_features).float())
        y = int_mm(xq.to(torch.int8), self.qweight.t()).float() * (s * self.wscale)
        y = y + self.bias if self.bias is not None else y
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if QuantizedLinear.kernel_mode == "dequant":
            return self._emulate(x)
        if x.is_cuda and self.in_features % 8 == 0 and self.out_features % 8 == 0:
            return self._int_mm(x)
        if x.dtype != torch.float32 or not int8_engine() or x.device.type != "cpu":
            return self._emulate(x)
        return self._int8_gemm(x)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, act={self.act}"


def int8_engine() -> str | None:
    """torch's int8 GEMM engine on this machine (x86 / fbgemm / qnnpack), or None."""
    engines = torch.backends.quantized.supported_engines
    for e in ("x86", "fbgemm", "qnnpack"):
        if e in engines:
            if torch.backends.quantized.engine != e:
                torch.backends.quantized.engine = e
            return e
    return None


@torch.no_grad()
def _input_stats(model: nn.Module, names: list[str], batches: Any) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Per-input-channel max |x| of every named Linear over ``batches`` (token windows (n, L), or a list
    of keyword-argument dicts for the model), and which module (a norm) produced each Linear's input,
    found by tensor identity."""
    absmax: dict[str, torch.Tensor] = {}
    producer_of: dict[int, tuple[str, torch.Tensor]] = {}  # the tensor is kept so its id is not reused
    fed_by: dict[str, str] = {}
    hooks = []

    def lin_hook(name: str):
        def h(mod: nn.Module, args: tuple, out: Any) -> None:
            x = args[0]
            m = x.detach().reshape(-1, x.shape[-1]).abs().amax(0).float()
            absmax[name] = torch.maximum(absmax[name], m) if name in absmax else m
            src = producer_of.get(id(x))
            if src is not None and src[1] is x:
                fed_by[name] = src[0]
        return h

    def out_hook(name: str):
        def h(mod: nn.Module, args: tuple, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                producer_of[id(out)] = (name, out)
        return h

    mods = dict(model.named_modules())
    for name, mod in mods.items():
        w = getattr(mod, "weight", None)
        if isinstance(w, torch.Tensor) and w.dim() == 1 and not isinstance(mod, nn.Embedding):  # norms
            hooks.append(mod.register_forward_hook(out_hook(name)))
    for name in names:
        hooks.append(mods[name].register_forward_hook(lin_hook(name)))
    try:
        for b in _as_batches(batches):
            producer_of.clear()
            model(**b)
    finally:
        for h in hooks:
            h.remove()
    for name in names:
        parent, _, leaf = name.rpartition(".")
        up = MLP_PRODUCER.get(leaf)
        if name not in fed_by and up and f"{parent}.{up}" in mods:
            fed_by[name] = f"{parent}.{up}"
    return absmax, fed_by


def _as_batches(batches: Any) -> list[dict[str, torch.Tensor]]:
    if isinstance(batches, torch.Tensor):
        return [{"input_ids": batches[i : i + 1]} for i in range(len(batches))]
    return list(batches)


def _smooth(net: nn.Module, absmax: dict[str, torch.Tensor], fed_by: dict[str, str], alpha: float) -> dict[str, torch.Tensor]:
    """Fold SmoothQuant scales into each norm and its consumers; returns the smoothed input absmax."""
    from lowbit.modules.fold import apply_fold

    groups: dict[str, list[str]] = {}
    for lin, norm in fed_by.items():
        groups.setdefault(norm, []).append(lin)
    out = dict(absmax)
    for norm, lins in groups.items():
        mods = [net.get_submodule(n) for n in lins]
        act = absmax[lins[0]].clamp_min(1e-5)
        wmax = torch.stack([m.weight.detach().abs().amax(0) for m in mods]).amax(0).clamp_min(1e-5)
        s = (act.pow(alpha) / wmax.pow(1 - alpha)).clamp_min(1e-5)
        apply_fold(net.get_submodule(norm), mods, s)
        for n in lins:
            out[n] = absmax[n] / s
    return out


@torch.no_grad()
def _exact_folds(model: nn.Module, fed_by: dict[str, str], output: Any) -> dict[str, str]:
    """The producer -> consumers folds that leave the float model's output unchanged, each tried with
    random scales on the model itself and undone (the original tensors are put back)."""
    groups: dict[str, list[str]] = {}
    for lin, prod in fed_by.items():
        groups.setdefault(prod, []).append(lin)
    ref = output(model)
    keep: dict[str, str] = {}
    g = torch.Generator().manual_seed(0)
    for prod, lins in groups.items():
        p, cons = model.get_submodule(prod), [model.get_submodule(n) for n in lins]
        params = [t for t in (p.weight, getattr(p, "bias", None), *(c.weight for c in cons)) if t is not None]
        saved = [t.data for t in params]
        s = torch.rand(cons[0].in_features, generator=g) + 0.5
        p.weight.data = p.weight.data / (s[:, None] if isinstance(p, nn.Linear) else s)
        if getattr(p, "bias", None) is not None:
            p.bias.data = p.bias.data / s
        for c in cons:
            c.weight.data = c.weight.data * s
        got = output(model)
        for t, d in zip(params, saved):
            t.data = d
        if float((got - ref).norm() / ref.norm()) < 1e-4:
            keep.update({n: prod for n in lins})
    return keep


def _convert(net: nn.Module, names: list[str], absmax: dict[str, torch.Tensor], act: str) -> None:
    for n in names:
        lin = net.get_submodule(n)
        scale = float(absmax[n].max()) / QMAX if act == "static" else None
        replace_module(net, n, W8A8Linear(lin, act, scale))


def quantize_w8a8(model: ModelHandle | nn.Module | str, act: str = "dynamic", smooth: bool = True,
                  alpha: float | None = 0.5, calib: Any = "pydoc:calib", n_samples: int = 8,
                  seq_len: int = 512) -> tuple[ModelHandle, dict[str, Any]]:
    """A copy of ``model`` with every selected Linear (default: all but the head) in W8A8."""
    from lowbit.api import CalibSettings
    from lowbit.calib import load_corpus, token_windows

    if act not in ("dynamic", "static"):
        raise InputError(f"act={act!r}: choose dynamic (per token) or static (per tensor)")
    if alpha is not None and not 0 < alpha < 1:
        raise InputError(f"alpha={alpha}: the migration strength must be in (0, 1)")
    handle = load_model(model)
    if handle.tokenizer is None:
        raise InputError("W8A8 calibrates on text: the model needs its tokenizer")
    cal = calib if isinstance(calib, CalibSettings) else CalibSettings(data=calib, n_samples=n_samples, seq_len=seq_len)
    lm = handle.kind == CAUSAL_LM
    if lm:
        windows = token_windows(load_corpus(cal.data), handle.tokenizer, cal.n_samples, cal.seq_len, cal.seed)
        batches: Any = windows
        n_tokens = int(windows.numel())
        check = {"input_ids": windows[:1, :64]}
    else:  # an encoder: passages of the calibration text, 16 per batch, as the evaluator embeds them
        from lowbit.calib import sample_texts

        texts = sample_texts(load_corpus(cal.data), 16 * cal.n_samples, cal.seed)
        batches = [dict(handle.tokenizer(texts[i : i + 16], padding=True, truncation=True, max_length=128,
                                         return_tensors="pt")) for i in range(0, len(texts), 16)]
        n_tokens = int(sum(int(b["attention_mask"].sum()) for b in batches))
        check = batches[0]
    names, _ = selected_linears(handle, None, None)
    t0 = time.perf_counter()
    absmax, fed_by = _input_stats(handle.model, names, batches)
    report: dict[str, Any] = {"act": act, "smooth": smooth, "smoothed_layers": sorted(fed_by) if smooth else [],
                              "calibration_tokens": n_tokens}

    def output(net: nn.Module) -> torch.Tensor:
        out = net(**check)
        return out.logits if lm else out.last_hidden_state

    if smooth and not lm:  # post-norm encoders reuse a norm's output as the residual: keep only exact folds
        fed_by = _exact_folds(handle.model, fed_by, output)
        report["smoothed_layers"] = sorted(fed_by)
        if not fed_by:
            log.warning("%s: no norm output feeds only Linears (post-norm residuals), so no smoothing scale can be "
                        "folded exactly; W8A8 without smoothing", handle.name)

    @torch.no_grad()
    def build(a: float | None) -> nn.Module:
        net = copy.deepcopy(handle.model)
        stats = absmax
        if smooth:
            stats = _smooth(net, absmax, fed_by, a)
            ref, got = output(handle.model), output(net)
            err = float((got - ref).norm() / ref.norm())
            if err > 1e-3:  # folding is exact algebra; anything else means a wrong producer was found
                raise RuntimeError(f"smoothing changed the float model's output (relative error {err:.2e})")
        _convert(net, names, stats, act)
        return net.eval()

    if smooth and alpha is None:  # pick alpha by the error to the float model on calibration data
        kls = {}
        if lm:
            from lowbit.metrics.lm import window_logprobs

            probe = windows[0, :256]  # half a window: enough to rank the alphas, half the cost
            ref = window_logprobs(handle.model, probe)
            for a in ALPHAS:
                lp = window_logprobs(build(a), probe)
                kls[a] = float(F.kl_div(lp, ref, log_target=True, reduction="none").sum(-1).mean())
        else:  # 1 - cosine of the token states
            with torch.no_grad():
                ref = output(handle.model)
                for a in ALPHAS:
                    with QuantizedLinear.mode("dequant"):
                        got = output(build(a))
                    kls[a] = float(1 - F.cosine_similarity(got, ref, dim=-1).mean())
        alpha = min(kls, key=kls.get)
        report["alpha_search"] = kls
    report["alpha"] = alpha if smooth else None
    net = build(alpha)
    report["seconds"] = time.perf_counter() - t0
    report["engine"] = int8_engine()
    report["bits_per_weight"] = layer_bits(net, names)
    quant = quant_record({"method": "w8a8", "act": act, "smooth": smooth, "alpha": report["alpha"], "calib": cal.data},
                         net, names, [], handle, report["seconds"])
    return ModelHandle(model=net, tokenizer=handle.tokenizer, kind=handle.kind, name=handle.name, path=None,
                       quant=quant), report


def _candidate(act: str, smooth: bool) -> Any:
    def build(ref: ModelHandle, ctx: Any) -> Built:
        qh, rep = quantize_w8a8(ref, act, smooth, alpha=None if smooth else 0.5, calib=ctx.calib)
        return Built(qh, extra={"quantize_seconds": rep["seconds"], "alpha": rep["alpha"]})

    return build


for _act, _smooth_on, _default in (("dynamic", True, True), ("dynamic", False, False), ("static", True, False),
                                   ("static", False, False)):
    register_candidate(Candidate(f"w8a8-{_act}{'-smooth' if _smooth_on else ''}", "w8a8", 8,
                                 f"W8A8 int8, {_act} activations{', SmoothQuant' if _smooth_on else ''}", "w8a8-int8",
                                 _candidate(_act, _smooth_on), needs_calib=True, kinds=(CAUSAL_LM, ENCODER),
                                 config=f"w8a8:{_act}:{_smooth_on}", default=_default, plan_method="w8a8"))
