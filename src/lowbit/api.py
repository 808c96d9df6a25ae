"""The verbs: load, quantize, evaluate, save. Orchestration only; the math lives in methods/."""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.calib.capture import run_sequential
from lowbit.calib.cost import PeakRSS
from lowbit.errors import InputError
from lowbit.writers.checkpoint import record_for, save_checkpoint
from lowbit.loaders import ModelHandle, load_model
from lowbit.methods import get_method
from lowbit.methods.base import MethodConfig
from lowbit.modules.qembedding import QuantizedEmbedding
from lowbit.modules.qlinear import QuantizedLinear
from lowbit.modules.select import select_modules
from lowbit.modules.swap import replace_module
from lowbit.progress import track
from lowbit.spec import QuantSpec

log = logging.getLogger(__name__)


@dataclass
class QuantizeReport:
    method: str
    spec: QuantSpec
    layers: list[str]
    skipped: list[str]
    seconds: float
    quantized_params: int
    quantized_bytes: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.quantized_bytes / max(self.quantized_params, 1)


def make_config(method: str = "rtn", spec: QuantSpec | None = None, **options: Any) -> MethodConfig:
    entry = get_method(method)
    try:
        return entry.config(spec=spec or QuantSpec(), **options)
    except TypeError as e:
        raise InputError(f"method {method!r} does not take these options: {e}") from None


@dataclass(frozen=True)
class CalibSettings:
    """Calibration data for methods that need it: ``n_samples`` windows of ``seq_len`` tokens."""

    data: str = "pydoc:calib"
    n_samples: int = 16
    seq_len: int = 512
    seed: int = 0


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
    """Quantize the selected Linear layers of ``model`` with ``config`` (default: RTN int4 g64 sym).

    ``calib`` gives the calibration data for methods that need it (GPTQ, AWQ); a string is a data
    argument with the default sizes (16 x 512 tokens). ``targets`` / ``ignore`` are regexes over
    module names (default: every Linear but the output head); ``embeddings=True`` quantizes
    ``nn.Embedding`` tables too (always data-free, with RTN, for calibrated methods). A ``prerounding``
    dict is filled with the float weights each layer's codes were rounded from, where the method
    changes them first (GPTQ): quantization-aware training starts there.

    Returns a new handle (the input is left untouched unless ``inplace``) and a report whose
    ``extra["calibration"]`` holds the cost: seconds, samples, tokens, peak RSS.

    >>> qh, rep = quantize("smollm2", make_config("gptq", QuantSpec(4, True, 64)), calib="pydoc:calib")  # doctest: +SKIP
    """
    handle = load_model(model)
    targets = [targets] if isinstance(targets, str) else targets
    ignore = [ignore] if isinstance(ignore, str) else ignore
    config = config or make_config()
    entry = get_method(config.method)
    if isinstance(calib, str):
        calib = CalibSettings(data=calib)
    if entry.needs and calib is None:
        raise InputError(f"method {entry.name!r} needs calibration data (--calib), for its {', '.join(entry.needs)}")
    selected, skipped = select_modules(handle.model, targets, ignore, embeddings)
    if not any(isinstance(m, nn.Linear) for m in selected.values()):
        all_linear = [n for n, m in handle.model.named_modules() if isinstance(m, nn.Linear)]
        if not all_linear:
            raise InputError(f"{handle.name} has no nn.Linear layer: nothing lowbit can quantize")
        raise InputError(f"targets {list(targets or [])} / ignore {list(ignore) if ignore is not None else 'default'} match "
                         f"none of the {len(all_linear)} Linear layers (e.g. {all_linear[0]}); nothing to quantize")
    for name, mod in selected.items():  # check every shape before doing any work
        config.spec.block_len(tuple(mod.weight.shape), name)
    windows = None
    if entry.needs:
        from lowbit.calib import load_corpus, token_windows

        windows = token_windows(load_corpus(calib.data), handle.tokenizer, calib.n_samples, calib.seq_len, calib.seed)
    net = handle.model if inplace else copy.deepcopy(handle.model)
    # Names only from here on: a reference to a replaced float layer would keep its weight alive.
    order = list(selected)
    linear_names = [n for n, m in selected.items() if isinstance(m, nn.Linear)]
    del selected
    layers: dict[str, Any] = {}
    sizes = [0, 0]

    def record(name: str, qmod: nn.Module, qt: Any) -> nn.Module:
        if prerounding is not None and qt.prerounding is not None:
            prerounding[name] = qt.prerounding
        kind = "embedding" if isinstance(qmod, QuantizedEmbedding) else "linear"
        layers[name] = {"spec": qt.spec.to_dict(), "shape": list(qt.shape), "format": "intpack", "module": kind}
        sizes[0] += qt.numel
        sizes[1] += qt.nbytes
        return qmod

    with PeakRSS() as cost:
        if entry.needs:
            others = [n for n in order if n not in linear_names]

            def quantize_group(names: list[str], lins: list[nn.Linear], stats: dict) -> list[nn.Module]:
                if int(stats.get("rows", 0)) == 0:
                    log.warning("%s: no calibration data reached it; quantized with RTN instead", ", ".join(names))
                    qts = [get_method("rtn").fn(m.weight.data, make_config("rtn", config.spec), None) for m in lins]
                elif len(lins) > 1 and entry.row_independent and config.spec.group_size != 0:
                    # Linears reading one input share its statistics: quantize them stacked, then split
                    stacked = torch.cat([m.weight.data for m in lins])
                    qts = entry.fn(stacked, config, stats).split_rows([m.out_features for m in lins])
                else:
                    qts = [entry.fn(m.weight.data, config, stats) for m in lins]
                return [record(n, QuantizedLinear.from_linear(m, qt), qt) for n, m, qt in zip(names, lins, qts)]

            transform = None
            if entry.block_transform is not None:
                transform = functools.partial(entry.block_transform, cfg=config)
            cap = run_sequential(net, windows, {n: net.get_submodule(n) for n in linear_names}, entry.needs,
                                 quantize_group, block_transform=transform)
            extra_cal = {"samples": cap.samples, "tokens": cap.tokens, "schedule": cap.schedule,
                         "unreached": cap.unreached, "data": calib.data}
            _quantize_data_free(net, others, make_config("rtn", config.spec), record)
        else:
            _quantize_data_free(net, order, config, record)
            extra_cal = {"samples": 0, "tokens": 0}
    seconds = cost.seconds
    calibration = dict(extra_cal, seconds=round(seconds, 3), peak_rss_bytes=cost.peak)
    quant = record_for(config, dict(sorted(layers.items(), key=lambda kv: order.index(kv[0]))), skipped,
                       handle.reference_name or handle.name, seconds)
    quant["calibration"] = calibration
    out = ModelHandle(model=net.eval(), tokenizer=handle.tokenizer, kind=handle.kind, name=handle.name, path=None,
                      quant=quant)
    report = QuantizeReport(entry.name, config.spec, list(quant["layers"]), skipped, seconds, sizes[0], sizes[1],
                            extra={"calibration": calibration})
    log.info("quantized %d layers (%d skipped) in %.1f s, %.3f bpw", len(layers), len(skipped), seconds,
             report.bits_per_weight)
    return out, report


def _quantize_data_free(net: nn.Module, names: list[str], config: MethodConfig, record: Any) -> None:
    entry = get_method(config.method)
    done: dict[int, nn.Module] = {}  # tied weights (embedding = lm_head) are quantized once and shared
    for name in track(names, f"quantize {entry.name} {config.spec}"):
        mod = net.get_submodule(name)
        src = done.get(id(mod.weight))
        qt = src.quantized_tensor() if src is not None else entry.fn(mod.weight.data, config, None)
        if isinstance(mod, nn.Embedding):
            new: nn.Module = QuantizedEmbedding.from_embedding(mod, qt)
        else:
            new = QuantizedLinear.from_linear(mod, qt)
        if src is None:
            done[id(mod.weight)] = new
        else:
            new.qweight, new.scale = src.qweight, src.scale
            if src.zero is not None:
                new.zero = src.zero
        replace_module(net, name, record(name, new, qt))


def save(handle: ModelHandle, out: str | Path, overwrite: bool = False) -> Path:
    """Write a quantized model as a lowbit checkpoint (safetensors + config), atomically."""
    return save_checkpoint(handle, out, overwrite=overwrite)


EXPORT_FORMATS = ("compressed-tensors", "gguf", "bitsandbytes")


def export(handle: ModelHandle, out: str | Path, fmt: str = "compressed-tensors", overwrite: bool = False,
           **gguf_options: Any) -> Path:
    """Write a model in a format another runtime executes (atomically).

    ``compressed-tensors``: the ``pack-quantized`` checkpoint llm-compressor writes from a lowbit
    quantized model; transformers (with the ``compressed-tensors`` package) and vLLM load it.
    ``gguf``: a llama.cpp file from any Llama-architecture model, in a GGML type or mix
    (``gguf_type="Q4_K_M"``), optionally with ``imatrix`` (GGUF name -> per-column weights) and
    ``tensor_types`` (``["REGEX=TYPE", ...]``); see writers/gguf.py.
    ``bitsandbytes``: an NF4/FP4 model as the checkpoint transformers + bitsandbytes load; see writers/bnb.py.
    """
    if fmt == "compressed-tensors":
        from lowbit.writers.compressed_tensors import export_compressed_tensors

        return export_compressed_tensors(handle, out, overwrite=overwrite)
    if fmt == "gguf":
        from lowbit.writers.gguf import export_gguf

        opts = dict(gguf_options)
        mix = opts.pop("gguf_type", "Q8_0")
        return Path(export_gguf(handle, out, mix, overwrite=overwrite, **opts)["path"])
    if fmt == "bitsandbytes":
        from lowbit.writers.bnb import export_bnb

        return export_bnb(handle, out, overwrite=overwrite)
    raise InputError(f"unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}")
