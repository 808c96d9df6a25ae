"""`lowbit eval` (metrics against the full-precision reference) and `lowbit inspect` (bits per tensor)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from lowbit.cli import _quiet_libraries, command, out


@command("eval")
def eval_(
    model: Annotated[str, typer.Argument(help="A model or a lowbit checkpoint directory.")],
    data: Annotated[str, typer.Option(help="Evaluation data: pydoc:eval, stdlib:eval, a file, folder or .jsonl.")] = "pydoc:eval",
    reference: Annotated[str | None, typer.Option(help="Full-precision model to compare with (default: the checkpoint's source).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the metrics as JSON here.")] = None,
    windows: Annotated[int, typer.Option(help="Number of token windows (passages for encoders: x16).")] = 4,
    seq_len: Annotated[int, typer.Option(help="Tokens per window.")] = 512,
    seed: Annotated[int, typer.Option(help="Seed for sampling the windows.")] = 0,
    protocol: Annotated[str, typer.Option(help="windows (default) or llama-perplexity (consecutive chunks, BOS "
                                               "first, second half scored, as llama.cpp's tables).")] = "windows",
    speed: Annotated[bool, typer.Option(help="Measure prefill/decode speed.")] = True,
    runtime: Annotated[str, typer.Option(help="torch, or llama.cpp for a .gguf file (needs llama-cpp-python).")] = "torch",
    max_memory: Annotated[str | None, typer.Option(help="A model whose float32 weights exceed this (default: half "
                                                        "the free memory) runs block by block from its files.")] = None,
    device: Annotated[str, typer.Option(help="Where the model runs: cpu, or cuda, cuda:N, auto (block by block on "
                                              "the GPU, both the model and its reference).")] = "cpu",
) -> None:
    """Evaluate MODEL on your data: PPL, KL and top-1 vs the reference, size, bits/weight, speed.

    A model larger than memory (and its reference) runs block by block; the reference's log-probs are
    kept on disk, so the next candidate against the same reference does not run it again."""
    from lowbit import api
    from lowbit.metrics.run import EvalSettings
    from lowbit.report import results_table, write_json

    settings = EvalSettings(data=data, windows=windows, seq_len=seq_len, seed=seed, speed=speed, texts=16 * windows,
                            protocol=protocol)
    _quiet_libraries()
    result, ref_result = api.evaluate_against(model, settings, reference=reference, runtime=runtime,
                                                 max_memory=max_memory, device=device)
    results = [ref_result, result] if ref_result is not None else [result]
    out.print(results_table(results, title=f"{data}"))
    if json_out:
        d = result.to_dict()
        d["reference_result"] = ref_result.to_dict() if ref_result is not None else None
        write_json(d, json_out)
        out.print(f"wrote {json_out}")


@command()
def inspect(
    path: Annotated[Path, typer.Argument(help="A .gguf file, a .safetensors file or a checkpoint directory.")],
    all_tensors: Annotated[bool, typer.Option("--all", help="List every tensor, not only a summary by type.")] = False,
) -> None:
    """Show each tensor's type, shape and bits per weight, and the whole file's bits per weight."""
    from lowbit.report.inspect import inspect_path

    info = inspect_path(path)
    out.print(_tensor_table(info) if all_tensors else _type_table(info))
    total = sum(r.nbytes for r in info.tensors)
    out.print(f"{len(info.tensors)} tensors, {sum(r.numel for r in info.tensors):,} weights, "
              f"{total:,} bytes, {info.bpw:.3f} bits per weight overall")


def _tensor_table(info: Any) -> Any:
    from rich.table import Table

    t = Table(title=f"{info.path} ({info.format})")
    for c in ("tensor", "type", "shape", "bytes", "bpw"):
        t.add_column(c, justify="left" if c in ("tensor", "type") else "right")
    for r in info.tensors:
        t.add_row(r.name, r.dtype, "×".join(map(str, r.shape)), f"{r.nbytes:,}", f"{r.bpw:.3f}")
    return t


def _type_table(info: Any) -> Any:
    from rich.table import Table

    groups: dict[str, list[Any]] = {}
    for r in info.tensors:
        groups.setdefault(r.dtype, []).append(r)
    t = Table(title=f"{info.path} ({info.format}); --all lists every tensor")
    for c in ("type", "tensors", "weights", "bytes", "bpw"):
        t.add_column(c, justify="left" if c == "type" else "right")
    for k, rows in sorted(groups.items()):
        n, b = sum(r.numel for r in rows), sum(r.nbytes for r in rows)
        t.add_row(k, str(len(rows)), f"{n:,}", f"{b:,}", f"{8 * b / max(n, 1):.3f}")
    return t
