"""The verbs: load, quantize, evaluate, save, export. Orchestration only: the math lives in methods/,
the pipeline every method runs through in pipeline/, the writers in writers/."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lowbit.calib.settings import CalibSettings
from lowbit.errors import InputError
from lowbit.loaders import ModelHandle, load_model
from lowbit.methods import get_method, make_config
from lowbit.methods.base import MethodConfig
from lowbit.pipeline import CalibrationCost, QuantizeReport, quantize
from lowbit.spec import QuantSpec
from lowbit.writers.checkpoint import save_checkpoint

if TYPE_CHECKING:
    from collections.abc import Callable

    from torch import nn

    from lowbit.calib.imatrix import Imatrix
    from lowbit.metrics.hardware import FormatTiming, Machine
    from lowbit.metrics.result import EvalResult
    from lowbit.metrics.run import EvalSettings
    from lowbit.qat import TrainResult, TrainSettings

log = logging.getLogger(__name__)

__all__ = ["CalibSettings", "CalibrationCost", "MethodConfig", "ModelHandle", "QuantSpec", "QuantizeReport",
           "export", "get_method", "load_model", "make_config", "quantize", "save"]


def save(handle: ModelHandle, out: str | Path, overwrite: bool = False) -> Path:
    """Write a quantized model as a lowbit checkpoint (safetensors + config), atomically."""
    return save_checkpoint(handle, out, overwrite=overwrite)


EXPORT_FORMATS = ("compressed-tensors", "gguf", "bitsandbytes")


def export(handle: ModelHandle, out: str | Path, fmt: str = "compressed-tensors", overwrite: bool = False,
           **gguf_options: Any) -> Path:
    """Write a model in a format another runtime executes (atomically).

    ``compressed-tensors``: the ``pack-quantized`` checkpoint llm-compressor writes from a lowbit
    quantized model; transformers (with the ``compressed-tensors`` package) and vLLM load it.
    ``gguf``: a llama.cpp file (llama, mistral, qwen2, qwen3, phi3, gemma2, gemma3, bert), in a GGML type or mix
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


# --- load, run, write: one call per CLI command -----------------------------------------------------
# Each checks the output path (and the data) before it loads a model, so a bad --out fails at once, and
# writes atomically through the writers. Printing is the caller's.


def quantize_to(
    model: ModelHandle | nn.Module | str,
    config: MethodConfig,
    out: str | Path,
    *,
    calib: CalibSettings | str | None = None,
    targets: Sequence[str] | None = None,
    ignore: Sequence[str] | None = None,
    embeddings: bool = False,
    overwrite: bool = False,
    resume: bool = False,
    max_memory: int | str | None = None,
    device: str = "cpu",
) -> QuantizeReport:
    """Quantize ``model`` with ``config`` (see :func:`quantize` for the keywords) and save the checkpoint
    to ``out``: ``lowbit quantize``.

    A model given by name or path streams block by block from its files (pipeline/stream.py) for every
    method that calibrates block by block: memory is one block, whatever the model's size, capped by
    ``max_memory`` ("24GiB"); ``resume`` continues a killed run; ``device`` computes each block on a GPU.
    W8A8 and QAT's convert (and a model already in memory) load the model whole.

    >>> report = quantize_to("smollm2", make_config("gptq"), "smollm2-gptq", calib="pydoc:calib")  # doctest: +SKIP
    """
    from lowbit.calib import load_corpus
    from lowbit.pipeline import memory
    from lowbit.pipeline.stream import can_stream, quantize_stream
    from lowbit.writers.guard import check_output

    device = memory.resolve_device(device)
    if not resume:
        check_output(out, overwrite)
    if calib is not None:
        load_corpus(calib if isinstance(calib, str) else calib.data)  # bad data fails before the model loads
    if can_stream(model, config.method):
        return quantize_stream(model, config, out, calib=calib, targets=list(targets) if targets else None,
                               ignore=None if ignore is None else list(ignore), embeddings=embeddings,
                               overwrite=overwrite, resume=resume, max_memory=max_memory, device=device)
    if resume:
        raise InputError(f"--resume continues a block-by-block run; {config.method} on {model!r} runs in memory")
    if device != "cpu":
        raise InputError(f"--device {device}: {config.method} on {model!r} runs in memory, on the CPU only")
    loaded = isinstance(model, (str, Path))
    quantized, report = quantize(load_model(model), config, calib=calib, targets=targets, ignore=ignore,
                                 embeddings=embeddings, inplace=loaded)
    save(quantized, out, overwrite=overwrite)
    return report


@dataclass(frozen=True)
class GGUFSettings:
    """A GGUF export: a llama.cpp type or mix (``Q4_K_M``), ``REGEX=TYPE`` overrides, and importance
    weights from an ``imatrix`` file (llama-imatrix or ``lowbit imatrix``) or computed from ``calib``."""

    type: str = "Q4_K_M"
    tensor_types: tuple[str, ...] = ()
    imatrix: str | Path | None = None
    calib: CalibSettings | None = None

    def __post_init__(self) -> None:  # checked when built: a bad type fails before a model loads
        from lowbit.writers.gguf_mix import MIXES, parse_overrides

        if self.type.upper() not in MIXES:
            raise InputError(f"unknown GGUF type {self.type!r}; choose one of {', '.join(MIXES)}")
        parse_overrides(list(self.tensor_types))
        if self.imatrix is not None and self.calib is not None:
            raise InputError("give an importance matrix (--imatrix) or calibration data (--calib), not both")


def export_to(model: ModelHandle | nn.Module | str, out: str | Path, fmt: str = "compressed-tensors", *,
              gguf: GGUFSettings | None = None, overwrite: bool = False) -> Path:
    """Load ``model`` and write it in ``fmt`` (see :func:`export`) to ``out``: ``lowbit export``.
    ``gguf`` applies to ``fmt="gguf"`` only (default: ``GGUFSettings()``, Q4_K_M without an imatrix).

    >>> export_to("smollm2", "smollm2.gguf", "gguf", gguf=GGUFSettings("Q4_K_M", calib=CalibSettings()))  # doctest: +SKIP
    """
    from lowbit.calib import load_corpus
    from lowbit.calib.imatrix import load_imatrix
    from lowbit.errors import ExportError
    from lowbit.writers.guard import check_output

    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"--format {fmt!r} is not supported; use one of {', '.join(EXPORT_FORMATS)}")
    if gguf is not None and fmt != "gguf":
        raise InputError(f"GGUF settings (type, imatrix, tensor types) do not apply to {fmt}")
    check_output(out, overwrite)
    options: dict[str, Any] = {}
    if fmt == "gguf":
        gguf = gguf or GGUFSettings()
        options = {"gguf_type": gguf.type, "tensor_types": list(gguf.tensor_types) or None}
        if gguf.imatrix is not None:  # recorded in the file as llama-quantize records it
            im = load_imatrix(gguf.imatrix)
            options["imatrix"], options["imatrix_kv"] = im.weights(), im.gguf_kv(gguf.imatrix)
        if gguf.calib is not None:
            load_corpus(gguf.calib.data)
    from lowbit.pipeline.stream import can_stream

    if fmt == "gguf" and gguf is not None and gguf.calib is None and can_stream(model, "gguf"):
        from lowbit.loaders.lazy import open_lazy

        lazy = open_lazy(model)  # tensor by tensor from the files: a model larger than memory exports
        return export(lazy.handle(), out, fmt=fmt, overwrite=overwrite, lazy=lazy, **options)
    if fmt != "gguf" and _is_checkpoint(model):
        from lowbit.loaders.checkpoint import open_checkpoint
        from lowbit.writers.stream_export import export_streamed

        return export_streamed(open_checkpoint(model), out, fmt, overwrite=overwrite)  # block by block
    handle = load_model(model)
    if gguf is not None and gguf.calib is not None:
        options["imatrix"] = _imatrix_of(handle, gguf.calib).weights()
    return export(handle, out, fmt=fmt, overwrite=overwrite, **options)



def _is_checkpoint(model: Any) -> bool:
    """Whether ``model`` names a lowbit checkpoint directory (which exports block by block)."""
    from lowbit.loaders.dispatch import read_json

    if not isinstance(model, (str, Path)) or not (Path(model) / "config.json").is_file():
        return False
    record = read_json(Path(model) / "config.json").get("quantization_config")
    return isinstance(record, dict) and record.get("quant_method") == "lowbit"


def imatrix_to(model: ModelHandle | nn.Module | str, out: str | Path, calib: CalibSettings | str = "pydoc:calib", *,
               overwrite: bool = False) -> Imatrix:
    """Load ``model``, compute its importance matrix (mean x^2 per Linear input column) on ``calib`` and
    write it to ``out`` (``.gguf``, llama.cpp's current format, or ``.dat``): ``lowbit imatrix``.
    Returns the :class:`~lowbit.calib.imatrix.Imatrix`."""
    from lowbit.calib import load_corpus
    from lowbit.calib.imatrix import save_imatrix
    from lowbit.writers.guard import check_output

    settings = CalibSettings(data=calib) if isinstance(calib, str) else calib
    check_output(out, overwrite)
    load_corpus(settings.data)
    im = _imatrix_of(load_model(model), settings)
    save_imatrix(im, out, overwrite=overwrite)
    return im


def _imatrix_of(handle: ModelHandle, calib: CalibSettings) -> Imatrix:
    from lowbit.calib import load_corpus, token_windows
    from lowbit.calib.imatrix import compute_imatrix

    windows = token_windows(load_corpus(calib.data), handle.tokenizer, calib.n_samples, calib.seq_len, calib.seed)
    return compute_imatrix(handle.model, windows, dataset=calib.data)


RUNTIMES = ("torch", "llama.cpp")


def evaluate_against(model: ModelHandle | nn.Module | str, settings: EvalSettings | None = None, *,
                     reference: ModelHandle | str | None = None, runtime: str = "torch",
                     max_memory: int | str | None = None, device: str = "cpu") -> tuple[EvalResult, EvalResult | None]:
    """Load ``model`` (run by torch, or by llama.cpp for a .gguf file) and its full-precision
    ``reference`` (default: the model a lowbit checkpoint was quantized from), score both on
    ``settings`` (an :class:`~lowbit.metrics.run.EvalSettings`): ``lowbit eval``. A model whose float32
    weights exceed ``max_memory`` (default: half of what the machine has free) runs block by block.
    ``device`` ("cuda", "cuda:N", "auto"): both run block by block from their files, each block computed
    there (log-probs are scored on the CPU).

    Returns ``(result, reference_result)``; the second is None without a reference (PPL only)."""
    from lowbit.calib import load_corpus
    from lowbit.metrics.run import EvalSettings, Evaluator
    from lowbit.pipeline.memory import parse_size, resolve_device

    settings = settings or EvalSettings()
    load_corpus(settings.data)  # bad data fails before any model loads
    cap = _cap(parse_size(max_memory))
    if runtime not in RUNTIMES:
        raise InputError(f"--runtime {runtime!r}: use torch or llama.cpp")
    device = resolve_device(device)
    if device != "cpu" and runtime != "torch":
        raise InputError(f"--device {device}: llama.cpp picks its own device; --device is for --runtime torch")
    if runtime == "llama.cpp":
        from lowbit.metrics.llamacpp import load_llamacpp

        handle = load_llamacpp(model, n_ctx=max(settings.seq_len, 512))
    else:
        handle = _load_for_eval(model, cap, device)
    reference = reference or handle.reference_name
    ref = _load_for_eval(reference, cap, device) if reference else None
    evaluator = Evaluator(ref, settings, tokenizer=(ref or handle).tokenizer)
    ref_result = evaluator.run(ref, label=f"{ref.name} (reference)") if ref is not None else None
    return evaluator.run(handle), ref_result


def _cap(cap: int | None) -> int:
    from lowbit.pipeline.memory import machine_memory

    return cap if cap is not None else machine_memory() // 2  # a model and its reference side by side


def _load_for_eval(model: ModelHandle | nn.Module | str, cap: int, device: str = "cpu") -> ModelHandle:
    from lowbit.loaders.handle import CAUSAL_LM
    from lowbit.loaders.lazy import open_if_larger

    if device == "cpu":
        return open_if_larger(model, cap) or load_model(model)
    handle = open_if_larger(model, 0)  # on a GPU every model runs block by block, each block moved there
    if handle is None or handle.kind != CAUSAL_LM:
        name = getattr(handle, "name", None) or (model if isinstance(model, (str, Path)) else type(model).__name__)
        raise InputError(f"--device {device}: {name} cannot be evaluated there; a causal LM given as a Hugging Face "
                         "directory (safetensors), a lowbit checkpoint or a .gguf file runs block by block on a GPU; "
                         "evaluate this one with --device cpu")
    handle.lazy.to_device(device)
    return handle


@dataclass
class HardwareCheck:
    """This machine and the timing of every format on its CPU (and GPU, where one is present)."""

    machine: Machine
    cpu: list[FormatTiming]
    gpu: list[FormatTiming] | None = None

    def to_dict(self) -> dict[str, Any]:
        from lowbit.metrics import hardware

        return hardware.to_dict(self.machine, self.cpu, self.gpu)


def check_hardware(repeats: int = 7) -> HardwareCheck:
    """Detect this machine, time every format against float32 on its CPU and GPU, and record the ratios
    where ``lowbit plan`` reads measured speeds: ``lowbit hardware``."""
    from lowbit.metrics import hardware

    machine = hardware.detect()
    cpu = hardware.check(repeats=repeats)
    hardware.record(cpu, machine)
    gpu = None
    if machine.gpu:
        gpu = hardware.check(repeats=repeats, device="cuda")
        hardware.record(gpu, machine, device="cuda")
    return HardwareCheck(machine, cpu, gpu)


@dataclass
class QATRun:
    """A ``lowbit qat`` run: the training and, when asked, the converted model scored before (the PTQ
    start) and after training, against the full-precision model."""

    label: str  # the spec trained to, e.g. int4-asym-g64
    kind: str  # causal-lm or encoder
    train: TrainResult
    before: EvalResult | None = None
    after: EvalResult | None = None


def train_qat(model: ModelHandle | nn.Module | str, out: str | Path, settings: TrainSettings, *,
              spec: str = "int4-asym-g64", start: str = "rtn", calib: str = "pydoc:calib", lsq: bool = False,
              act: bool = False, evaluate: EvalSettings | None = None, overwrite: bool = False,
              progress: Callable[[int, int, float], None] | None = None) -> QATRun:
    """Quantization-aware training of a causal LM or encoder, end to end: ``lowbit qat``. Fake-quantize
    ``model``'s layers to ``spec`` starting from ``start`` (rtn, or gptq on ``calib``; see
    :func:`lowbit.qat.prepare` for ``lsq`` / ``act``), train on ``settings.data``, convert to real
    quantized layers and save the checkpoint to ``out``. With ``evaluate``, the converted start and the
    result are scored against the float model. ``progress(step, steps, loss)`` follows the training."""
    from lowbit import qat
    from lowbit.calib import load_corpus
    from lowbit.metrics.run import Evaluator
    from lowbit.writers.guard import check_output

    qs = qat.parse_spec(spec)  # everything is checked before a model loads
    check_output(out, overwrite)
    load_corpus(settings.data)
    handle = load_model(model)
    if handle.kind not in ("causal-lm", "encoder"):
        raise InputError(f"{handle.name}: lowbit.api.train_qat trains causal LMs and encoders; use lowbit.qat "
                         "for other modules (e.g. a classifier with (x, y) tensors)")
    prepared = qat.prepare(handle, qs, start=start, lsq=lsq, act=act, calib=calib)
    if handle.kind == "encoder":
        batches = qat.encoder_batches(handle, settings.data, max(settings.steps * settings.batch, 64), settings.seq_len)
    else:
        batches = qat.lm_batches(handle, settings.data, max(min(settings.steps * settings.batch, 512), 16),
                                 settings.seq_len)
    evaluator = Evaluator(handle, evaluate) if evaluate is not None else None
    before = evaluator.run(qat.convert(prepared)) if evaluator is not None else None
    result = qat.train(prepared, batches, settings, progress=progress)
    converted = qat.convert(prepared)
    save(converted, out, overwrite=overwrite)
    after = evaluator.run(converted) if evaluator is not None else None
    return QATRun(qs.label, handle.kind, result, before, after)


from lowbit.budget.run import budget_export_to, budget_quantize_to

__all__ += ["GGUFSettings", "HardwareCheck", "QATRun", "budget_export_to", "budget_quantize_to", "check_hardware", "evaluate_against", "export_to",
            "imatrix_to", "quantize_to", "train_qat"]
