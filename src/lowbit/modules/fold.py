"""Fold per-input-channel scales into the operation that produces a Linear's input, found generically.

AWQ and SmoothQuant rescale a Linear's input channels: ``W x = (W diag(s)) (diag(s)^-1 x)``. The
``diag(s)^-1`` must be absorbed by whatever produces ``x``: a norm's weight (and bias), or a
preceding Linear's output rows. Which module that is comes from the model, not from a table: for a
group of Linears reading one input, every norm or Linear of the block whose output width matches is
tried by *applying* the fold with random scales to a copy of the block and checking that the block's
output is unchanged on a few tokens. Only a fold that provably preserves the function is used; a group
with none (e.g. o_proj under grouped-query attention, where v_proj's rows repeat across heads) is
reported and left unscaled.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from lowbit.modules.swap import page_out

log = logging.getLogger(__name__)


def _out_width(mod: nn.Module) -> int | None:
    w = getattr(mod, "weight", None)
    if not isinstance(w, torch.Tensor):
        return None
    if isinstance(mod, nn.Linear):
        return mod.out_features
    if w.dim() == 1:  # LayerNorm / RMSNorm-like: elementwise weight over the last dim
        return w.shape[0]
    return None


@torch.no_grad()
def apply_fold(producer: nn.Module, consumers: list[nn.Linear], s: torch.Tensor) -> None:
    """producer's output channel c /= s[c]; consumers' input column c *= s[c].

    Out of place: writing into a weight memory-mapped from a checkpoint would copy its pages into
    private memory that outlives the layer (see modules/swap.py); the old pages are handed back."""

    def scale(p: nn.Parameter, by: torch.Tensor, divide: bool) -> None:
        old = p.data
        by = by.to(old.device, old.dtype)
        p.data = old / by if divide else old * by
        page_out(old)

    scale(producer.weight, s.unsqueeze(1) if isinstance(producer, nn.Linear) else s, divide=True)
    if getattr(producer, "bias", None) is not None:
        scale(producer.bias, s, divide=True)
    for lin in consumers:
        scale(lin.weight, s.unsqueeze(0), divide=False)


def _output(block: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
    out = block(*args, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def find_fold_targets(block: nn.Module, args: tuple, kwargs: dict, groups: list[list[str]]) -> dict[str, str | None]:
    """For each group (names relative to ``block``), the name of the module to fold scales into, or None."""
    base = _output(block, args, kwargs)
    mods = dict(block.named_modules())
    gen = torch.Generator().manual_seed(0)
    found: dict[str, str | None] = {}
    for group in groups:
        width = mods[group[0]].in_features
        found[group[0]] = None
        for pname, pmod in mods.items():
            if pname in group or _out_width(pmod) != width:
                continue
            trial = copy.deepcopy(block)
            tmods = dict(trial.named_modules())
            s = torch.rand(width, generator=gen) * 1.5 + 0.5  # apply_fold moves it where the weights are
            apply_fold(tmods[pname], [tmods[n] for n in group], s)
            out = _output(trial, args, kwargs)
            if torch.allclose(out, base, rtol=1e-3, atol=1e-4 * float(base.abs().max())):
                found[group[0]] = pname
                break
        if found[group[0]] is None:
            log.info("no fold target for %s: its inputs keep their scale", ", ".join(group))
    return found
