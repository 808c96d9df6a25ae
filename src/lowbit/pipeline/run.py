"""One pipeline for every method: select -> check -> calibrate -> transform -> quantize -> record.

    handle, report = quantize("smollm2", make_config("gptq", QuantSpec(4, True, 64)), calib="pydoc:calib")

The method's registry entry (methods/base.py) chooses the path: no statistics (RTN, HQQ, NF4/FP4,
LLM.int8, GGUF, QAT's convert: one pass over the layers), statistics gathered block by block on the
partly quantized model (GPTQ, AWQ with its block-scope folds), or statistics of the float model and a
model-scope transform (W8A8 with SmoothQuant).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lowbit.calib.cost import PeakRSS
from lowbit.calib.settings import CalibSettings
from lowbit.errors import InputError
from lowbit.loaders import ModelHandle, load_model
from lowbit.methods.base import Method, MethodConfig, get_method, make_config
from lowbit.modules.select import select_modules
from lowbit.pipeline.data import CalibData, as_settings, calibration_data, describe
from lowbit.pipeline.layers import data_free, sequential
from lowbit.pipeline.model_scope import float_calibrated
from lowbit.pipeline.report import CalibrationCost, QuantizeReport
from lowbit.tensor import QuantizedTensor

log = logging.getLogger(__name__)


def quantize(
    model: ModelHandle | nn.Module | str,
    config: MethodConfig | None = None,
    *,
    calib: CalibSettings | str | None = None,
    targets: Sequence[str] | None = None,
    ignore: Sequence[str] | None = None,
    embeddings: bool = False,
    inplace: bool = False,
    prerounding: dict[str, torch.Tensor] | None = None,
) -> tuple[ModelHandle, QuantizeReport]:
    """Quantize the selected layers of ``model`` with ``config`` (default: RTN int4 g64 sym).

    ``calib`` gives the calibration data for methods that need it (GPTQ, AWQ, W8A8); a string is a data
    argument with the default sizes (16 x 512 tokens). ``targets`` / ``ignore`` are regexes over module
    names (default: every Linear but the output head); ``embeddings=True`` quantizes ``nn.Embedding``
    tables too (data-free RTN on the method's spec, integer-grid methods only). A ``prerounding`` dict is
    filled with the float weights each layer's codes were rounded from, where the method changes them
    first (GPTQ): quantization-aware training starts there.

    Returns a new handle (the input is left untouched unless ``inplace``) and the run's report.
    """
    handle = load_model(model)
    config = config or make_config()
    entry = get_method(config.method)
    settings = as_settings(calib)
    if entry.needs and settings is None:
        raise InputError(f"method {entry.name!r} needs calibration data (--calib), for its {', '.join(entry.needs)}")
    order, skipped = select_layers(handle, entry, config, targets, ignore, embeddings)
    data = calibration_data(handle, settings) if entry.needs else None
    net = handle.model if inplace else copy.deepcopy(handle.model)
    layers: dict[str, Any] = {}
    sizes = [0, 0]

    def record(name: str, mod: nn.Module, qt: QuantizedTensor | None) -> nn.Module:
        if prerounding is not None and qt is not None and qt.prerounding is not None:
            prerounding[name] = qt.prerounding
        layers[name] = mod.record()  # every quantized module describes itself; loaders/checkpoint.py rebuilds it
        grid = qt if qt is not None or not hasattr(mod, "quantized_tensor") else mod.quantized_tensor()
        sizes[0] += grid.numel if grid is not None else mod.in_features * mod.out_features
        sizes[1] += grid.nbytes if grid is not None else mod.quant_nbytes
        return mod

    with PeakRSS() as cost:
        cal, details = _run(net, order, entry, config, data, record)
    calibration = CalibrationCost(**cal, seconds=round(cost.seconds, 3), peak_rss_bytes=cost.peak)
    quant = {"method": config.to_dict(), "layers": dict(sorted(layers.items(), key=lambda kv: order.index(kv[0]))),
             "skipped": skipped, "source": handle.reference_name or handle.name,
             "quantize_seconds": round(cost.seconds, 3), "calibration": calibration.to_dict()}
    if details:
        quant["details"] = details
    out = ModelHandle(model=net.eval(), tokenizer=handle.tokenizer, kind=handle.kind, name=handle.name, quant=quant)
    report = QuantizeReport(entry.name, config, list(quant["layers"]), skipped, cost.seconds, sizes[0], sizes[1],
                            calibration, details)
    log.info("quantized %d layers (%d skipped) in %.1f s, %.3f bpw", len(layers), len(skipped), cost.seconds,
             report.bits_per_weight)
    return out, report


def select_layers(handle: ModelHandle, entry: Method, config: MethodConfig, targets: Sequence[str] | None,
            ignore: Sequence[str] | None, embeddings: bool) -> tuple[list[str], list[str]]:
    """The names of the modules to quantize, in model order, and those kept; every shape is checked
    against the method before any work."""
    targets = [targets] if isinstance(targets, str) else targets
    ignore = [ignore] if isinstance(ignore, str) else ignore
    if entry.selects is not None:
        names = [n for n, m in handle.model.named_modules() if entry.selects(m)]
        if not names:
            raise InputError(f"{handle.name} has no layer method {entry.name!r} applies to")
        return names, []
    if embeddings and entry.produces != "tensor":
        raise InputError(f"--embeddings: method {entry.name!r} quantizes Linear layers only")
    selected, skipped = select_modules(handle.model, targets, ignore, embeddings)
    if not selected:  # (an embedding table alone, with embeddings=True, is a selection)
        all_linear = [n for n, m in handle.model.named_modules() if isinstance(m, nn.Linear)]
        if not all_linear:
            raise InputError(f"{handle.name} has no nn.Linear layer: nothing lowbit can quantize")
        raise InputError(f"targets {list(targets or [])} / ignore {list(ignore) if ignore is not None else 'default'} match "
                         f"none of the {len(all_linear)} Linear layers (e.g. {all_linear[0]}); nothing to quantize")
    for name, mod in selected.items():
        config.check_layer(tuple(mod.weight.shape), name)
    return list(selected), skipped


def _run(net: nn.Module, order: list[str], entry: Method, config: MethodConfig, data: CalibData | None,
         record: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Produce every layer; returns what calibration saw and the method's findings."""
    if data is None:
        data_free(net, order, entry, config, record)
        return describe(None), {}
    linears = [n for n in order if isinstance(net.get_submodule(n), nn.Linear)]
    others = [n for n in order if n not in linears]
    if entry.calibration == "float":
        details = float_calibrated(net, linears, entry, config, data, record)
        cal = dict(describe(data), schedule="float")
    else:
        cap = sequential(net, data.windows, linears, entry, config, record)
        cal = {"data": data.settings.data, "samples": cap.samples, "tokens": cap.tokens, "schedule": cap.schedule,
               "unreached": cap.unreached}
        details = {}
    if others:  # embeddings: always data-free, with RTN on the method's spec
        data_free(net, others, get_method("rtn"), make_config("rtn", config.spec), record)
    return cal, details
