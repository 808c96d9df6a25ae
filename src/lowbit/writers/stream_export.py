"""compressed-tensors and bitsandbytes checkpoints written block by block from a lowbit checkpoint on disk
(loaders/checkpoint.open_checkpoint), so a model larger than memory exports:

    for block i:  read its quantized layers  ->  their tensors in the format  ->  one shard  ->  free it
    then the rest (embeddings, norms, head), the config and the tokenizer

The tensors are those the in-memory writers (writers/compressed_tensors.py, writers/bnb.py) produce,
with one difference: a tensor kept in float (a norm, the embeddings, the head) is written in the dtype
the checkpoint stores it in (bf16 for a bf16 source) rather than float32; config.json still declares
float32, to which transformers casts it on load. Shards and their index as transformers writes them
(one model.safetensors up to 1 GiB); a failure leaves nothing (``OUT.partial`` is removed).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lowbit.errors import ExportError
from lowbit.metrics.streamed import blocks_of
from lowbit.progress import track
from lowbit.writers.guard import check_output
from lowbit.writers.shards import ShardedWriter

Tensors = dict[str, torch.Tensor]


def export_streamed(lazy: Any, out: str | Path, fmt: str, overwrite: bool = False) -> Path:
    """Write the lazily opened lowbit checkpoint ``lazy`` as ``fmt`` ("compressed-tensors" or
    "bitsandbytes") to ``out``, one block in memory at a time."""
    out = check_output(out, overwrite)
    convert, config = _plan(lazy.model, fmt)  # every check before anything is written
    prefix, blocks = blocks_of(lazy.model)
    writer = ShardedWriter(out, key=fmt, overwrite=True)
    try:
        for i in track(range(len(blocks)), f"export {fmt}: {len(blocks)} blocks"):
            name = f"{prefix}.{i}"
            lazy.materialize(name)
            writer.write_shard(_stored(lazy, convert(lazy.model.get_submodule(name).state_dict(prefix=f"{name}."),
                                                     False)))
            lazy.release(name)
        rest = {n.rpartition(".")[0] for n in lazy.files if not n.startswith(f"{prefix}.")}
        for name in sorted(rest):
            lazy.materialize(name)
        state = {k: v for k, v in lazy.model.state_dict(keep_vars=True).items() if not k.startswith(f"{prefix}.")}
        writer.write_shard(_stored(lazy, convert(state, True)))
        writer.finish(config, lazy.tokenizer, metadata={"format": "pt"})
    except BaseException:
        writer.abort()
        raise
    return out


def _plan(model: torch.nn.Module, fmt: str) -> tuple[Callable[[Tensors, bool], Tensors], dict[str, Any]]:
    """(part of a state dict, whether it is the last part -> the format's tensors), and config.json."""
    if fmt == "compressed-tensors":
        from lowbit.writers import compressed_tensors as ct

        layers, kept = ct._collect(model)
        if not layers:
            raise ExportError("the model has no quantized Linear layer; nothing to export as pack-quantized")
        dtype = torch.float32  # what the in-memory path's loaded checkpoint computes in
        config = ct.model_config(model, layers, kept, dtype, False)

        def convert(state: Tensors, last: bool) -> Tensors:
            mine = {n: m for n, m in layers.items() if f"{n}.qweight" in state}
            tensors, broken_tie = ct._dense_tensors(model, set(layers), state)
            if last and broken_tie:  # the ties are the embeddings' and the head's, in the last part
                config["tie_word_embeddings"] = False
            tensors.update(ct.packed_tensors(mine, dtype))
            return tensors

        return convert, config
    if fmt == "bitsandbytes":
        from lowbit.writers import bnb
        from lowbit.writers.checkpoint import _dedupe

        mods, config = bnb.plan(model)
        return lambda state, last: _dedupe(bnb.bnb_tensors(state, mods))[0], config
    raise ExportError(f"{fmt} is not written block by block")


def _stored(lazy: Any, tensors: Tensors) -> Tensors:
    """Float tensors the checkpoint stores in a narrower dtype go back to it, where that is exact."""
    return {k: lazy.as_stored(k, v.detach()).contiguous() for k, v in tensors.items()}
