"""Methods calibrated on the float model (W8A8 with SmoothQuant), block by block from the files.

The in-memory path (pipeline/model_scope.py) runs the float model once for its statistics, then tries
each SmoothQuant alpha on a copy of the whole model. Here, in two passes over the blocks:

    pass 1, block i:  read it  ->  the float calibration activations through it, gathering each
                      Linear's statistics (and on to block i+1, still float)
                      ->  for each alpha: a copy of the block, smoothed and quantized, runs that
                          alpha's probe state on (the float block checks the fold is exact)
                      ->  free it
                      at the end: each alpha's probe through the head; the lowest KL (causal LMs)
                      or 1 - cosine (encoders) to the float model's wins, as in memory
    pass 2, block i:  read it  ->  smooth with the chosen alpha  ->  quantize from the statistics
                      ->  write  ->  free it

The statistics and the choice are kept in ``OUT.partial`` after pass 1, so a resumed run goes straight
to pass 2 at the first block not written. Layers outside the blocks (BERT's pooler) are quantized with
their own statistics; the alpha search scores them in float, which in memory are quantized too.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
import torch.nn.functional as F

from lowbit.calib.capture import _catch_block_inputs, _first_output, replaying_blocks
from lowbit.calib.stats import LayerStats, collecting
from lowbit.errors import CalibrationError
from lowbit.methods.base import Method, MethodConfig
from lowbit.methods.w8a8 import ALPHAS
from lowbit.modules.kernel_mode import kernel_mode
from lowbit.pipeline.data import CalibData, describe
from lowbit.pipeline.layers import data_free
from lowbit.pipeline.model_scope import PROBE_TOKENS, folds_of

log = logging.getLogger(__name__)
FIELDS = ("hessian", "act_absmean", "act_absmax")


def calibrate_float(run: Any, entry: Method, config: MethodConfig, data: CalibData,
                    linears: list[str]) -> tuple[dict[str, Any], dict[str, Any], dict[str, LayerStats]]:
    """Pass 1 (or what an interrupted run kept of it), then pass 2 over the blocks still to write.
    Returns what calibration saw, the method's findings, and the statistics of every Linear (those
    outside the blocks are quantized by the caller, with the rest of the model)."""
    saved = run.writer.state.get("float")
    if saved is None:
        stats, details = _first_pass(run, entry, config, data, linears)
        run.writer.save_activations({f"{n}::{f}": getattr(s, f) for n, s in stats.items() for f in FIELDS
                                     if getattr(s, f) is not None})
        run.writer.block_done(0, float={"details": dict(details), "rows": {n: s.rows for n, s in stats.items()}})
    else:
        tensors, details = run.writer.activations(), dict(saved["details"])
        stats = {n: LayerStats(rows, **{f: tensors.get(f"{n}::{f}") for f in FIELDS}) for n, rows in saved["rows"].items()}
    folds = details.pop("_folds")  # the smoothing folds, kept in the progress record for a resumed pass 2
    alpha = details.get("alpha")
    for i in run.steps(len(run.blocks), f"quantize {len(run.blocks)} blocks"):
        name = run.block_name(i)
        run.lazy.materialize(name)
        head = f"{name}."
        own = [n for n in linears if n.startswith(head)]
        mine = [(p, c) for p, c in folds if p.startswith(head)]
        block_stats = {n: stats[n] for n in own}
        if alpha is not None and mine:
            from lowbit.methods.w8a8 import smooth

            block_stats = smooth(run.lazy.model, block_stats, mine, alpha)
        data_free(run.lazy.model, own, entry, config, run.record, block_stats)
        run.block_done(i)
    return dict(describe(data), schedule="float"), details, stats


@torch.inference_mode()
def _first_pass(run: Any, entry: Method, config: MethodConfig, data: CalibData,
                linears: list[str]) -> tuple[dict[str, LayerStats], dict[str, Any]]:
    lazy, prefix, blocks, model = run.lazy, run.prefix, run.blocks, run.lazy.model
    batches = [{k: v.to(lazy.device) for k, v in b.items()} for b in data.batches]
    probe = ({"input_ids": data.windows[:1, :PROBE_TOKENS]} if data.lm else dict(data.check))
    probe = {k: v.to(lazy.device) for k, v in probe.items()}
    folds, chunks, ref_probe = _enter(run, config, data, linears, batches, probe)
    alphas = ([config.alpha] if config.alpha is not None else list(ALPHAS)) if folds else []
    states = {a: ref_probe for a in alphas}  # each alpha's probe, through the blocks quantized with it
    stats: dict[str, LayerStats] = {}
    tuple_out = False
    for i in run.steps(len(blocks), f"float statistics of {len(blocks)} blocks"):
        name = run.block_name(i)
        lazy.materialize(name)
        block, head = blocks[i], f"{name}."
        own = {n: model.get_submodule(n) for n in linears if n.startswith(head)}
        out = _container(run, i + 1)
        with collecting(own, entry.needs) as accs:
            for args, kw in chunks:
                o = block(*args, **kw)
                tuple_out = isinstance(o, tuple)
                out.append(((_first_output(o), *args[1:]), kw))
                del o
        stats.update({n: accs[n].stats() for n in own})
        if run.spill:
            chunks.remove()
        chunks = out
        if len(alphas) > 1:
            rel = {n[len(head):]: s for n, s in stats.items() if n.startswith(head)}
            mine = [(p[len(head):], [c[len(head):] for c in cs]) for p, cs in folds if p.startswith(head)]
            ref_probe = _try_alphas(block, i, rel, mine, states, ref_probe, entry, config)
        lazy.release(name)
    details: dict[str, Any] = {"smoothed_layers": [], "_folds": folds}
    if folds:
        alpha = alphas[0]
        if len(alphas) > 1:
            ref = _probe_output(lazy, prefix, ref_probe, probe, tuple_out, data.lm)
            scores = {a: _score(_probe_output(lazy, prefix, st, probe, tuple_out, data.lm), ref, data.lm)
                      for a, st in states.items()}
            alpha = min(scores, key=scores.get)
            details["alpha_search"] = scores
        details.update(alpha=alpha, smoothed_layers=sorted(n for _, consumers in folds for n in consumers))
    leftovers = {n: model.get_submodule(n) for n in linears if not n.startswith(f"{prefix}.")}
    if leftovers:  # outside the blocks (a pooler): one replayed forward per batch
        outs = (args[0] for args, _kw in chunks)
        with collecting(leftovers, entry.needs) as accs:
            for b in batches:
                with replaying_blocks(blocks, outs, tuple_out), lazy.on_demand(prefix):
                    model(**b)
        stats.update({n: accs[n].stats() for n in leftovers})
    if run.spill:
        chunks.remove()
    return stats, details


def _enter(run: Any, config: MethodConfig, data: CalibData, linears: list[str], batches: list[dict[str, Any]],
           probe: dict[str, torch.Tensor]) -> tuple[list[tuple[str, list[str]]], Any, tuple[tuple, dict]]:
    """The smoothing folds (empty unless ``config.smooth``), and the inputs of block 0 for the calibration
    batches and for the probe."""
    from lowbit.methods.w8a8 import smoothable

    lazy, model = run.lazy, run.lazy.model
    lazy.materialize(run.block_name(0))
    with lazy.on_demand(run.prefix):
        folds, width = folds_of(model, linears, data.windows.to(lazy.device))
        chunks = _catch_block_inputs(model, run.blocks[0], batches, _container(run, 0))
        probes = _catch_block_inputs(model, run.blocks[0], [probe])
    search = bool(getattr(config, "smooth", False))
    folds = [(p, c) for p, c in folds if smoothable(model.get_submodule(p), width)] if search else []
    if search and not folds:
        log.warning("no norm output feeds only Linears (e.g. post-norm residuals), so no smoothing scale can be "
                    "folded exactly; W8A8 without smoothing")
    return folds, chunks, probes[0]


def _try_alphas(block: torch.nn.Module, i: int, stats: dict[str, LayerStats], folds: list[tuple[str, list[str]]],
                states: dict[float, tuple[tuple, dict]], ref: tuple[tuple, dict], entry: Method,
                config: MethodConfig) -> tuple[tuple, dict]:
    """Each alpha's probe state through a copy of block ``i`` smoothed (names relative to the block) and
    quantized with that alpha (``states`` updated); returns the float block's output on the float probe,
    against which each smoothed float copy is checked first."""
    from lowbit.methods.w8a8 import smooth

    expect = _first_output(block(*ref[0], **ref[1]))
    for a in list(states):
        trial = copy.deepcopy(block)
        smoothed = smooth(trial, stats, folds, a) if folds else stats
        got = _first_output(trial(*ref[0], **ref[1]))
        err = float((got - expect).norm() / expect.norm())
        if err > 1e-3:  # folding is exact algebra; anything else means a wrong producer was found
            raise CalibrationError(f"smoothing changed block {i}'s float output (relative error {err:.2e})")
        data_free(trial, list(stats), entry, config, lambda n, m, qt: m, smoothed)
        args, kw = states[a]
        with kernel_mode(trial, "dequant"):
            states[a] = ((_first_output(trial(*args, **kw)), *args[1:]), kw)
        del trial
    return (expect, *ref[0][1:]), ref[1]


def _container(run: Any, i: int) -> Any:
    """Where the float activations entering block ``i`` go: a list, or files (calib/spill.py)."""
    from lowbit.calib.spill import SpilledChunks

    return SpilledChunks(run.spilled(i)) if run.spill else []


def _probe_output(lazy: Any, prefix: str, state: tuple[tuple, dict], probe: dict[str, torch.Tensor],
                  tuple_out: bool, lm: bool) -> torch.Tensor:
    """The model's output on the probe, given what its last block gave: log-probs of the next tokens
    (causal LMs, as metrics.lm.window_logprobs), or the token states (encoders)."""
    blocks = lazy.model.get_submodule(prefix)
    with replaying_blocks(blocks, iter([state[0][0]]), tuple_out), lazy.on_demand(prefix):
        out = lazy.model(**probe)
    if lm:
        return F.log_softmax(out.logits[0, :-1].float(), dim=-1)
    return out.last_hidden_state


def _score(got: torch.Tensor, ref: torch.Tensor, lm: bool) -> float:
    """As pipeline/model_scope.ModelContext.score: mean KL, or 1 - mean cosine."""
    if lm:
        return float(F.kl_div(got, ref, log_target=True, reduction="none").sum(-1).mean())
    return float(1 - F.cosine_similarity(got, ref, dim=-1).mean())
