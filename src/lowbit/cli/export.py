"""`lowbit export` (a format another runtime loads) and `lowbit imatrix` (llama.cpp's importance matrix)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer

from lowbit.cli import _quiet_libraries, command, err, out


@command()
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
    budget: Annotated[str | None, typer.Option(help="gguf: mixed precision to a size: bits per weight (4.5) or a file size "
                                                   "(90MB, 1.5GiB). One type per tensor, least predicted KL; --calib is then "
                                                   "the sensitivity data (default pydoc:calib), and an imatrix is used only "
                                                   "if --imatrix gives one.")] = None,
    tensor_type_file: Annotated[Path | None, typer.Option(help="gguf --budget: also write the overrides with which "
                                                                "llama-quantize --tensor-type-file writes the same file "
                                                                "from lowbit's F32 export.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
) -> None:
    """Export a model in a format another runtime loads. A lowbit checkpoint (compressed-tensors,
    bitsandbytes) and a Hugging Face directory or .gguf file (gguf) are read one block at a time."""
    from lowbit import api
    from lowbit.errors import InputError

    if budget is not None or tensor_type_file is not None:
        _budget(model, out_path, fmt, budget, tensor_type_file, tensor_type, imatrix, calib, n_samples, seq_len, overwrite)
        return
    gguf = None
    if fmt == "gguf":
        gguf = api.GGUFSettings(gguf_type, tuple(tensor_type or ()), imatrix,
                                api.CalibSettings(calib, n_samples, seq_len) if calib is not None else None)
    elif imatrix or calib or tensor_type:
        raise InputError("--imatrix, --calib and --tensor-type apply to --format gguf only")
    _quiet_libraries()
    # a spinner while loading and writing, unless the imatrix computation shows its own progress bar
    with contextlib.nullcontext() if calib is not None else err.status(f"exporting {model} to {fmt}"):
        path = api.export_to(model, out_path, fmt, gguf=gguf, overwrite=overwrite)
    size = path.stat().st_size if path.is_file() else (path / "model.safetensors").stat().st_size
    out.print(f"{fmt}{' ' + gguf.type.upper() if gguf else ''} -> {path} ({size:,} bytes)")


def _budget(model: str, out_path: Path, fmt: str, budget: str | None, tt_file: Path | None, tensor_type: list[str] | None,
            imatrix: Path | None, calib: str | None, n_samples: int, seq_len: int, overwrite: bool) -> None:
    from lowbit import api
    from lowbit.errors import InputError

    if fmt != "gguf":
        raise InputError("--budget and --tensor-type-file apply to --format gguf (torch checkpoints: lowbit quantize --budget)")
    if budget is None:
        raise InputError("--tensor-type-file is written by a --budget export; give --budget")
    if tensor_type:
        raise InputError("--budget chooses every tensor's type; drop --tensor-type")
    _quiet_libraries()
    alloc = api.budget_export_to(model, out_path, budget, calib=api.CalibSettings(calib or "pydoc:calib", n_samples, seq_len),
                                 imatrix=imatrix, tensor_type_file=tt_file, overwrite=overwrite)
    shares: dict[str, int] = {}
    for _, t, n, _ in alloc.table():
        shares[t] = shares.get(t, 0) + n
    total = sum(shares.values())
    mix = ", ".join(f"{t} {n / total:.0%}" for t, n in sorted(shares.items(), key=lambda kv: -kv[1]))
    out.print(f"gguf budget {alloc.budget} -> {out_path} ({alloc.file_bytes:,} bytes, {alloc.bpw:.3f} bpw)", soft_wrap=True)
    out.print(f"predicted KL {alloc.predicted_dkl:.4f}; bytes by type: {mix}", soft_wrap=True)
    if tt_file is not None:
        out.print(f"llama-quantize --tensor-type-file {tt_file}: {len(alloc.table())} tensors", soft_wrap=True)


@command("imatrix")
def imatrix_cmd(
    model: Annotated[str, typer.Argument(help="The model to measure (full precision).")],
    out_path: Annotated[Path, typer.Option("--out", help="imatrix file: .gguf (llama.cpp's current format) or .dat (legacy).")],
    calib: Annotated[str, typer.Option(help="Calibration data.")] = "pydoc:calib",
    n_samples: Annotated[int, typer.Option(help="Calibration windows.")] = 16,
    seq_len: Annotated[int, typer.Option(help="Tokens per window.")] = 512,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
) -> None:
    """Compute an importance matrix (mean x^2 per input column) that llama-quantize and lowbit read."""
    from lowbit import api

    _quiet_libraries()
    im = api.imatrix_to(model, out_path, api.CalibSettings(calib, n_samples, seq_len), overwrite=overwrite)
    out.print(f"imatrix of {len(im.sums)} tensors from {n_samples} x {seq_len} tokens of {calib} -> {out_path}")
