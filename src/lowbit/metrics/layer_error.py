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
