"""The verbs: load, quantize, evaluate, save. Orchestration only; the math lives in methods/."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from lowbit.errors import InputError
from lowbit.export.checkpoint import _set_submodule, record_for, save_checkpoint
from lowbit.load import ModelHandle, load_model
from lowbit.methods import get_method
from lowbit.methods.base import MethodConfig
from lowbit.modules.qlinear import QuantizedLinear
from lowbit.modules.qembedding import QuantizedEmbedding
from lowbit.modules.select import select_modules
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


def quantize(
    model: ModelHandle | nn.Module | str,
    config: MethodConfig | None = None,
    *,
    targets: Sequence[str] | None = None,
    ignore: Sequence[str] | None = None,
    embeddings: bool = False,
    inplace: bool = False,
) -> tuple[ModelHandle, QuantizeReport]:
    """Quantize the selected Linear layers of ``model`` with ``config`` (default: RTN int4 g64 sym).

    ``targets`` / ``ignore`` are regexes over module names (default: every Linear but the output head);
    ``embeddings=True`` quantizes ``nn.Embedding`` tables too.

    Returns a new handle (the input is left untouched unless ``inplace``) and a report.

    >>> qh, rep = quantize("smollm2", make_config("rtn", QuantSpec(4, True, 64)))  # doctest: +SKIP
    """
    handle = load_model(model)
    targets = [targets] if isinstance(targets, str) else targets
    ignore = [ignore] if isinstance(ignore, str) else ignore
    config = config or make_config()
    entry = get_method(config.method)
    if entry.needs:
        raise InputError(f"method {entry.name!r} needs calibration data ({', '.join(entry.needs)})")
    net = handle.model if inplace else copy.deepcopy(handle.model)
    selected, skipped = select_modules(net, targets, ignore, embeddings)
    if not selected:
        raise InputError("no Linear layer matches the targets/ignore patterns; nothing to quantize")
    for name, mod in selected.items():  # check every shape before doing any work
        config.spec.block_len(tuple(mod.weight.shape), name)
    t0 = time.perf_counter()
    layers: dict[str, Any] = {}
    nparams = nbytes = 0
    for name, mod in track(list(selected.items()), f"quantize {entry.name} {config.spec}"):
        qt = entry.fn(mod.weight.data, config, None)
        if isinstance(mod, nn.Embedding):
            _set_submodule(net, name, QuantizedEmbedding.from_embedding(mod, qt))
            module = "embedding"
        else:
            _set_submodule(net, name, QuantizedLinear.from_linear(mod, qt))
            module = "linear"
        layers[name] = {"spec": qt.spec.to_dict(), "shape": list(qt.shape), "format": "intpack", "module": module}
        nparams += qt.numel
        nbytes += qt.nbytes
    seconds = time.perf_counter() - t0
    out = ModelHandle(model=net.eval(), tokenizer=handle.tokenizer, kind=handle.kind, name=handle.name,
                      path=None, quant=record_for(config, layers, skipped, handle.reference_name or handle.name, seconds))
    report = QuantizeReport(entry.name, config.spec, list(layers), skipped, seconds, nparams, nbytes)
    log.info("quantized %d layers (%d skipped) in %.1f s, %.3f bpw", len(layers), len(skipped), seconds,
             report.bits_per_weight)
    return out, report


def save(handle: ModelHandle, out: str | Path, overwrite: bool = False) -> Path:
    """Write a quantized model as a lowbit checkpoint (safetensors + config), atomically."""
    return save_checkpoint(handle, out, overwrite=overwrite)
