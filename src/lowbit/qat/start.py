"""``prepare``: a copy of the model whose selected Linear and Conv2d layers are fake-quantized, starting
exactly at a PTQ result (RTN, or GPTQ with its error-compensated weights as the latent weights)."""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lowbit.errors import InputError
from lowbit.loaders import ModelHandle, load_model
from lowbit.loaders.handle import CAUSAL_LM
from lowbit.methods.qat import QATSpec, parse_spec, roundtrip
from lowbit.modules.fake_quant import ActQuantizer, FakeQuantConv2d, FakeQuantLinear, IntQuantizer
from lowbit.modules.select import select_modules
from lowbit.modules.swap import replace_module
from lowbit.tensor import QuantizedTensor

STARTS = ("rtn", "gptq")


def fake_quant_layers(net: nn.Module) -> dict[str, nn.Module]:
    """name -> every fake-quantized layer of ``net``, in model order."""
    return {n: m for n, m in net.named_modules() if isinstance(m, FakeQuantLinear | FakeQuantConv2d)}


def _targets(net: nn.Module, targets: Sequence[str] | None, ignore: Sequence[str] | None) -> tuple[list[str], list[str]]:
    selected, skipped = select_modules(net, targets, ignore, False)
    names = [n for n, m in selected.items() if isinstance(m, nn.Linear)]
    names += [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    if not names:
        raise InputError("no nn.Linear or nn.Conv2d layer selected: nothing to train")
    return names, skipped


def _ptq_start(handle: ModelHandle, qs: QATSpec, names: list[str], start: str, calib: Any) -> dict[str, QuantizedTensor]:
    """name -> QuantizedTensor of the PTQ model training starts from (GPTQ's carry the weights they
    were rounded from, ``prerounding``)."""
    from lowbit.methods.rtn import RTNConfig, rtn

    if start == "gptq":
        if handle.kind != CAUSAL_LM:
            raise InputError("--start gptq needs a causal LM and calibration text; use --start rtn")
        from lowbit.methods import make_config
        from lowbit.pipeline import quantize

        linears = [n for n in names if isinstance(handle.model.get_submodule(n), nn.Linear)]
        pre: dict[str, torch.Tensor] = {}
        q, _ = quantize(handle, make_config("gptq", qs.spec), calib=calib or "pydoc:calib", targets=[
            "^" + re.escape(n) + "$" for n in linears], ignore=[], prerounding=pre)
        out = {n: q.model.get_submodule(n).quantized_tensor() for n in linears}
        for n in linears:
            out[n].prerounding = pre[n]
        for n in names:
            if n not in out:  # convolutions: GPTQ is for Linear layers here
                out[n] = rtn(handle.model.get_submodule(n).weight.data, RTNConfig(spec=qs.spec))
        return out
    return {n: rtn(handle.model.get_submodule(n).weight.data, RTNConfig(spec=qs.spec)) for n in names}


def prepare(model: ModelHandle | nn.Module | str, spec: str | QATSpec, *, start: str = "rtn", lsq: bool = False,
            act: bool = False, calib: Any = None, targets: Sequence[str] | None = None,
            ignore: Sequence[str] | None = None) -> ModelHandle:
    """A copy of ``model`` with its selected Linear and Conv2d layers fake-quantized to ``spec``.

    ``start``: the PTQ result the integer grid starts from ("rtn", or "gptq" with ``calib`` text);
    the latent weights start at the float weights for RTN and at the error-compensated weights GPTQ
    rounded for GPTQ, so the prepared model's forward equals that PTQ model's and every latent weight
    sits where its PTQ rounding left it inside its bin. ``lsq`` learns the scales too. ``act``
    fake-quantizes the layers' inputs to int8 per token (implied by the ``w8a8`` spec).

    The returned handle carries the QAT record (``qat``: spec, start, layers, skipped...) and the
    float model as ``teacher`` for distillation.

    >>> p = prepare("smollm2", "int3-asym-g64", start="gptq", calib="pydoc:calib")  # doctest: +SKIP
    """
    handle = load_model(model)
    qs = parse_spec(spec) if isinstance(spec, str) else spec
    if start not in STARTS:
        raise InputError(f"--start {start!r}: choose one of {', '.join(STARTS)}")
    if qs.kind != "int" and (start != "rtn" or lsq):
        raise InputError(f"{qs.text}: --start gptq and --lsq need an integer spec (int<bits>-...)")
    names, skipped = _targets(handle.model, targets, ignore)
    for n in names:
        w = handle.model.get_submodule(n).weight
        if qs.spec is not None:
            qs.spec.block_len(tuple(w.shape), n)
    starts = _ptq_start(handle, qs, names, start, calib) if qs.kind == "int" else {}
    net = copy.deepcopy(handle.model)
    for n in names:
        mod = net.get_submodule(n)
        if qs.kind == "int":
            qt = starts[n]
            wq: nn.Module = IntQuantizer(qs.spec, qt, lsq)
            latent = qt.prerounding  # GPTQ: the error-compensated weights it rounded; RTN: the float weights
        else:
            wq, latent = roundtrip(qs, tuple(mod.weight.shape)), None
        aq = ActQuantizer() if (act or qs.kind == "w8a8") else None
        cls = FakeQuantConv2d if isinstance(mod, nn.Conv2d) else FakeQuantLinear
        replace_module(net, n, cls(mod, wq, aq, latent))
    rec = {"spec": qs.text, "start": start, "lsq": lsq, "act": bool(act or qs.kind == "w8a8"), "layers": names,
           "skipped": skipped}
    return ModelHandle(model=net, tokenizer=handle.tokenizer, kind=handle.kind, name=handle.name, path=handle.path,
                       quant=None, qat=rec, teacher=handle)
