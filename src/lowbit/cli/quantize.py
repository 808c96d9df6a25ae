"""`lowbit quantize`: one path for every registered method (`--method NAME` and its options)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from lowbit.cli import _quiet_libraries, command, err, out
from lowbit.cli.options import Grid, MethodOptionsCommand, build_config, given_options

GridsOption = Annotated[str | None, typer.Option(
    help="With --budget: the grids to choose from, comma-separated (default every integer grid: w8g64,w6g64,w5g64,"
         "w4g128,w4g64,w4g32,w3g64,w3g32,w2g32); add nf4 for bitsandbytes NF4 (lowbit checkpoints hold it; "
         "compressed-tensors cannot).")]


@command(cls=MethodOptionsCommand)
def quantize(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="smollm2, minilm, a Hugging Face directory or a .gguf file.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Directory to write the quantized checkpoint to.")],
    method: Annotated[str, typer.Option(help="Quantization method (see above).")] = "rtn",
    bits: Annotated[int | None, typer.Option(help="Bits per weight code, 2 to 8 (default 4).")] = None,
    group_size: Annotated[int | None, typer.Option(help="Group size; -1 per-channel, 0 per-tensor (default 64).")] = None,
    asym: Annotated[bool | None, typer.Option("--asym/--sym", help="Asymmetric (zero point) or symmetric grid "
                                                                   "(default symmetric).")] = None,
    scale_dtype: Annotated[str | None, typer.Option(help="Scale dtype: float16, bfloat16 or float32 "
                                                         "(default float16).")] = None,
    calib: Annotated[str | None, typer.Option(help="Calibration data for methods that need it (gptq, awq, w8a8): "
                                                   "pydoc:calib, stdlib:calib, a file, folder or .jsonl.")] = None,
    n_samples: Annotated[int, typer.Option(help="Calibration windows.")] = 16,
    seq_len: Annotated[int, typer.Option(help="Tokens per calibration window.")] = 512,
    targets: Annotated[list[str] | None, typer.Option("--targets", help="Regex of Linear names to quantize (repeatable).")] = None,
    ignore: Annotated[list[str] | None, typer.Option("--ignore", help="Regex of module names to keep in full precision "
                                                     "(repeatable); replaces the default (lm_head); 'none' keeps nothing.")] = None,
    embeddings: Annotated[bool, typer.Option("--embeddings", help="Quantize nn.Embedding tables too (kept by default).")] = False,
    budget: Annotated[str | None, typer.Option(help="Mixed precision to a size: bits per weight over the quantized "
                                                   "layers (4.5) or the model's size (90MB). One symmetric grid per "
                                                   "Linear (2-8 bits, groups 32-128, or kept), q/k/v and gate/up "
                                                   "sharing one, least predicted KL; --calib is the sensitivity data "
                                                   "(default pydoc:calib).")] = None,
    grids: GridsOption = None,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a killed run from its last finished block "
                                                          "(OUT.partial); the result is the same file.")] = False,
    max_memory: Annotated[str | None, typer.Option(help="Memory one block may use, e.g. 8GiB (default: what "
                                                        "the machine has free).")] = None,
    device: Annotated[str, typer.Option(help="Where each block is computed: cpu, cuda, cuda:N or auto.")] = "cpu",
) -> None:
    """Quantize MODEL and save a checkpoint that `lowbit eval`, `lowbit export` and the Python API reload.

    A Hugging Face directory, a .gguf file or a built-in streams block by block: one block in memory at a
    time, in the model's own dtype on disk, so a 13B model quantizes in a few GiB; calibration activations
    that do not fit go to disk beside the output.

    Methods: rtn, gptq, awq, hqq (integer grids: --bits, --group-size, --asym), nf4 / fp4 (bitsandbytes-style
    4-bit), int8 (LLM.int8), w8a8 (int8 weights and activations), gguf (a GGML type). Each method's own
    options are listed under "Method options"; the method's config rejects the others."""
    from lowbit import api

    if budget is not None or grids is not None:
        _budget(model, out_dir, budget, method, Grid(bits, group_size, asym, scale_dtype), calib, n_samples, seq_len,
                bool(targets or ignore or embeddings or resume), overwrite, grids)
        return
    config = build_config(method, Grid(bits, group_size, asym, scale_dtype), given_options(ctx))
    if api.get_method(method).needs and calib is None:
        calib = "pydoc:calib"
        err.print(f"{method} needs calibration data; using the built-in pydoc:calib ({n_samples} x {seq_len} tokens)")
    settings = api.CalibSettings(calib, n_samples, seq_len) if calib else None
    if ignore is not None and [i.lower() for i in ignore] == ["none"]:
        ignore = []
    _quiet_libraries()
    report = api.quantize_to(model, config, out_dir, calib=settings, targets=targets, ignore=ignore,
                             embeddings=embeddings, overwrite=overwrite, resume=resume, max_memory=max_memory,
                             device=device)
    out.print(_summary(report, out_dir), highlight=False)


def _budget(model: str, out_dir: Path, budget: str | None, method: str, grid: Grid, calib: str | None, n_samples: int,
            seq_len: int, selection: bool, overwrite: bool, grids: str | None = None) -> None:
    from lowbit import api
    from lowbit.errors import InputError

    if budget is None:
        raise InputError("--grids narrows what --budget chooses from; without --budget use --bits and --group-size")
    if any(v is not None for v in (grid.bits, grid.group_size, grid.asym)):
        raise InputError("--budget chooses each layer's grid; drop --bits, --group-size and --asym/--sym")
    if selection:
        raise InputError("--budget allocates every Linear but the head; --targets, --ignore, --embeddings and "
                         "--resume do not apply")
    _quiet_libraries()
    names = None if grids is None else [g.strip() for g in grids.split(",") if g.strip()]
    q = api.budget_quantize_to(model, out_dir, budget, method=method, grids=names,
                               calib=api.CalibSettings(calib or "pydoc:calib", n_samples, seq_len), overwrite=overwrite)
    b = q.quant["budget"]
    grids: dict[str, int] = {}
    for g in b["grids"].values():
        grids[g] = grids.get(g, 0) + 1
    out.print(f"{method} budget {b['budget']}: {b['bpw']:.3f} bits/weight, predicted KL {b['predicted_kl']:.4f}; "
              f"layers by grid: {', '.join(f'{g} {n}' for g, n in sorted(grids.items()))} -> {out_dir}", highlight=False,
              soft_wrap=True)


def _summary(report: Any, out_dir: Path) -> str:
    """One line: what was quantized and kept, the size, the time and the calibration cost."""
    spec = getattr(report.config, "spec", None)
    line = (f"{report.method if spec is None else f'{report.method} {spec}'}: {len(report.layers)} layers quantized "
            f"({len(report.skipped)} kept: {', '.join(report.skipped) or 'none'}), "
            f"{report.bits_per_weight:.3f} bits/weight, {report.seconds:.1f} s")
    cal = report.calibration
    if cal is not None and cal.tokens:
        line += f", {cal.tokens} calibration tokens"
    if cal is not None and cal.peak_rss_bytes:
        line += f", peak RSS {cal.peak_rss_bytes / 2**20:.0f} MiB"
    found = ", ".join(f"{k} {v}" for k, v in report.details.items() if isinstance(v, (bool, int, float, str)))
    return line + (f" ({found})" if found else "") + f" -> {out_dir}"
