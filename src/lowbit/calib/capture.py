"""Sequential, block-by-block calibration for any Hugging Face decoder or encoder.

    tokens -> embeddings -> [block 0] -> [block 1] -> ... -> [block n-1] -> head
                              ^ inputs caught with a pre-hook and a private stop signal

The blocks are found from the module tree (the ``nn.ModuleList`` holding most of the model's
Linear weights), not from per-architecture code. Each block runs on the outputs of the blocks before
it *after* those were quantized ("true sequential"), and only one block's activations are alive.

Two schedules, chosen by the activation memory of the calibration set:

- **fused** (the whole set fits in one batch, e.g. 16 x 512 tokens): one forward per block. A
  pre-hook on each target Linear gathers its statistics from the full batch, quantizes it, and writes
  the quantized weights in place before the Linear runs, so later Linears of the same block already
  see quantized inputs, and the block's output is the quantized block's output. One pass in all.
- **two-pass** (larger sets, micro-batches): per block, a statistics pass with hooks over all
  micro-batches, then quantization, then a propagation pass.

Statistics are gathered only when a method asks for them (``Method.needs``), by the one gatherer in
calib/stats.py: ``hessian`` (X^T X, GPTQ), ``act_absmean`` (mean |x| per input channel, AWQ).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lowbit.calib.stats import LayerStats, StatsAccumulator, collecting
from lowbit.errors import CalibrationError, InputError
from lowbit.modules.swap import page_out, replace_module, trim_heap
from lowbit.progress import track

log = logging.getLogger(__name__)

FUSED_BUDGET_BYTES = 3 << 30
MICRO_BATCH = 4  # windows per forward in the two-pass schedule


class _StopForward(Exception):
    """Private signal: the first block's inputs are caught, the rest of the forward is not needed."""


# A callback that quantizes Linears reading the same input (e.g. q/k/v) from their shared statistics
# and returns the modules to install, in the same order.
QuantizeGroup = Callable[[list[str], list[nn.Linear], LayerStats], list[nn.Module]]


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ModuleList of repeated blocks holding the most Linear weights (layers, h, encoder.layer, ...)."""
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0:
            n = sum(m.weight.numel() for m in mod.modules() if isinstance(m, nn.Linear))
            if n and (best is None or n > best[0]):
                best = (n, name, mod)
    if best is None:
        raise InputError("the model has no list of blocks holding Linear layers; calibrated methods cannot run on it")
    return best[1], best[2]


def _catch_block_inputs(model: nn.Module, block: nn.Module, batches: Iterable[torch.Tensor],
                        caught: Any = None) -> Any:
    """The arguments ``block`` is called with for each batch, appended to ``caught`` (a list by default)."""
    caught = [] if caught is None else caught

    def hook(_mod: nn.Module, args: tuple, kwargs: dict) -> None:
        caught.append((args, kwargs))
        raise _StopForward

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for ids in batches:  # token ids, or the keyword arguments of one forward
            kw = dict(ids) if isinstance(ids, dict) else {"input_ids": ids}
            if _takes(model, "use_cache"):
                kw["use_cache"] = False
            try:
                with torch.inference_mode():
                    model(**kw)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return caught


def _takes(model: nn.Module, arg: str) -> bool:
    import inspect

    try:
        return arg in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _first_output(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _fused_fits(model: nn.Module, windows: torch.Tensor) -> bool:
    cfg = getattr(model, "config", None)
    n, length = windows.shape
    hidden = getattr(cfg, "hidden_size", 1024)
    inter = getattr(cfg, "intermediate_size", 4 * hidden)
    heads = getattr(cfg, "num_attention_heads", 16)
    est = 4 * n * length * (6 * hidden + 3 * inter) + 4 * 2 * n * heads * length * length
    return est <= FUSED_BUDGET_BYTES


def shared_input_groups(model: nn.Module, blocks: nn.ModuleList, windows: torch.Tensor,
                        probe: list[tuple[tuple, dict]] | None = None) -> list[list[str]]:
    """Names (relative to a block) of the Linears that read the very same input tensor, found by running
    block 0 once on a few tokens: e.g. [[q_proj, k_proj, v_proj], [o_proj], [gate_proj, up_proj], [down_proj]]."""
    args, kwargs = _catch_block_inputs(model, blocks[0], [windows[:1, : min(16, windows.shape[1])]])[0]
    if probe is not None:
        probe.append((args, kwargs))
    rel = {m: n for n, m in blocks[0].named_modules() if isinstance(m, nn.Linear)}
    seen: list[tuple[torch.Tensor, list[str]]] = []

    def hook(mod: nn.Module, a: tuple) -> None:
        for t, names in seen:
            if t is a[0]:
                names.append(rel[mod])
                return
        seen.append((a[0], [rel[mod]]))

    hooks = [m.register_forward_pre_hook(hook) for m in rel]
    try:
        with torch.inference_mode():
            blocks[0](*args, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    return [names for _, names in seen]


def _groups_in_block(prefix: str, i: int, in_block: dict[nn.Module, str], shared: list[list[str]]) -> list[list[nn.Module]]:
    by_name = {n: m for m, n in in_block.items()}
    head = f"{prefix}.{i}." if prefix else f"{i}."
    groups: list[list[nn.Module]] = []
    for names in shared:
        g = [by_name.pop(head + n) for n in names if head + n in by_name]
        if g:
            groups.append(g)
    groups += [[m] for m in by_name.values()]  # anything block 0 did not show: on its own
    return groups


class BlockStream:
    """How block-by-block calibration meets the model's memory. This one, the default, does nothing: the
    model is in memory. pipeline/stream.py's reads each block before it runs (``load``), writes it out
    and frees it after (``done``), and resumes an interrupted run (``start``, ``inputs``)."""

    start = 0

    def fits(self, windows: torch.Tensor, fused: bool) -> bool:
        """Whether the whole calibration set runs as one batch (the fused schedule)."""
        return fused

    def entering(self, i: int) -> Any:
        """A context in which the model runs up to block ``i`` (the modules before it are read)."""
        from contextlib import nullcontext

        return nullcontext()

    def inputs(self, chunks: list[tuple[tuple, dict]]) -> list[tuple[tuple, dict]]:
        """The inputs of block ``start``, given those caught at block 0."""
        return chunks

    def chunks(self, i: int) -> Any:
        """An empty container (``append``, ``len``, iteration) for the inputs of block ``i``: a list, or
        calib/spill.py's files where the activations do not fit in memory."""
        return []

    def blocks(self, n: int, label: str) -> Iterable[int]:
        return track(range(self.start, n), label)

    def load(self, i: int) -> None:
        pass

    def done(self, i: int, chunks: list[tuple[tuple, dict]]) -> None:
        pass

    def replaying(self, chunks: list[tuple[tuple, dict]]) -> Any:
        """A context in which a full forward runs (targets outside the blocks, e.g. a pooler)."""
        return self.entering(0)


@contextmanager
def replaying_blocks(blocks: nn.ModuleList, outputs: Iterator[torch.Tensor], tuple_out: bool) -> Iterator[None]:
    """A full forward in which block 0 gives back the next of ``outputs`` (what the last block computed,
    block by block, before) and the other blocks pass it on: the modules after the blocks (a head, a
    pooler) run on the right hidden states without the blocks in memory."""
    wrap = (lambda h: (h,)) if tuple_out else (lambda h: h)
    for j, block in enumerate(blocks):
        block.forward = ((lambda *a, **k: wrap(next(outputs))) if j == 0 else
                         (lambda *a, **k: wrap(a[0] if a else k["hidden_states"])))
    try:
        yield
    finally:
        for block in blocks:
            del block.forward


@dataclass
class CaptureReport:
    blocks: int
    schedule: str
    samples: int
    tokens: int
    unreached: list[str]
    groups: list[list[str]] = field(default_factory=list)


def run_sequential(
    model: nn.Module,
    windows: torch.Tensor,
    targets: dict[str, nn.Linear],
    needs: tuple[str, ...],
    quantize_group: QuantizeGroup,
    micro_batch: int = MICRO_BATCH,
    block_transform: Callable[..., list[LayerStats]] | None = None,
    stream: BlockStream | None = None,
) -> CaptureReport:
    """Calibrate ``targets`` block by block on ``windows`` (n, L); install what ``quantize_group`` returns.

    ``block_transform(groups, stats)`` (AWQ) runs between a block's statistics and its quantization,
    with each group's fold target (found by modules/fold.py), and returns the statistics to use; it
    implies the two-pass schedule. A ``stream`` (pipeline/stream.py) reads each block before it runs and
    writes it out after, for models that are not in memory.
    """
    if windows.numel() == 0:
        raise CalibrationError("no calibration tokens")
    stream = stream or BlockStream()
    targets = dict(targets)  # entries are dropped as they are replaced, so their float weights can go
    prefix, blocks = find_blocks(model)
    fused = stream.fits(windows, _fused_fits(model, windows)) and block_transform is None
    batches = [windows] if fused else list(windows.split(micro_batch))
    names = {mod: name for name, mod in targets.items()}
    shared, folds, chunks = _enter(model, blocks, windows, batches, stream, block_transform is not None)
    for name in [n for n in targets if any(n.startswith(f"{prefix}.{j}.") for j in range(stream.start))]:
        names.pop(targets.pop(name))  # finished by the run this one resumes
    for i in stream.blocks(len(blocks), f"calibrate {len(blocks)} blocks ({'fused' if fused else 'two-pass'})"):
        stream.load(i)
        head = f"{prefix}.{i}." if prefix else f"{i}."
        in_block = {m: n for m, n in names.items() if n.startswith(head)}
        groups = _groups_in_block(prefix, i, in_block, shared)
        if fused:
            chunks = _block_fused(blocks[i], chunks, in_block, groups, needs, quantize_group, model)
        else:
            transform = None
            if block_transform is not None:
                transform = _bind_transform(block_transform, blocks[i], head, folds)
            chunks = _block_two_pass(blocks[i], chunks, in_block, groups, needs, quantize_group, model, transform,
                                     stream.chunks(i + 1))
        names = {m: n for m, n in names.items() if m not in in_block}
        for name in in_block.values():
            del targets[name]
        del in_block, groups
        stream.done(i, chunks)
        if i % 4 == 3:  # glibc keeps freed activations; trimming costs ~20 ms, so every few blocks
            trim_heap()
    leftovers = targets
    unreached = []
    if leftovers:
        with stream.replaying(chunks):
            unreached = _leftovers(model, batches, leftovers, needs, quantize_group)
    return CaptureReport(len(blocks), "fused" if fused else "two-pass", windows.shape[0], windows.numel(), unreached,
                         shared)


def _enter(model: nn.Module, blocks: list[nn.Module], windows: torch.Tensor, batches: list[torch.Tensor],
           stream: BlockStream, with_folds: bool) -> tuple[list[list[str]], dict[str, str | None], list[tuple[tuple, dict]]]:
    """What the blocks share (groups of layers fed the same input), AWQ's fold targets, and the inputs
    of the first block still to do."""
    probe: list[tuple[tuple, dict]] = []
    with stream.entering(0):
        shared = shared_input_groups(model, blocks, windows, probe)
        folds: dict[str, str | None] = {}
        if with_folds:
            from lowbit.modules.fold import find_fold_targets

            folds = find_fold_targets(blocks[0], *probe[0], shared)
        chunks = stream.inputs(_catch_block_inputs(model, blocks[0], batches, stream.chunks(stream.start)))
    if len(chunks) != len(batches):
        raise CalibrationError("the first block was never reached; cannot calibrate this model")
    return shared, folds, chunks


def _block_fused(block: nn.Module, chunks: list[tuple[tuple, dict]], in_block: dict[nn.Module, str],
                 groups: list[list[nn.Module]], needs: tuple[str, ...], quantize_group: QuantizeGroup,
                 model: nn.Module) -> list[tuple[tuple, dict]]:
    group_of = {m: g for g in groups for m in g}
    installed: dict[str, nn.Module] = {}

    def pre_hook(mod: nn.Module, args: tuple) -> None:
        if in_block[mod] in installed:  # quantized with its group, weights already written
            return
        st = StatsAccumulator(needs)
        st.add(args[0])
        group = group_of[mod]
        news = quantize_group([in_block[m] for m in group], group, st.stats())
        for m, new in zip(group, news):
            installed[in_block[m]] = new
            # the rest of this pass runs quantized; a fresh tensor, not copy_(): writing into a weight that
            # is a page of a memory-mapped checkpoint would turn it into private memory for good
            page_out(m.weight.data)
            m.weight.data = _effective_weight(new).to(m.weight.dtype)

    hooks = [m.register_forward_pre_hook(pre_hook) for m in in_block]
    try:
        args, kwargs = chunks[0]
        with torch.inference_mode():
            out = _first_output(block(*args, **kwargs))
    finally:
        for h in hooks:
            h.remove()
    for name, new in installed.items():
        replace_module(model, name, new, trim=False)
    return [((out, *args[1:]), kwargs)]


def _bind_transform(transform: Callable[..., Any], block: nn.Module, head: str, folds: dict[str, str | None]) -> Callable[..., Any]:
    """Give a block transform each group's names, modules and fold target (a module of this block)."""

    def run(groups: list[list[nn.Module]], names: list[list[str]], stats: list[LayerStats]) -> list[LayerStats]:
        info = []
        for g, ns in zip(groups, names):
            target = folds.get(ns[0][len(head):])
            info.append((ns, g, block.get_submodule(target) if target else None))
        return transform(info, stats)

    return run


def _block_two_pass(block: nn.Module, chunks: list[tuple[tuple, dict]], in_block: dict[nn.Module, str],
                    groups: list[list[nn.Module]], needs: tuple[str, ...], quantize_group: QuantizeGroup,
                    model: nn.Module, transform: Callable[..., Any] | None = None, out: Any = None) -> Any:
    names = [[in_block[m] for m in g] for g in groups]
    leaders = {ns[0]: g[0] for g, ns in zip(groups, names)}  # one accumulator per shared input
    with collecting(leaders, needs) as accs, torch.inference_mode():
        for args, kwargs in chunks:
            block(*args, **kwargs)
    group_stats = [accs[ns[0]].stats() for ns in names]
    if transform is not None:
        with torch.inference_mode():
            group_stats = transform(groups, names, group_stats)
    for g, ns, st in zip(groups, names, group_stats):
        for m, new in zip(g, quantize_group(ns, g, st)):
            replace_module(model, in_block[m], new, trim=False)
    out = [] if out is None else out
    with torch.inference_mode():
        for args, kwargs in chunks:
            out.append(((_first_output(block(*args, **kwargs)), *args[1:]), kwargs))
    return out


def _leftovers(model: nn.Module, batches: list[torch.Tensor], leftovers: dict[str, nn.Linear],
               needs: tuple[str, ...], quantize_group: QuantizeGroup) -> list[str]:
    """Targets outside the blocks (e.g. a pooler): one full forward with hooks, then quantize each."""
    with collecting(leftovers, needs) as accs, torch.inference_mode():
        for ids in batches:
            model(input_ids=ids)
    unreached = []
    for name, mod in leftovers.items():
        if accs[name].rows == 0:
            unreached.append(name)
        replace_module(model, name, quantize_group([name], [mod], accs[name].stats())[0])
    return unreached


def _effective_weight(mod: nn.Module) -> torch.Tensor:
    """The float weight a quantized module computes with (what later layers must see)."""
    if hasattr(mod, "dequantize"):
        return mod.dequantize(torch.float32)
    return mod.weight.data
