"""`lowbit quantize --budget` (one grid per Linear) on smollm2, with and without NF4 among the grids,
against uniform RTN w4g64 and NF4 (double quant) at about the same bits.

    python bench/budget_grids.py [--quick] [--json FILE]

The reference is smollm2 dithered off its Q4_1 grid, as in bench/budget.py (see its docstring: against the
shipped grid, the types that reproduce it look free). The sensitivity is the Fisher of pydoc:calib; every
model is scored on pydoc:eval and stdlib:eval (KL to the reference). Bits per weight are over the quantized
Linear layers (every Linear but the head), as `lowbit quantize` reports them.
--quick: one budget, 2 calibration and 2 eval windows.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from budget import EVAL_SETS, dithered
from rich.console import Console
from rich.table import Table

from lowbit import api
from lowbit.budget.fisher import collect_fisher
from lowbit.budget.grids import GRIDS, NF4, allocate_grids, quantize_grids
from lowbit.budget.solve import Budget
from lowbit.calib import load_corpus, token_windows
from lowbit.loaders import load_model
from lowbit.metrics.run import EvalSettings, Evaluator
from lowbit.report import write_json
from lowbit.spec import QuantSpec


def run(args: argparse.Namespace, console: Console) -> dict:
    ref = dithered(load_model("smollm2"))
    ids = token_windows(load_corpus("pydoc:calib"), ref.tokenizer, args.calib, 512, 0)
    evs = {d: Evaluator(ref, EvalSettings(data=d, windows=args.windows, speed=False)) for d in EVAL_SETS}
    for ev in evs.values():
        ev.run(ref)
    t0 = time.perf_counter()
    fisher = collect_fisher(ref.model, ids)
    out: dict = {"calib_windows": args.calib, "eval_windows": args.windows, "fisher_seconds": time.perf_counter() - t0,
                 "rows": []}

    def score(name: str, h, bpw: float, predicted: float | None = None, grids: dict | None = None) -> None:
        row = {"model": name, "bpw": bpw, "predicted_kl": predicted,
               **{f"kl_{d.split(':')[0]}": float(ev.run(h).kl_mean) for d, ev in evs.items()}}
        if grids is not None:
            row["layers_by_grid"] = {g: list(grids.values()).count(g) for g in sorted(set(grids.values()))}
        out["rows"].append(row)
        console.print(row)

    for name, cfg in (("rtn-w4g64 (uniform)", api.make_config("rtn", QuantSpec(4, True, 64))),
                      ("nf4 dq (uniform)", api.make_config("nf4", double_quant=True))):
        h, rep = api.quantize(ref, cfg)
        score(name, h, rep.bits_per_weight)
    for bpw in (4.25,) if args.quick else (4.25, 4.5):
        for label, grids in (("integer grids", None), ("integer grids + nf4", [*GRIDS, NF4])):
            alloc = allocate_grids(ref, fisher, Budget(bpw=bpw), grids)
            score(f"budget {bpw} bpw, {label}", quantize_grids(ref, alloc), alloc.bpw, alloc.predicted_dkl, alloc.specs())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    args.calib, args.windows = (2, 2) if args.quick else (8, 4)
    console = Console()
    t0 = time.perf_counter()
    out = run(args, console)
    out["seconds"] = time.perf_counter() - t0
    t = Table(title="smollm2 (dithered): one grid per Linear, with and without NF4")
    for col in ("model", "bpw", "KL pydoc:eval", "KL stdlib:eval", "predicted", "layers by grid"):
        t.add_column(col)
    for r in out["rows"]:
        t.add_row(r["model"], f"{r['bpw']:.3f}", f"{r['kl_pydoc']:.4f}", f"{r['kl_stdlib']:.4f}",
                  "-" if r["predicted_kl"] is None else f"{r['predicted_kl']:.4f}",
                  ", ".join(f"{g} {n}" for g, n in r.get("layers_by_grid", {}).items()))
    console.print(t)
    if args.json:
        write_json(out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
