"""Producing the quantized layers: data-free (one pass over the selected layers) and block by block
through calibration (calib/capture.py), for methods that produce QuantizedTensors or their own layers."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import torch
from torch import nn

from lowbit.calib.capture import BlockStream, CaptureReport, run_sequential
from lowbit.calib.stats import LayerStats
from lowbit.methods.base import Method, MethodConfig, get_method, make_config
from lowbit.modules.qembedding import QuantizedEmbedding
from lowbit.modules.qlinear import QuantizedLinear
from lowbit.modules.swap import replace_module
from lowbit.progress import track
from lowbit.tensor import QuantizedTensor

log = logging.getLogger(__name__)
# Called for every new module: (name, module, the QuantizedTensor it holds or None) -> the module to install.
Record = Callable[[str, nn.Module, QuantizedTensor | None], nn.Module]


def off_device(entry: Method, mods: list[nn.Module]) -> torch.device | None:
    """The device (a GPU) ``mods`` are on when ``entry``'s math must run on the CPU instead; None: run it
    where they are."""
    dev = next((p.device for m in mods for p in m.parameters()), None)
    return dev if dev is not None and dev.type not in ("cpu", "meta") and not entry.on_device else None


def install(entry: Method, config: MethodConfig, mod: nn.Module,
            stats: LayerStats | None) -> tuple[nn.Module, QuantizedTensor | None]:
    """The module that replaces ``mod`` under ``entry`` (and its QuantizedTensor for integer grids)."""
    dev = off_device(entry, [mod])
    if dev is not None:  # the method's math on the CPU (mod is being replaced: moved in place)
        new, qt = install(entry, config, mod.to("cpu"), None if stats is None else stats.to("cpu"))
        return new.to(dev), qt
    if entry.produces == "layer":
        return entry.fn(mod, config, stats), None
    qt = entry.fn(mod.weight.data, config, stats)
    if isinstance(mod, nn.Embedding):
        return QuantizedEmbedding.from_embedding(mod, qt), qt
    return QuantizedLinear.from_linear(mod, qt), qt


def data_free(net: nn.Module, names: list[str], entry: Method, config: MethodConfig, record: Record,
              stats: dict[str, LayerStats] | None = None) -> None:
    """Quantize each named module on its own (statistics given per name, if any). Tied weights
    (embedding = lm_head) are quantized once and shared."""
    label = f"quantize {entry.name} {getattr(config, 'spec', '')}".rstrip()
    done: dict[int, nn.Module] = {}
    for name in track(names, label):
        mod = net.get_submodule(name)
        src = done.get(id(getattr(mod, "weight", None))) if entry.produces == "tensor" else None
        if src is None:
            new, qt = install(entry, config, mod, None if stats is None else stats.get(name))
            if entry.produces == "tensor":
                done[id(mod.weight)] = new
        else:
            qt = src.quantized_tensor()
            new = _shared(mod, src, qt)
        replace_module(net, name, record(name, new, qt))


def _shared(mod: nn.Module, src: nn.Module, qt: QuantizedTensor) -> nn.Module:
    """A module for ``mod`` that shares ``src``'s quantized buffers (a tied weight)."""
    new: nn.Module = (QuantizedEmbedding.from_embedding(mod, qt) if isinstance(mod, nn.Embedding)
                      else QuantizedLinear.from_linear(mod, qt))
    new.qweight, new.scale = src.qweight, src.scale
    if src.zero is not None:
        new.zero = src.zero
    return new


def sequential(net: nn.Module, windows: torch.Tensor, names: list[str], entry: Method, config: MethodConfig,
               record: Record, stream: BlockStream | None = None) -> CaptureReport:
    """Calibrate and quantize block by block ("true sequential": each block sees the blocks before it
    already quantized). Linears reading one input share its statistics, and row-independent methods
    quantize them stacked (one Hessian inverse for q/k/v). A group no calibration token reached gets RTN."""

    def quantize_group(group: list[str], lins: list[nn.Linear], stats: LayerStats) -> list[nn.Module]:
        dev = off_device(entry, lins)
        if dev is not None:  # the method's math on the CPU; the block goes on running on the device
            return [new.to(dev) for new in quantize_group(group, [m.to("cpu") for m in lins], stats.to("cpu"))]
        if stats.rows == 0:
            log.warning("%s: no calibration data reached it; quantized with RTN instead", ", ".join(group))
            rtn = get_method("rtn")
            qts = [rtn.fn(m.weight.data, make_config("rtn", config.spec), None) for m in lins]
        elif entry.produces == "tensor" and len(lins) > 1 and entry.row_independent and config.spec.group_size != 0:
            stacked = torch.cat([m.weight.data for m in lins])
            qts = entry.fn(stacked, config, stats).split_rows([m.out_features for m in lins])
        else:
            return [record(n, *install(entry, config, m, stats)) for n, m in zip(group, lins)]
        return [record(n, QuantizedLinear.from_linear(m, qt), qt) for n, m, qt in zip(group, lins, qts)]

    transform = None
    if entry.transform is not None:
        assert entry.transform.scope == "block", entry.transform
        transform = functools.partial(entry.transform.fn, cfg=config)
    return run_sequential(net, windows, {n: net.get_submodule(n) for n in names}, entry.needs, quantize_group,
                          block_transform=transform, stream=stream)

