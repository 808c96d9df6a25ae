"""The two budget verbs of the API (re-exported by lowbit.api): a GGUF file mixed to a size
(`lowbit export --format gguf --budget`) and a torch checkpoint with one grid per layer
(`lowbit quantize --budget`). Each checks its output path and data before loading the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from lowbit.calib.settings import CalibSettings
from lowbit.loaders.handle import ModelHandle


def budget_export_to(model: ModelHandle | nn.Module | str, out: str | Path, budget: str | float, *,
                     calib: CalibSettings | None = None, imatrix: str | Path | None = None,
                     tensor_type_file: str | Path | None = None, overwrite: bool = False) -> Any:
    """``lowbit export MODEL --format gguf --budget 4.5``: the GGUF file with the least predicted KL
    within ``budget`` (bits per weight, or a size such as "90MB"), one llama.cpp type per tensor
    (budget/allocate.py). ``calib`` is the data the sensitivity is measured on (pydoc:calib); the
    quantization uses an importance matrix only when one is given (``imatrix``). ``tensor_type_file``
    gets the overrides with which llama-quantize writes the same file from lowbit's F32 export.
    Returns the :class:`lowbit.budget.allocate.Allocation`.
    """
    from lowbit.budget.allocate import allocate, check_bounds, export_allocation, sensitivity, size_only
    from lowbit.budget.solve import parse_budget
    from lowbit.calib import load_corpus, token_windows
    from lowbit.calib.imatrix import load_imatrix
    from lowbit.loaders import load_model
    from lowbit.writers.gguf import check_arch
    from lowbit.writers.guard import check_output

    b = parse_budget(budget)
    check_output(out, overwrite)
    if tensor_type_file is not None:
        check_output(tensor_type_file, overwrite)
    calib = calib or CalibSettings()
    corpus = load_corpus(calib.data)
    im = load_imatrix(imatrix) if imatrix is not None else None
    kv = im.gguf_kv(imatrix) if im is not None else None
    handle = load_model(model)
    check_arch(handle)
    sizes = size_only(handle, im is not None, imatrix_kv=kv)
    check_bounds(sizes, b)  # before the costly sensitivity pass
    windows = token_windows(corpus, handle.tokenizer, calib.n_samples, calib.seq_len, calib.seed)
    weights = im.weights() if im is not None else None
    alloc = allocate(sensitivity(handle, windows, weights, imatrix_kv=kv, header=sizes.header), b)
    export_allocation(handle, str(out), alloc, imatrix=weights, imatrix_kv=kv,
                      tensor_type_file=None if tensor_type_file is None else str(tensor_type_file), overwrite=overwrite)
    return alloc


def budget_quantize_to(model: ModelHandle | nn.Module | str, out: str | Path, budget: str | float, *,
                       method: str = "rtn", calib: CalibSettings | None = None, grids: list[str] | None = None,
                       overwrite: bool = False) -> Any:
    """``lowbit quantize MODEL --budget 4.5``: one integer grid per Linear (budget/grids.py; q/k/v and
    gate/up share one), least predicted KL within ``budget`` (bits per weight over the quantized layers, or
    the whole model's size), each grid's layers quantized by ``method``; saved as a lowbit checkpoint that
    `lowbit export --format compressed-tensors` writes with one config group per grid. ``calib`` is the
    sensitivity data (and the method's, if it calibrates). ``grids`` narrows or widens the choice (names of
    budget/grids.py's GRIDS, and "nf4": kept in lowbit's checkpoint, not exportable to compressed-tensors).
    Returns the quantized handle."""
    from lowbit.api import get_method, load_model, save
    from lowbit.budget.fisher import collect_fisher
    from lowbit.budget.grids import allocate_grids, check_grids, quantize_grids
    from lowbit.budget.solve import parse_budget
    from lowbit.calib import load_corpus, token_windows
    from lowbit.writers.guard import check_output

    b = parse_budget(budget)
    get_method(method)
    grids = check_grids(grids)
    check_output(out, overwrite)
    calib = calib or CalibSettings()
    corpus = load_corpus(calib.data)
    handle = load_model(model)
    windows = token_windows(corpus, handle.tokenizer, calib.n_samples, calib.seq_len, calib.seed)
    alloc = allocate_grids(handle, collect_fisher(handle.model, windows), b, grids)
    q = quantize_grids(handle, alloc, method, calib if get_method(method).needs else None)
    save(q, out, overwrite=overwrite)
    return q
