"""``convert``: a trained QAT model with real quantized layers, through the pipeline like every method
(methods/qat.py's "qat" turns each fake-quantized layer into the module PTQ makes for its spec)."""

from __future__ import annotations

from typing import Any

import torch

from lowbit.errors import InputError
from lowbit.loaders import ModelHandle
from lowbit.methods.qat import QATConfig, QATSpec, parse_spec

#: what the method record keeps of the QAT record: how the model was prepared and trained
TRAINING_FIELDS = ("start", "lsq", "act", "steps", "lr", "distill", "train_seconds", "data")


def method_record(config: dict[str, Any], qs: QATSpec, rec: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's method record of a converted model: the config's record (its spec string as
    ``qat_spec``), the training fields, and ``spec`` the integer grid (its QuantSpec dict) when there is
    one, as every integer-grid method records it."""
    method = dict(config)
    method.update(qat_spec=qs.text, **{k: rec[k] for k in TRAINING_FIELDS if k in rec})
    if qs.spec is not None:
        method["spec"] = qs.spec.to_dict()
    return method


@torch.no_grad()
def convert(handle: ModelHandle) -> ModelHandle:
    """The trained model with real quantized layers, as PTQ makes them (``handle.quant`` records them
    for save / export). Its logits equal the fake-quantized model's to float tolerance. ``handle`` is
    left as it is: training can go on, and convert again.

    >>> q = convert(p)  # p from prepare(...), trained with train(...)   # doctest: +SKIP
    """
    from lowbit.pipeline import quantize

    rec = handle.qat
    if rec is None:
        raise InputError(f"{handle.name} was not prepared for QAT (lowbit.qat.prepare)")
    qs = parse_spec(rec["spec"])
    out, _ = quantize(handle, QATConfig(qat_spec=rec["spec"]))
    for p in out.model.parameters():
        p.requires_grad_(False)
    quant = dict(out.quant)
    quant.update(method=method_record(quant["method"], qs, rec), skipped=list(rec["skipped"]), source=handle.name,
                 quantize_seconds=round(rec.get("train_seconds", 0.0), 3))
    out.quant, out.qat = quant, rec
    return out
