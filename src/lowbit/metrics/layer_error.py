"""Per-layer weight error: how far each quantized weight moved from the float one it replaced.

    errs = layer_errors(reference.model, quantized.model)   # {"model.layers.0.mlp.down_proj": 0.031, ...}

A model-level score (KL, PPL) says how much a quantized model changed; this says where. Any module
that replaces an ``nn.Linear`` under the same name is compared: a ``dequantize(dtype)`` method (lowbit's
quantized and runtime layers) gives its weight, else its ``weight`` attribute (fake-quantized layers).
"""

from __future__ import annotations

import torch
from torch import nn


def layer_errors(ref: nn.Module, cand: nn.Module) -> dict[str, float]:
    """Relative Frobenius error of every quantized weight, ``||W - Wq|| / ||W||``, by layer name, in the
    reference's module order. Layers whose weight is missing, reshaped, or left exactly in float (e.g.
    the output head) are skipped."""
    out = {}
    qmods = dict(cand.named_modules())
    for name, m in ref.named_modules():
        if not isinstance(m, nn.Linear) or name not in qmods:
            continue
        q = qmods[name]
        wq = q.dequantize(torch.float32) if hasattr(q, "dequantize") else getattr(q, "weight", None)
        if wq is None or wq.shape != m.weight.shape:
            continue
        w = m.weight.detach().float()
        wq = wq.detach()
        if torch.equal(wq, w):
            continue  # left in float (e.g. the output head)
        out[name] = float((wq.float() - w).norm() / w.norm().clamp_min(1e-12))
    return out


@torch.inference_mode()
def layer_outputs(model: nn.Module, names: list[str], ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """The output of each module in ``names`` when ``model`` runs on token ids ``ids`` (1, L)."""
    mods = dict(model.named_modules())
    got: dict[str, torch.Tensor] = {}
    hooks = [mods[n].register_forward_hook(lambda _m, _a, y, n=n: got.__setitem__(n, y.detach().float().clone()))
             for n in names if n in mods]
    try:
        from lowbit.modules.kernel_mode import kernel_mode

        with kernel_mode(model, "dequant"):
            model(input_ids=ids)
    finally:
        for h in hooks:
            h.remove()
    return got


def output_errors(ref_outputs: dict[str, torch.Tensor], cand: nn.Module, ids: torch.Tensor) -> dict[str, float]:
    """Relative error of each layer's output in the candidate's own forward pass against the reference's,
    ``||y_q - y|| / ||y||`` on the same tokens: what the layer computes, so a method that rescales weights
    on purpose (AWQ, SmoothQuant fold a scale into the previous op) is scored by its outputs, not by how
    far its weights moved. Error from earlier layers is included, as in the model itself."""
    got = layer_outputs(cand, list(ref_outputs), ids)
    return {n: float((got[n] - y).norm() / y.norm().clamp_min(1e-12)) for n, y in ref_outputs.items()
            if n in got and got[n].shape == y.shape}
