"""`lowbit hardware`: this machine's speed of every format against float32, for `lowbit plan`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from lowbit.cli import command, err, out


@command()
def hardware(
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the figures as JSON here.")] = None,
    repeats: Annotated[int, typer.Option(help="Timed repeats per format (the median is kept).")] = 7,
) -> None:
    """Time every format lowbit runs on this machine against float32; the ratios feed `lowbit plan`.

    Detects the machine (CPU ISA, cores, GPU) and times one smollm2-sized block of matmuls at batch 1
    (decode) and 64 (prefill), on the CPU and, where one is present, on the GPU. Formats slower than
    float32 are flagged."""
    from lowbit import api

    with err.status("timing every format on this machine"):
        check = api.check_hardware(repeats=repeats)
    for line in check.machine.lines():
        out.print(line, highlight=False)
    out.print(_speed_table(check.cpu, "CPU: one transformer block of matmuls (smollm2 shapes), median of repeats"))
    if check.gpu is not None:
        out.print(_speed_table(check.gpu, f"GPU ({check.machine.gpu}, compute capability "
                                          f"{check.machine.compute_capability}): the same block"))
    if json_out:
        import json

        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(check.to_dict(), indent=1))


def _speed_table(timings: list, title: str) -> Any:
    from rich.table import Table

    t = Table(title=title)
    for c in ("format", "decode ms (batch 1)", "x fp32", "prefill ms (batch 64)", "x fp32", ""):
        t.add_column(c, justify="left" if c in ("format", "") else "right")
    for r in timings:
        flag = "[red]slower than fp32 here[/]" if r.slower_than_fp32 else r.note
        t.add_row(r.label, f"{r.decode_ms:.3f}", f"{r.decode_ratio_vs_fp32:.2f}", f"{r.prefill_ms:.3f}",
                  f"{r.prefill_ratio_vs_fp32:.2f}", flag)
    return t
