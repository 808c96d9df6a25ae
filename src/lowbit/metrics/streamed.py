"""Log-probabilities of a causal LM that is not in memory (loaders/lazy.py), block by block.

    windows --embeddings--> block 0 --> block 1 --> ... --> norm, head --> log-softmax, per window

Each block is read from the files once per group of windows, run on every window of the group, and
freed; the hidden states of the group are all that stays. The head runs one window at a time, in a
forward of the whole model whose blocks give back what they computed, so any architecture transformers
builds works, with the very operations of :func:`lowbit.metrics.lm.window_logprobs` (batch of one).

The reference's log-probs are cached on disk (``LOWBIT_CACHE``), keyed by the model's files and the
windows, so a second candidate scored against a 13B reference does not run the reference again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.progress import track

GROUP_BYTES = 1 << 30  # hidden states of one group of windows (entering and leaving a block)


def blocks_of(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ModuleList of repeated blocks holding the most tensor elements (float or quantized layers)."""
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 1:
            n = sum(t.numel() for t in [*mod.parameters(), *mod.buffers()])
            if best is None or n > best[0]:
                best = (n, name, mod)
    if best is None:
        from lowbit.errors import InputError

        raise InputError("the model has no list of blocks; it cannot be evaluated block by block")
    return best[1], best[2]


@torch.inference_mode()
def streamed_logprobs(lazy: Any, windows: torch.Tensor, label: str = "eval") -> Iterator[tuple[int, torch.Tensor]]:
    """(window index, (L-1, vocab) float32 log-probs) for every window, reading one block at a time."""
    from lowbit.calib.capture import _catch_block_inputs, replaying_blocks
    from lowbit.modules.kernel_mode import kernel_mode

    prefix, blocks = blocks_of(lazy.model)
    width = int(getattr(lazy.model.config, "hidden_size", 0) or 1)
    group = max(1, GROUP_BYTES // (2 * windows.shape[1] * width * 4))
    with kernel_mode(lazy.model, "dequant"):
        for start in range(0, len(windows), group):
            batch = [windows[i : i + 1].to(lazy.device) for i in range(start, min(len(windows), start + group))]
            with lazy.on_demand(prefix):
                chunks = _catch_block_inputs(lazy.model, blocks[0], batch)
            tuple_out = False
            for i in track(range(len(blocks)), f"{label}: windows {start + 1}-{start + len(batch)}, block by block"):
                name = f"{prefix}.{i}"
                lazy.materialize(name)
                outs = [blocks[i](*args, **kw) for args, kw in chunks]
                tuple_out = isinstance(outs[0], tuple)
                chunks = [((o[0] if tuple_out else o, *args[1:]), kw) for o, (args, kw) in zip(outs, chunks)]
                del outs
                lazy.release(name)
            for j, ids in enumerate(batch):
                with replaying_blocks(blocks, iter([chunks[j][0][0]]), tuple_out), lazy.on_demand(prefix):
                    logits = lazy.model(input_ids=ids).logits[0, :-1].float()
                yield start + j, F.log_softmax(logits, dim=-1).cpu()


def cache_dir(lazy: Any, windows: torch.Tensor) -> Path:
    """Where the log-probs of ``lazy`` on ``windows`` are kept: keyed by its files (size, mtime), the ids and
    the device (other than the CPU) they were computed on."""
    from lowbit.loaders.cache import cache_root

    key = lazy.stamp() if lazy.device == "cpu" else [lazy.stamp(), lazy.device]  # a GPU's floats differ slightly
    digest = hashlib.sha256(json.dumps(key).encode() + windows.numpy().tobytes()).hexdigest()[:24]
    return cache_root() / "logprobs" / digest


def cached_logprobs(lazy: Any, windows: torch.Tensor, label: str) -> Callable[[int], torch.Tensor]:
    """A reader of every window's log-probs of a reference: from the disk cache, or computed block by
    block first and saved there one window at a time (memory holds one window's, whatever their number)."""
    from safetensors.torch import load_file, save_file

    where = cache_dir(lazy, windows)
    if not (where / "complete").is_file():
        where.mkdir(parents=True, exist_ok=True)
        for i, lp in streamed_logprobs(lazy, windows, label):
            save_file({"logprobs": lp.contiguous()}, str(where / f".w{i}.tmp"))
            (where / f".w{i}.tmp").replace(where / f"w{i}.safetensors")
        (where / "complete").write_text(str(len(windows)))
    return lambda i: load_file(str(where / f"w{i}.safetensors"))["logprobs"]
