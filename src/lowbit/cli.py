"""The `lowbit` command line: one thin command per API verb.

Each command parses its options into configs and calls the API; user errors (LowbitError) print
one line and exit with code 2, and nothing half-written is left behind.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from lowbit.errors import LowbitError

app = typer.Typer(
    name="lowbit",
    help="Quantize a neural network and know what you gave up: quantize, evaluate, inspect.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*a: Any, **kw: Any) -> Any:
        try:
            return fn(*a, **kw)
        except LowbitError as e:
            err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="transformers")
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass


@app.callback()
def _root(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what lowbit is doing.")] = False) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=err, show_path=False, show_time=False)])


# --- quantize ------------------------------------------------------------------------------------
@app.command()
@user_errors
def quantize(
    model: Annotated[str, typer.Argument(help="smollm2, minilm, a Hugging Face directory or a .gguf file.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Directory to write the quantized checkpoint to.")],
    method: Annotated[str, typer.Option(help="Quantization method.")] = "rtn",
    bits: Annotated[int, typer.Option(help="Bits per weight code, 2 to 8.")] = 4,
    group_size: Annotated[int, typer.Option(help="Group size; -1 per-channel, 0 per-tensor.")] = 64,
    asym: Annotated[bool, typer.Option("--asym/--sym", help="Asymmetric (zero point) or symmetric grid.")] = False,
    clip_search: Annotated[bool, typer.Option(help="RTN: per-block MSE search of the clipping range.")] = False,
    act_order: Annotated[bool, typer.Option("--act-order/--no-act-order", help="GPTQ: quantize columns by decreasing Hessian diagonal (static groups).")] = True,
    calib: Annotated[str | None, typer.Option(help="Calibration data for gptq/awq: pydoc:calib, stdlib:calib, a file, folder or .jsonl.")] = None,
    n_samples: Annotated[int, typer.Option(help="Calibration windows.")] = 16,
    seq_len: Annotated[int, typer.Option(help="Tokens per calibration window.")] = 512,
    targets: Annotated[list[str] | None, typer.Option("--targets", help="Regex of Linear names to quantize (repeatable).")] = None,
    ignore: Annotated[list[str] | None, typer.Option("--ignore", help="Regex of module names to keep in full precision (repeatable); replaces the default (lm_head); 'none' keeps nothing.")] = None,
    embeddings: Annotated[bool, typer.Option("--embeddings", help="Quantize nn.Embedding tables too (kept by default).")] = False,
    double_quant: Annotated[bool, typer.Option("--double-quant", help="nf4/fp4: re-quantize the block constants (QLoRA).")] = False,
    smooth: Annotated[bool, typer.Option("--smooth", help="w8a8: SmoothQuant scales folded into the norms.")] = False,
    alpha: Annotated[float | None, typer.Option(help="w8a8 --smooth: migration strength; searched when not given.")] = None,
    act: Annotated[str, typer.Option(help="w8a8: dynamic (per token) or static (per tensor) activations.")] = "dynamic",
    threshold: Annotated[float, typer.Option(help="int8 (LLM.int8): activation outlier threshold; 0 turns it off.")] = 6.0,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
) -> None:
    """Quantize MODEL and save a checkpoint that `lowbit eval` and the Python API reload. Methods: rtn, gptq, awq,
    hqq (integer grids), nf4 / fp4 (bitsandbytes-style 4-bit), int8 (LLM.int8), w8a8 (int8 weights and activations)."""
    from lowbit import api
    from lowbit.errors import ExportError
    from lowbit.spec import QuantSpec

    if method in ("nf4", "fp4", "int8", "w8a8"):
        if out_dir.exists() and not overwrite:
            raise ExportError(f"{out_dir} already exists; choose another --out or pass --overwrite")
        _quiet_libraries()
        from lowbit.loaders import load_model

        with err.status(f"loading {model}"):
            handle = load_model(model)
        ign = [] if ignore is not None and [i.lower() for i in ignore] == ["none"] else ignore
        if method in ("nf4", "fp4"):
            from lowbit.methods.bnb import quantize_bnb4

            qh, rep = quantize_bnb4(handle, method, double_quant, targets=targets, ignore=ign)
        elif method == "int8":
            from lowbit.methods.llm_int8 import quantize_llm_int8

            qh, rep = quantize_llm_int8(handle, threshold, targets=targets, ignore=ign)
        else:
            from lowbit.methods.w8a8 import quantize_w8a8

            qh, rep = quantize_w8a8(handle, act, smooth, alpha=alpha if smooth else 0.5, calib=calib or "pydoc:calib",
                                    n_samples=n_samples, seq_len=seq_len)
        api.save(qh, out_dir, overwrite=overwrite)
        out.print(f"{method}: {len(qh.quant['layers'])} layers quantized, {rep['bits_per_weight']:.3f} bits/weight, "
                  f"{rep['seconds']:.1f} s -> {out_dir}", highlight=False)
        return

    spec = QuantSpec(bits=bits, symmetric=not asym, group_size=group_size)  # validates before any loading
    options: dict[str, Any] = {}
    if clip_search:
        options["clip_search"] = True
    if method == "gptq":
        options["act_order"] = act_order
    config = api.make_config(method, spec, **options)
    needs = api.get_method(method).needs
    if needs and calib is None:
        calib = "pydoc:calib"
        err.print(f"{method} needs calibration data; using the built-in pydoc:calib ({n_samples} x {seq_len} tokens)")
    calib_settings = api.CalibSettings(calib, n_samples, seq_len) if calib else None
    if calib:
        from lowbit.calib import load_corpus

        load_corpus(calib)  # fail on bad data before loading any model
    if out_dir.exists() and not overwrite:
        raise ExportError(f"{out_dir} already exists; choose another --out or pass --overwrite")
    _quiet_libraries()
    from lowbit.loaders import load_model

    with err.status(f"loading {model}"):
        handle = load_model(model)
    if ignore is not None and [i.lower() for i in ignore] == ["none"]:
        ignore = []
    qhandle, report = api.quantize(handle, config, calib=calib_settings, targets=targets, ignore=ignore,
                                   embeddings=embeddings, inplace=True)
    api.save(qhandle, out_dir, overwrite=overwrite)
    cal = report.extra.get("calibration", {})
    out.print(f"{report.method} {report.spec}: {len(report.layers)} layers quantized "
              f"({len(report.skipped)} kept: {', '.join(report.skipped) or 'none'}), "
              f"{report.bits_per_weight:.3f} bits/weight, {report.seconds:.1f} s, "
              f"{cal.get('tokens', 0)} calibration tokens, peak RSS {cal.get('peak_rss_bytes', 0) / 2**20:.0f} MiB -> {out_dir}")


# --- export --------------------------------------------------------------------------------------
@app.command()
@user_errors
def export(
    model: Annotated[str, typer.Argument(help="A lowbit checkpoint (compressed-tensors), or any Llama model lowbit loads (gguf).")],
    out_path: Annotated[Path, typer.Option("--out", help="Directory (compressed-tensors) or .gguf file to write.")],
    fmt: Annotated[str, typer.Option("--format", help="compressed-tensors (transformers / vLLM), gguf (llama.cpp) or bitsandbytes "
                                                    "(transformers + bitsandbytes, for nf4/fp4 checkpoints).")] = "compressed-tensors",
    gguf_type: Annotated[str, typer.Option("--type", help="gguf: F32, F16, BF16, Q8_0, Q4_0..Q5_1, Q2_K, Q3_K_S/M/L, Q4_K_S/M, Q5_K_S/M, Q6_K.")] = "Q4_K_M",
    imatrix: Annotated[Path | None, typer.Option(help="gguf: an importance matrix from llama-imatrix or `lowbit imatrix`.")] = None,
    calib: Annotated[str | None, typer.Option(help="gguf: compute the importance matrix from this data (e.g. pydoc:calib).")] = None,
    n_samples: Annotated[int, typer.Option(help="Calibration windows for --calib.")] = 16,
    seq_len: Annotated[int, typer.Option(help="Tokens per calibration window.")] = 512,
    tensor_type: Annotated[list[str] | None, typer.Option("--tensor-type", help="gguf: REGEX=TYPE override (repeatable).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
) -> None:
    """Export a model in a format another runtime loads."""
    from lowbit import api
    from lowbit.errors import ExportError, InputError

    if fmt not in api.EXPORT_FORMATS:
        raise ExportError(f"--format {fmt!r} is not supported; use one of {', '.join(api.EXPORT_FORMATS)}")
    if out_path.exists() and not overwrite:
        raise ExportError(f"{out_path} already exists; choose another --out or pass --overwrite")
    opts: dict[str, Any] = {}
    if fmt == "gguf":
        from lowbit.writers.gguf_mix import MIXES, parse_overrides

        if gguf_type.upper() not in MIXES:
            raise InputError(f"--type {gguf_type!r}: choose one of {', '.join(MIXES)}")
        parse_overrides(tensor_type)  # fail on a bad override before loading anything
        if imatrix is not None and calib is not None:
            raise InputError("give --imatrix or --calib, not both")
        opts = {"gguf_type": gguf_type, "tensor_types": tensor_type}
        if imatrix is not None:
            from lowbit.calib.imatrix import load_imatrix

            opts["imatrix"] = load_imatrix(imatrix).weights()
        if calib is not None:
            from lowbit.calib import load_corpus

            load_corpus(calib)
    elif imatrix or calib or tensor_type:
        raise InputError("--imatrix, --calib and --tensor-type apply to --format gguf only")
    _quiet_libraries()
    from lowbit.loaders import load_model

    with err.status(f"loading {model}"):
        handle = load_model(model)
    if fmt == "gguf" and calib is not None:
        opts["imatrix"] = _imatrix_from(handle, calib, n_samples, seq_len).weights()
    with err.status(f"writing {fmt}"):
        path = api.export(handle, out_path, fmt=fmt, overwrite=overwrite, **opts)
    size = path.stat().st_size if path.is_file() else (path / "model.safetensors").stat().st_size
    out.print(f"{fmt}{' ' + gguf_type.upper() if fmt == 'gguf' else ''} -> {path} ({size:,} bytes)")


def _imatrix_from(handle: Any, calib: str, n_samples: int, seq_len: int) -> Any:
    from lowbit.calib import load_corpus, token_windows
    from lowbit.calib.imatrix import compute_imatrix

    windows = token_windows(load_corpus(calib), handle.tokenizer, n_samples, seq_len, 0)
    return compute_imatrix(handle.model, windows, dataset=calib)


@app.command("imatrix")
@user_errors
def imatrix_cmd(
    model: Annotated[str, typer.Argument(help="The model to measure (full precision).")],
    out_path: Annotated[Path, typer.Option("--out", help="imatrix file: .gguf (llama.cpp's current format) or .dat (legacy).")],
    calib: Annotated[str, typer.Option(help="Calibration data.")] = "pydoc:calib",
    n_samples: Annotated[int, typer.Option(help="Calibration windows.")] = 16,
    seq_len: Annotated[int, typer.Option(help="Tokens per window.")] = 512,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
) -> None:
    """Compute an importance matrix (mean x^2 per input column) that llama-quantize and lowbit read."""
    from lowbit.calib import load_corpus
    from lowbit.calib.imatrix import save_imatrix
    from lowbit.errors import ExportError

    if out_path.exists() and not overwrite:
        raise ExportError(f"{out_path} already exists; choose another --out or pass --overwrite")
    load_corpus(calib)
    _quiet_libraries()
    from lowbit.loaders import load_model

    with err.status(f"loading {model}"):
        handle = load_model(model)
    im = _imatrix_from(handle, calib, n_samples, seq_len)
    save_imatrix(im, out_path)
    out.print(f"imatrix of {len(im.sums)} tensors from {n_samples} x {seq_len} tokens of {calib} -> {out_path}")


# --- eval ----------------------------------------------------------------------------------------
@app.command("eval")
@user_errors
def eval_(
    model: Annotated[str, typer.Argument(help="A model or a lowbit checkpoint directory.")],
    data: Annotated[str, typer.Option(help="Evaluation data: pydoc:eval, stdlib:eval, a file, folder or .jsonl.")] = "pydoc:eval",
    reference: Annotated[str | None, typer.Option(help="Full-precision model to compare with (default: the checkpoint's source).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the metrics as JSON here.")] = None,
    windows: Annotated[int, typer.Option(help="Number of token windows (passages for encoders: x16).")] = 4,
    seq_len: Annotated[int, typer.Option(help="Tokens per window.")] = 512,
    seed: Annotated[int, typer.Option(help="Seed for sampling the windows.")] = 0,
    speed: Annotated[bool, typer.Option(help="Measure prefill/decode speed.")] = True,
    runtime: Annotated[str, typer.Option(help="torch, or llama.cpp for a .gguf file (needs llama-cpp-python).")] = "torch",
) -> None:
    """Evaluate MODEL on your data: PPL, KL and top-1 vs the reference, size, bits/weight, speed."""
    from lowbit.calib import load_corpus
    from lowbit.errors import InputError
    from lowbit.metrics.run import EvalSettings, Evaluator
    from lowbit.report import results_table, write_json

    load_corpus(data)  # fail on bad data before loading any model
    _quiet_libraries()
    from lowbit.loaders import load_model

    if runtime not in ("torch", "llama.cpp"):
        raise InputError(f"--runtime {runtime!r}: use torch or llama.cpp")
    with err.status(f"loading {model}"):
        if runtime == "llama.cpp":
            from lowbit.metrics.llamacpp import load_llamacpp

            handle = load_llamacpp(model, n_ctx=max(seq_len, 512))
        else:
            handle = load_model(model)
    ref_name = reference or handle.reference_name
    with err.status(f"loading reference {ref_name}"):
        ref = load_model(ref_name) if ref_name else None
    settings = EvalSettings(data=data, windows=windows, seq_len=seq_len, seed=seed, speed=speed, texts=16 * windows)
    ev = Evaluator(ref, settings, tokenizer=(ref or handle).tokenizer)
    results = [ev.run(ref, label=f"{ref.name} (reference)")] if ref is not None else []
    results.append(ev.run(handle))
    out.print(results_table(results, title=f"{data}"))
    if json_out:
        d = results[-1].to_dict()
        d["reference_result"] = results[0].to_dict() if ref is not None else None
        write_json(d, json_out)
        out.print(f"wrote {json_out}")


# --- inspect -------------------------------------------------------------------------------------
@app.command()
@user_errors
def inspect(
    path: Annotated[Path, typer.Argument(help="A .gguf file, a .safetensors file or a checkpoint directory.")],
    all_tensors: Annotated[bool, typer.Option("--all", help="List every tensor, not only a summary by type.")] = False,
) -> None:
    """Show each tensor's type, shape and bits per weight, and the whole file's bits per weight."""
    from rich.table import Table

    from lowbit.report.inspect import inspect_path

    info = inspect_path(path)
    if all_tensors:
        t = Table(title=f"{info.path} ({info.format})")
        for c in ("tensor", "type", "shape", "bytes", "bpw"):
            t.add_column(c, justify="left" if c in ("tensor", "type") else "right")
        for r in info.tensors:
            t.add_row(r.name, r.dtype, "×".join(map(str, r.shape)), f"{r.nbytes:,}", f"{r.bpw:.3f}")
    else:
        groups: dict[str, list[Any]] = {}
        for r in info.tensors:
            groups.setdefault(r.dtype, []).append(r)
        t = Table(title=f"{info.path} ({info.format}); --all lists every tensor")
        for c in ("type", "tensors", "weights", "bytes", "bpw"):
            t.add_column(c, justify="left" if c == "type" else "right")
        for k, rows in sorted(groups.items()):
            n, b = sum(r.numel for r in rows), sum(r.nbytes for r in rows)
            t.add_row(k, str(len(rows)), f"{n:,}", f"{b:,}", f"{8 * b / max(n, 1):.3f}")
    out.print(t)
    total = sum(r.nbytes for r in info.tensors)
    out.print(f"{len(info.tensors)} tensors, {sum(r.numel for r in info.tensors):,} weights, "
              f"{total:,} bytes, {info.bpw:.3f} bits per weight overall")


# --- qat -----------------------------------------------------------------------------------------
@app.command()
@user_errors
def qat(
    model: Annotated[str, typer.Argument(help="smollm2, minilm, a Hugging Face directory or safetensors file.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the converted (real quantized) checkpoint.")],
    data: Annotated[str, typer.Option(help="Training text: pydoc:calib, stdlib:calib, a file, folder or .jsonl.")] = "pydoc:calib",
    spec: Annotated[str, typer.Option(help="int<bits>[-sym|-asym][-g<N>|-ch|-tensor], nf4, fp4, nf4-dq, w8a8, or a GGUF "
                                           "type (Q4_K, Q3_K, Q8_0...).")] = "int4-asym-g64",
    steps: Annotated[int, typer.Option(help="Optimizer steps (one batch each).")] = 200,
    lr: Annotated[float, typer.Option(help="Adam learning rate of the latent weights.")] = 1e-5,
    distill: Annotated[bool, typer.Option("--distill", help="Loss: KL divergence to the full-precision model (no labels "
                                                             "needed; encoders: cosine distance). Default: next-token loss.")] = False,
    start: Annotated[str, typer.Option(help="Start from this PTQ result: rtn, or gptq (uses --calib).")] = "rtn",
    calib: Annotated[str, typer.Option(help="Calibration text for --start gptq.")] = "pydoc:calib",
    lsq: Annotated[bool, typer.Option("--lsq", help="Learn the scales too (LSQ).")] = False,
    act: Annotated[bool, typer.Option("--act", help="Fake-quantize the layer inputs to int8 per token as well.")] = False,
    seq_len: Annotated[int, typer.Option(help="Tokens per training sequence.")] = 256,
    batch: Annotated[int, typer.Option(help="Sequences per step.")] = 1,
    clip: Annotated[float, typer.Option(help="Gradient-norm clipping.")] = 1.0,
    checkpoint: Annotated[Path | None, typer.Option(help="Training checkpoint file (written every --save-every steps).")] = None,
    save_every: Annotated[int, typer.Option(help="Steps between training checkpoints.")] = 50,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from --checkpoint.")] = False,
    eval_data: Annotated[str | None, typer.Option("--eval", help="Also score the start and the result against the "
                                                                  "full-precision model on this data (KL / cosine).")] = None,
    windows: Annotated[int, typer.Option(help="Eval windows of 512 tokens (--eval).")] = 4,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
) -> None:
    """Quantization-aware training: fake-quantize MODEL's Linear layers to --spec (starting from RTN or GPTQ),
    train through the rounding with a straight-through estimator, then convert to the same real quantized
    layers PTQ makes and save a checkpoint that `lowbit eval` and `lowbit export` read."""
    from lowbit import api
    from lowbit.errors import ExportError, InputError
    from lowbit.methods import qat as qatm
    from lowbit.progress import Steps

    qs = qatm.parse_spec(spec)  # validate everything before loading a model
    settings = qatm.TrainSettings(steps=steps, lr=lr, batch=batch, seq_len=seq_len, distill=distill, clip=clip,
                                  checkpoint=str(checkpoint) if checkpoint else None, save_every=save_every,
                                  resume=resume, data=data)
    if out_dir.exists() and not overwrite:
        raise ExportError(f"{out_dir} already exists; choose another --out or pass --overwrite")
    from lowbit.calib import load_corpus

    load_corpus(data)
    _quiet_libraries()
    from lowbit.loaders import load_model

    with err.status(f"loading {model}"):
        handle = load_model(model)
    if handle.kind not in ("causal-lm", "encoder"):
        raise InputError(f"{model}: the CLI trains causal LMs and encoders; use lowbit.methods.qat from Python for "
                         "other modules (e.g. a classifier with (x, y) tensors)")
    with err.status(f"preparing {qs.label} (start: {start})"):
        prepared = qatm.prepare(handle, qs, start=start, lsq=lsq, act=act, calib=calib)
    if handle.kind == "encoder":
        batches = qatm.encoder_batches(handle, data, max(steps * batch, 64), seq_len)
    else:
        batches = qatm.lm_batches(handle, data, max(min(steps * batch, 512), 16), seq_len)
    evaluator = None
    if eval_data:
        from lowbit.metrics.run import EvalSettings, Evaluator

        evaluator = Evaluator(handle, EvalSettings(data=eval_data, windows=windows, speed=False))
        with err.status("scoring the start"):
            before = evaluator.run(qatm.convert(prepared))
    with Steps(steps, f"qat {qs.label}") as bar:
        res = qatm.train(prepared, batches, settings, progress=lambda i, n, loss: bar.update(i, f"loss {loss:.4f}"))
    converted = qatm.convert(prepared)
    api.save(converted, out_dir, overwrite=overwrite)
    first, last = res.losses[:10] or [float("nan")], res.losses[-10:] or [float("nan")]
    out.print(f"qat {qs.label}: {res.steps} steps ({res.steps - res.resumed_from} run now) in {res.seconds:.0f} s, "
              f"loss {sum(first) / len(first):.4f} -> {sum(last) / len(last):.4f} (mean of first / last 10) -> {out_dir}",
              highlight=False)
    if evaluator is not None:
        after = evaluator.run(converted)
        key = "kl_mean" if handle.kind == "causal-lm" else "cosine_mean"
        out.print(f"{key.split('_')[0]} to full precision on {eval_data}: start ({start}) {getattr(before, key):.4f} -> "
                  f"after QAT {getattr(after, key):.4f}", highlight=False)


# --- plan ----------------------------------------------------------------------------------------
def _plan_help() -> str:
    from lowbit.plan import rule_text

    return ("Walk the guide's decision rule top-down, stop at the first match, and explain the choice and the "
            "runner-up on the five axes (bit width, what is quantized, granularity, calibration cost, hardware "
            "support). Reads file headers only: answers at once, without loading the model.\n\n"
            "The rule (src/lowbit/plan/rules.toml):\n\n" + rule_text().replace("\n", "\n\n"))


@app.command(help=_plan_help())
@user_errors
def plan(
    model: Annotated[str | None, typer.Argument(help="Built-in name, HF directory, .safetensors or .gguf (optional).")] = None,
    target: Annotated[str, typer.Option(help="Where it will run: cpu, cuda:SM (e.g. cuda:8.0), apple or edge.")] = "cpu",
    goal: Annotated[str, typer.Option(help="experiment, serve, edge or accuracy (8-bit PTQ missed your bar).")] = "serve",
    batch: Annotated[int, typer.Option(help="Typical serving batch size.")] = 1,
    have_training_data: Annotated[bool, typer.Option("--have-training-data", help="You have labelled training data.")] = False,
    latency_critical: Annotated[bool, typer.Option("--latency-critical", help="Latency matters more than size.")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the plan as JSON here.")] = None,
) -> None:
    from lowbit.plan import Inputs, ModelInfo, make_plan

    p = make_plan(Inputs(target=target, goal=goal, batch=batch, have_training_data=have_training_data,
                         latency_critical=latency_critical), ModelInfo.of(model))
    out.print(p.render(), markup=False, highlight=False)
    if json_out:
        import json

        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(p.to_dict(), indent=2))


# --- compare -------------------------------------------------------------------------------------
@app.command()
@user_errors
def compare(
    model: Annotated[str, typer.Argument(help="Built-in name (smollm2, minilm), HF directory, .gguf or checkpoint.")],
    calib: Annotated[str, typer.Option(help="Calibration data (pydoc:calib, stdlib:calib, a file or directory).")] = "pydoc:calib",
    eval_data: Annotated[str, typer.Option("--eval", help="Your eval set: text, or JSONL of "
                                           '{"question","choices","answer"} / {"text","label"}.')] = "pydoc:eval",
    eval_text: Annotated[str, typer.Option(help="Text for KL/PPL when --eval is a labelled JSONL set.")] = "pydoc:eval",
    methods: Annotated[str | None, typer.Option(help="Comma-separated candidates (default: every family); "
                                                "e.g. rtn-w8,gptq-w4g64,gguf-q4_k_m.")] = None,
    bar: Annotated[str | None, typer.Option(help="Your quality bar: kl=0.05, ppl=+3%, acc=-1, cos=0.99, top1=0.9.")] = None,
    budget_bpw: Annotated[float | None, typer.Option(help="Largest bits per weight you can afford.")] = None,
    target: Annotated[str, typer.Option(help="Where it will run (cpu, cuda:SM, apple, edge): the hardware axis.")] = "cpu",
    report: Annotated[Path, typer.Option(help="Directory for report.md, report.html and results.json.")] = Path("lowbit-report"),
    windows: Annotated[int, typer.Option(help="Eval windows of --seq-len tokens.")] = 4,
    seq_len: Annotated[int, typer.Option(help="Tokens per eval and calibration window.")] = 512,
    calib_samples: Annotated[int, typer.Option(help="Calibration windows.")] = 16,
    calib_check: Annotated[bool, typer.Option("--calib-check", help="Also calibrate on a generic set and show the gap.")] = False,
    train_data: Annotated[str | None, typer.Option(help="Training text: with --qat-steps, QAT candidates (4- and 3-bit, "
                                                        "distilled from the float model) join the comparison.")] = None,
    qat_steps: Annotated[int, typer.Option(help="QAT step budget per candidate (one 256-token window per step).")] = 0,
    no_speed: Annotated[bool, typer.Option("--no-speed", help="Skip the speed measurements.")] = False,
    list_methods: Annotated[bool, typer.Option("--list", help="List the candidates and exit.")] = False,
) -> None:
    """Run every candidate on your data, mark the Pareto front of size vs quality, and recommend the way the
    guide does: start conservative and push the bit width down only while your bar holds. Resumable: finished
    candidates are cached in REPORT/.cache."""
    from lowbit.compare import CANDIDATES, CompareSettings
    from lowbit.compare import compare as run_compare

    if list_methods:
        import lowbit.methods  # noqa: F401

        for name in CANDIDATES:
            c = CANDIDATES.get(name)
            out.print(f"{c.id:<14} {c.family:<6} {c.bits}-bit  {c.label}{'  (default)' if c.default else ''}")
        return
    _quiet_libraries()
    t0 = time.perf_counter()
    settings = CompareSettings(calib=calib, eval=eval_data, eval_text=eval_text,
                               methods=[m.strip() for m in methods.split(",") if m.strip()] if methods else None,
                               bar=bar, budget_bpw=budget_bpw, windows=windows, seq_len=seq_len,
                               calib_samples=calib_samples, speed=not no_speed, calib_check=calib_check, target=target,
                               train_data=train_data, qat_steps=qat_steps)
    res = run_compare(model, settings, report, console=out)
    from lowbit.compare.report import _md_table

    out.print(_md_table([res["reference"], *res["candidates"]]), markup=False, highlight=False)
    rec = res["recommendation"]
    out.print(f"\n[bold]Recommendation: {rec['method']}[/]" + ("" if rec["met_bar"] else " [red](bar not met)[/]"))
    for r in rec["reasons"]:
        out.print(f"  - {r}", markup=False, highlight=False)
    for w in res["warnings"]:
        out.print(f"[yellow]warning:[/] {w}", highlight=False)
    cc = res.get("calib_check")
    if cc and "skipped" not in cc:
        out.print(f"calibration check: {cc['candidate']} on {cc['user_calib']}: {cc['metric']} {cc['user_value']:.4f}; "
                  f"on {cc['generic_calib']}: {cc['generic_value']:.4f} -> "
                  f"{'yours is better' if cc['user_calib_better'] else 'yours is NOT better'}", highlight=False)
    out.print(f"report: {report / 'report.html'}, {report / 'report.md'}, {report / 'results.json'} "
              f"({time.perf_counter() - t0:.0f} s)")


# --- hardware ------------------------------------------------------------------------------------
@app.command()
@user_errors
def hardware(
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the figures as JSON here.")] = None,
    repeats: Annotated[int, typer.Option(help="Timed repeats per format (the median is kept).")] = 7,
) -> None:
    """Detect this machine (CPU ISA, cores, GPU) and time every format lowbit runs here against float32:
    one smollm2-sized block of matmuls at batch 1 (decode) and 64 (prefill), on the CPU and, where one is
    present, on the GPU. Formats slower than float32 are flagged; the ratios feed `lowbit plan`."""
    from lowbit.metrics import hardware as hw

    machine = hw.detect()
    for line in machine.lines():
        out.print(line, highlight=False)
    timings = hw.check(repeats=repeats)
    out.print(_speed_table(timings, "CPU: one transformer block of matmuls (smollm2 shapes), median of repeats"))
    hw.record(timings, machine)
    gpu = None
    if machine.gpu:
        gpu = hw.check(repeats=repeats, device="cuda")
        out.print(_speed_table(gpu, f"GPU ({machine.gpu}, compute capability {machine.compute_capability}): "
                                    "the same block"))
        hw.record(gpu, machine, device="cuda")
    if json_out:
        import json

        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(hw.to_dict(machine, timings, gpu), indent=1))


def _speed_table(timings: list, title: str):
    from rich.table import Table

    t = Table(title=title)
    for c in ("format", "decode ms (batch 1)", "x fp32", "prefill ms (batch 64)", "x fp32", ""):
        t.add_column(c, justify="left" if c in ("format", "") else "right")
    for r in timings:
        flag = "[red]slower than fp32 here[/]" if r.slower_than_fp32 else r.note
        t.add_row(r.label, f"{r.decode_ms:.3f}", f"{r.decode_ratio_vs_fp32:.2f}", f"{r.prefill_ms:.3f}",
                  f"{r.prefill_ratio_vs_fp32:.2f}", flag)
    return t


# --- demo ----------------------------------------------------------------------------------------
@app.command()
@user_errors
def demo(
    report: Annotated[Path, typer.Option(help="Where the report goes.")] = Path("lowbit-report"),
    windows: Annotated[int, typer.Option(help="Eval windows of 512 tokens.")] = 4,
) -> None:
    """The main job on built-in defaults: `lowbit compare smollm2` (calibration pydoc:calib, eval pydoc:eval,
    every family, bar kl=0.05), the table, the recommendation and the report."""
    compare("smollm2", report=report, windows=windows, calib="pydoc:calib", eval_data="pydoc:eval",
            eval_text="pydoc:eval", methods=None, bar=None, budget_bpw=None, target="cpu", seq_len=512, calib_samples=16,
            calib_check=False, train_data=None, qat_steps=0, no_speed=False, list_methods=False)


def main() -> None:
    # numpy's OpenBLAS (the calibration Gram matrices) keeps its threads spinning after each call, and they
    # fight torch's threads for the cores: let them sleep at once. Set before numpy is first imported; a
    # user's own setting wins. The CLI's choice, not the library's: `import lowbit` sets nothing.
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    app()


if __name__ == "__main__":
    sys.exit(main())
