"""Methods calibrated on the float model (``calibration="float"``: SmoothQuant's channel maxima), with a
model-scope transform: statistics from one pass of the float model, function-preserving folds found
from the module tree, then the method's transform (e.g. SmoothQuant's alpha search and folds), then
the layers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.calib.capture import find_blocks, shared_input_groups
from lowbit.calib.stats import LayerStats, gather
from lowbit.methods.base import Method, MethodConfig
from lowbit.modules.fold import find_fold_targets
from lowbit.modules.kernel_mode import kernel_mode
from lowbit.pipeline.data import CalibData
from lowbit.pipeline.layers import Record, data_free

PROBE_TOKENS = 256  # half a window: enough to rank a transform's settings, half the cost


@dataclass
class ModelContext:
    """What a model-scope transform gets: the model (changed in place), each layer's statistics, the
    function-preserving folds (producer, consumers), and ways to measure a candidate model."""

    model: nn.Module
    stats: dict[str, LayerStats]
    folds: list[tuple[str, list[str]]]
    width: int  # the residual stream's width (a block's input)
    entry: Method
    config: MethodConfig
    data: CalibData
    _reference: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def _output(self, model: nn.Module) -> torch.Tensor:
        out = model(**self.data.check)
        return out.logits if self.data.lm else out.last_hidden_state

    @torch.no_grad()
    def output_error(self, model: nn.Module) -> float:
        """Relative error of ``model``'s float output to the untransformed model's, on the check batch."""
        ref = self._reference["check"]
        got = self._output(model)
        return float((got - ref).norm() / ref.norm())

    @torch.no_grad()
    def score(self, qmodel: nn.Module) -> float:
        """Distance of a quantized candidate to the float model in exact arithmetic: mean KL of the
        next-token distributions on a probe (causal LMs), 1 - mean cosine of the token states (encoders)."""
        from lowbit.metrics.lm import window_logprobs

        if self.data.lm:
            lp = window_logprobs(qmodel, self.data.windows[0, :PROBE_TOKENS])
            ref = self._reference["probe"]
            return float(F.kl_div(lp, ref, log_target=True, reduction="none").sum(-1).mean())
        with kernel_mode(qmodel, "dequant"):
            got = self._output(qmodel)
        return float(1 - F.cosine_similarity(got, self._reference["check"], dim=-1).mean())

    def quantized(self, model: nn.Module, stats: dict[str, LayerStats]) -> nn.Module:
        """``model`` (changed in place) with its layers produced from ``stats``."""
        data_free(model, list(self.stats), self.entry, self.config, lambda n, m, qt: m, stats)
        return model.eval()

    @torch.no_grad()
    def remember_reference(self) -> None:
        from lowbit.metrics.lm import window_logprobs

        self._reference["check"] = self._output(self.model)
        if self.data.lm:
            self._reference["probe"] = window_logprobs(self.model, self.data.windows[0, :PROBE_TOKENS])


def folds_of(model: nn.Module, names: list[str], windows: torch.Tensor) -> tuple[list[tuple[str, list[str]]], int]:
    """(producer, consumers) for every group of selected Linears that read one input and whose input
    channels can be rescaled exactly (modules/fold.py), block by block in forward order; and the width
    of a block's input."""
    prefix, blocks = find_blocks(model)
    probe: list[tuple[tuple, dict]] = []
    shared = shared_input_groups(model, blocks, windows, probe)
    targets = find_fold_targets(blocks[0], *probe[0], shared)
    chosen = set(names)
    out = []
    for i in range(len(blocks)):
        head = f"{prefix}.{i}." if prefix else f"{i}."
        for group in shared:
            producer = targets.get(group[0])
            consumers = [head + n for n in group if head + n in chosen]
            if producer is not None and consumers:
                out.append((head + producer, consumers))
    return out, int(probe[0][0][0].shape[-1])


def float_calibrated(net: nn.Module, names: list[str], entry: Method, config: MethodConfig, data: CalibData,
                     record: Record) -> dict[str, Any]:
    """Statistics of the float model, the method's model-scope transform, then its layers."""
    accs = gather(net, {n: net.get_submodule(n) for n in names}, entry.needs, data.batches)
    stats = {n: accs[n].stats() for n in names}
    details: dict[str, Any] = {}
    if entry.transform is not None:
        assert entry.transform.scope == "model", entry.transform
        ctx = ModelContext(net, stats, *folds_of(net, names, data.windows), entry, config, data)
        ctx.remember_reference()
        stats, details = entry.transform.fn(ctx, config)
    data_free(net, names, entry, config, record, stats)
    return details

