"""Quantize a model that does not fit in memory, block by block from its files to the output.

    for block i:  read it (float32, from the memory map)  ->  calibrate it (if the method does)
                  ->  quantize it  ->  write its tensors as a shard  ->  free it

Every method runs this way (RTN, HQQ, NF4/FP4, LLM.int8, the GGUF types, GPTQ, AWQ; W8A8 in two passes,
pipeline/stream_float.py) but QAT's convert, whose model was trained in memory: the same code as the
in-memory pipeline, with a :class:`~lowbit.calib.capture.BlockStream` that reads and writes around each
block. Tensors that are not quantized (norms, the embeddings and the head unless ``embeddings=True``)
are written in the dtype they are stored in. Peak memory is one block, the calibration activations (on
disk, calib/spill.py, when they do not fit) and one shard; it does not grow with the number of blocks.
The output is a lowbit checkpoint in sharded safetensors (writers/shards.py): a kill leaves ``OUT.partial``, which
``resume=True`` continues to a bit-identical result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.calib.capture import FUSED_BUDGET_BYTES, MICRO_BATCH, BlockStream, find_blocks, replaying_blocks
from lowbit.calib.cost import PeakRSS
from lowbit.calib.settings import CalibSettings
from lowbit.calib.spill import SpilledChunks
from lowbit.errors import InputError
from lowbit.loaders.checkpoint import FORMAT_VERSION
from lowbit.loaders.lazy import LazyModel, open_lazy
from lowbit.methods.base import MethodConfig, get_method, make_config
from lowbit.modules.swap import trim_heap
from lowbit.pipeline import memory
from lowbit.pipeline.data import as_settings, calibration_data
from lowbit.pipeline.layers import data_free, sequential
from lowbit.pipeline.report import CalibrationCost, QuantizeReport
from lowbit.pipeline.run import select_layers
from lowbit.progress import Steps
from lowbit.tensor import QuantizedTensor
from lowbit.writers.guard import check_output
from lowbit.writers.shards import ShardedWriter

log = logging.getLogger(__name__)


def streamable(method: str) -> bool:
    """Whether ``method`` runs block by block: all but QAT's convert, whose model was trained in memory."""
    return get_method(method).selects is None


def can_stream(model: Any, method: str) -> bool:
    """Whether ``model`` (a name or path) and ``method`` run block by block: a built-in, a .gguf file, or a
    Hugging Face directory of float safetensors (not a checkpoint lowbit or another tool quantized)."""
    from lowbit.loaders.builtin import BUILTINS
    from lowbit.loaders.dispatch import read_json

    if not isinstance(model, (str, Path)) or not streamable(method):
        return False
    if str(model) in BUILTINS:
        return True
    path = Path(model).expanduser()
    if path.is_file():
        return path.suffix.lower() == ".gguf"
    return (path.is_dir() and (path / "config.json").is_file() and any(path.glob("*.safetensors"))
            and "quantization_config" not in read_json(path / "config.json"))


def quantize_stream(source: str | Path, config: MethodConfig, out: str | Path, *,
                    calib: CalibSettings | str | None = None, targets: list[str] | None = None,
                    ignore: list[str] | None = None, embeddings: bool = False, overwrite: bool = False,
                    resume: bool = False, max_memory: int | str | None = None, device: str = "cpu") -> QuantizeReport:
    """Quantize the model at ``source`` (a Hugging Face directory or a GGUF file) into the checkpoint ``out``,
    one block in memory at a time. See :func:`lowbit.quantize` for ``calib``, ``targets``, ``ignore`` and
    ``embeddings``; ``max_memory`` (bytes or "4GiB") caps what one block may need, by default what the
    machine has free; ``resume`` continues an interrupted run of the same settings; ``device`` ("cpu",
    "cuda:0") is where each block is computed (the output is the same file either way)."""
    if not resume:
        check_output(out, overwrite)
    entry = get_method(config.method)
    if not streamable(config.method):
        raise InputError(f"method {config.method!r} does not run block by block; it needs the model in memory")
    settings = as_settings(calib)
    if entry.needs and settings is None:
        raise InputError(f"method {entry.name!r} needs calibration data (--calib), for its {', '.join(entry.needs)}")
    lazy = open_lazy(source).to_device(memory.resolve_device(device))
    order, skipped = select_layers(lazy.handle(), entry, config, targets, ignore, embeddings)
    run = _Run(lazy, order, parse_cap(max_memory))
    run.check(settings)
    key = _key(lazy, config, settings, order)
    run.writer = ShardedWriter(Path(out), key, overwrite=overwrite, resume=resume)
    run.restore()
    with PeakRSS() as cost:
        try:
            cal = run.quantize(entry, config, settings)
            run.write_rest(entry, config)
            quant = run.record_of(config, skipped, cal, cost)
            run.writer.finish(run.config_json(quant), lazy.tokenizer)
        except KeyboardInterrupt:
            log.warning("interrupted: %d blocks are done in %s; run again with --resume to continue",
                        run.writer.done, run.writer.partial)
            raise
        except BaseException:
            run.writer.abort()
            raise
    calibration = CalibrationCost(**cal, seconds=round(cost.seconds, 3), peak_rss_bytes=cost.peak)
    return QuantizeReport(entry.name, config, list(quant["layers"]), skipped, cost.seconds, run.sizes[0],
                          run.sizes[1], calibration, run.details)


def parse_cap(max_memory: int | str | None) -> tuple[int, str]:
    cap = memory.parse_size(max_memory)
    return (cap, "--max-memory") if cap is not None else (memory.machine_memory(), "the memory available")


def _key(lazy: LazyModel, config: MethodConfig, settings: CalibSettings | None, order: list[str]) -> str:
    """What makes two runs the same run: the source files, the method, the data, the layers."""
    blob = json.dumps([lazy.stamp(), config.to_dict(), settings and dataclasses.asdict(settings), order], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class _Run:
    """One streamed run: the lazy model, the writer, the records of the layers done so far."""

    def __init__(self, lazy: LazyModel, order: list[str], cap: tuple[int, str]) -> None:
        self.lazy, self.order, self.cap = lazy, order, cap
        self.prefix, self.blocks = find_blocks(lazy.model)
        self.layers: dict[str, Any] = {}
        self.sizes = [0, 0]
        self.stats: dict[str, Any] = {}  # the float model's statistics (W8A8), for the layers outside the blocks
        self.details: dict[str, Any] = {}  # the method's findings (SmoothQuant's alpha)
        self.writer: ShardedWriter = None  # type: ignore[assignment]

    def block_name(self, i: int) -> str:
        return f"{self.prefix}.{i}" if self.prefix else str(i)

    def check(self, settings: CalibSettings | None) -> None:
        """Refuse at once a cap one block cannot run under; decide whether the calibration activations stay
        in memory or go to disk (calib/spill.py), and how much is left for the fused schedule."""
        width = int(getattr(self.lazy.model.config, "hidden_size", 0) or 0)
        tokens = settings.n_samples * settings.seq_len if settings else 0
        self.acts = memory.activation_bytes(tokens, width)
        work = memory.hessian_bytes(self.blocks[0]) if settings else 0
        weights = memory.block_bytes(self.blocks[0])
        self.spill = settings is not None and 2 * weights + work + self.acts > self.cap[0]
        if self.spill:  # one micro-batch in memory at a time, entering and leaving the block
            self.acts = memory.activation_bytes(min(settings.n_samples, MICRO_BATCH) * settings.seq_len, width)
        memory.check_fits(self.lazy.name, weights, self.acts, work, *self.cap)
        self.spare = self.cap[0] - 2 * weights - work - self.acts

    def restore(self) -> None:
        self.layers = dict(self.writer.state.get("layers", {}))
        self.sizes = list(self.writer.state.get("sizes", [0, 0]))
        self.spill = bool(self.writer.state.setdefault("spill", self.spill))  # a resumed run keeps its first layout
        if self.spill:
            log.info("calibration activations exceed %s: they are kept on disk, in %s", self.cap[1],
                     self.writer.partial / "activations")
        if self.writer.done:
            log.info("resuming %s: %d of %d blocks are done", self.writer.partial, self.writer.done, len(self.blocks))

    def record(self, name: str, mod: nn.Module, qt: QuantizedTensor | None) -> nn.Module:
        self.layers[name] = mod.record()
        grid = qt if qt is not None or not hasattr(mod, "quantized_tensor") else mod.quantized_tensor()
        self.sizes[0] += grid.numel if grid is not None else mod.in_features * mod.out_features
        self.sizes[1] += grid.nbytes if grid is not None else mod.quant_nbytes
        return mod

    def quantize(self, entry: Any, config: MethodConfig, settings: CalibSettings | None) -> dict[str, Any]:
        """Every block, then the report of what calibration saw."""
        in_blocks = [n for n in self.order if n.startswith(f"{self.prefix}.")]
        if settings is None:
            for i in self.steps(len(self.blocks), f"quantize {len(self.blocks)} blocks"):
                self.lazy.materialize(self.block_name(i))
                head = f"{self.block_name(i)}."
                data_free(self.lazy.model, [n for n in in_blocks if n.startswith(head)], entry, config, self.record)
                self.block_done(i)
            return {"samples": 0, "tokens": 0}
        data = calibration_data(self.lazy.handle(), settings)
        linears = [n for n in self.order if isinstance(self.lazy.model.get_submodule(n), nn.Linear)]
        if entry.calibration == "float":
            from lowbit.pipeline.stream_float import calibrate_float

            cal, self.details, self.stats = calibrate_float(self, entry, config, data, linears)
            return cal
        windows = data.windows.to(self.lazy.device)
        cap = sequential(self.lazy.model, windows, linears, entry, config, self.record, _Stream(self))
        return {"data": settings.data, "samples": cap.samples, "tokens": cap.tokens, "schedule": cap.schedule,
                "unreached": cap.unreached}

    def steps(self, n: int, label: str) -> Iterator[int]:
        """Blocks still to do, with a progress bar that shows the process' memory."""
        import psutil

        proc = psutil.Process()
        with Steps(n, label, done=self.writer.done) as bar:
            for i in range(self.writer.done, n):
                yield i
                bar.update(i + 1, f"RSS {proc.memory_info().rss / 2**30:.2f} GiB")

    def block_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        """The tensors of module ``prefix`` to write: quantized layers as produced; parameters that still
        hold their stored values (exactly) in their stored dtype, so a bf16 norm stays bf16."""
        out = {}
        for k, v in self.lazy.model.get_submodule(prefix).state_dict(prefix=f"{prefix}.").items():
            out[k] = self.lazy.as_stored(k, v).cpu()
        return out

    def block_done(self, i: int, activations: dict[str, torch.Tensor] | None = None) -> None:
        name = self.block_name(i)
        self.writer.write_shard(self.block_tensors(name))
        self.lazy.release(name)
        if activations is not None:
            self.writer.save_activations({k: v.cpu() for k, v in activations.items()})
        self.writer.block_done(i + 1, layers=self.layers, sizes=self.sizes)
        if self.spill:  # the inputs of block i: its outputs, from which a resumed run starts, are written
            shutil.rmtree(self.spilled(i), ignore_errors=True)
        trim_heap()  # hand the block's freed pages back (glibc keeps them otherwise; ~20 ms)

    def spilled(self, i: int) -> Path:
        """Where the calibration activations entering block ``i`` are kept, when they are kept on disk."""
        return self.writer.partial / "activations" / f"b{i}"

    def write_rest(self, entry: Any, config: MethodConfig) -> None:
        """Everything outside the blocks: selected modules quantized (embeddings with RTN on the spec when
        the method calibrates), the rest copied in its stored dtype; tied weights once."""
        head = f"{self.prefix}."
        rest = [n for n in self.order if not n.startswith(head) and n not in self.layers]
        for name in rest:
            self.lazy.materialize(name)
        own = [n for n in rest if n in self.stats]  # W8A8: Linears outside the blocks, on their own statistics
        if own:
            data_free(self.lazy.model, own, entry, config, self.record, self.stats)
        if rest := [n for n in rest if n not in own]:  # embeddings: RTN on the spec when the method calibrates
            method, cfg = (entry, config) if not entry.needs else (get_method("rtn"), make_config("rtn", config.spec))
            data_free(self.lazy.model, rest, method, cfg, self.record)
        tensors, self.tied, ptrs = {}, {}, {}
        for k, v in self.lazy.model.state_dict().items():
            if k.startswith(head):
                continue
            first = next((a for a in self.lazy.ties.get(k, []) if a in tensors), None)
            if first is not None and (v.device.type == "meta" or v.data_ptr() == ptrs[first]):
                self.tied[k] = first
                continue
            ptrs[k] = v.data_ptr() if v.device.type != "meta" else None
            tensors[k] = self.lazy.read(k) if v.device.type == "meta" else v.cpu()
        # materialized but untouched: back to the stored dtype
        self.writer.write_shard({k: self.lazy.as_stored(k, v) for k, v in tensors.items()})

    def record_of(self, config: MethodConfig, skipped: list[str], cal: dict[str, Any], cost: PeakRSS) -> dict[str, Any]:
        import time

        seconds = time.perf_counter() - cost.t0
        calibration = CalibrationCost(**cal, seconds=round(seconds, 3), peak_rss_bytes=cost.peak)
        record = {"method": config.to_dict(), "layers": {n: self.layers[n] for n in self.order if n in self.layers},
                  "skipped": skipped, "source": self.lazy.name, "quantize_seconds": round(seconds, 3),
                  "calibration": calibration.to_dict()}
        return dict(record, details=self.details) if self.details else record

    def config_json(self, quant: dict[str, Any]) -> dict[str, Any]:
        record = dict(quant, quant_method="lowbit", format_version=FORMAT_VERSION, tied=self.tied, kind=self.lazy.kind)
        return dict(self.lazy.model.config.to_dict(), quantization_config=record)


class _Stream(BlockStream):
    """Calibration block by block on a lazy model: read a block before it runs, write and free it after,
    and keep the activations entering the next block on disk, so that a killed run resumes there."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.start = run.writer.done
        self.tuple_out = False

    def fits(self, windows: torch.Tensor, fused: bool) -> bool:
        return fused and not self.run.spill and self.run.spare >= FUSED_BUDGET_BYTES  # the fused pass's own activations

    @contextmanager
    def entering(self, i: int) -> Iterator[None]:
        lazy = self.run.lazy
        lazy.materialize(self.run.block_name(0))
        with lazy.on_demand(self.run.prefix):
            yield
        if self.start > 0:
            lazy.release(self.run.block_name(0))

    def chunks(self, i: int) -> Any:
        if not self.run.spill:
            return []
        return SpilledChunks(self.run.spilled(i), write=not (self.start > 0 and i == self.start))

    def inputs(self, chunks: list[tuple[tuple, dict]]) -> list[tuple[tuple, dict]]:
        if self.start == 0:
            return chunks
        if self.run.spill:  # written by the run this one resumes
            missing = [j for j in range(len(chunks)) if not (self.run.spilled(self.start) / f"{j}.bin").is_file()]
            if missing:
                raise InputError(f"{self.run.spilled(self.start)} lacks the activations of {len(missing)} "
                                 f"micro-batches; run without --resume and with --overwrite to start over")
            return chunks
        saved = self.run.writer.activations()
        return [((saved[f"chunk.{j}"].to(self.run.lazy.device), *args[1:]), kw) for j, (args, kw) in enumerate(chunks)]

    def blocks(self, n: int, label: str) -> Iterator[int]:
        return self.run.steps(n, label)

    def load(self, i: int) -> None:
        self.run.lazy.materialize(self.run.block_name(i))
        block = self.run.blocks[i]
        self._hook = block.register_forward_hook(lambda _m, _a, out: setattr(self, "tuple_out", isinstance(out, tuple)))

    def done(self, i: int, chunks: list[tuple[tuple, dict]]) -> None:
        self._hook.remove()
        saved = None if self.run.spill else {f"chunk.{j}": args[0] for j, (args, _kw) in enumerate(chunks)}
        self.run.block_done(i, saved)

    @contextmanager
    def replaying(self, chunks: list[tuple[tuple, dict]]) -> Iterator[None]:
        """A full forward in which the (written, freed) blocks give back the outputs they gave."""
        outs = (args[0] for args, _kw in chunks)
        with replaying_blocks(self.run.blocks, outs, self.tuple_out), self.run.lazy.on_demand(self.run.prefix):
            yield
