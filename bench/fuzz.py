"""Hostile input: malformed variants of valid tiny seeds (GGUF, safetensors, Hugging Face directories,
lowbit checkpoints, imatrix files), each run through `lowbit inspect`'s reader and the load path of
`lowbit quantize` in a forked child under a 1 GiB address-space limit and a timeout (tests/fuzz/).

    python bench/fuzz.py [--cases N] [--seed S] [--timeout SECONDS] [--json FILE]

Every structured case first (each hostile category of issue 16), then random truncations, bit flips and
byte overwrites of each seed's header. Counts by category and outcome: ``error`` is one clean line, ``ok``
loaded (harmless damage); ``traceback``, ``hang`` and ``crash`` are failures. Peak memory is the child's
resident high-water mark, this process' own pages included.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fuzz.cases import generate
from fuzz.runner import run
from fuzz.seeds import build
from rich.console import Console
from rich.table import Table

from lowbit.progress import track
from lowbit.report import write_json

FAILURES = ("traceback", "hang", "crash")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--quick", action="store_true", help="400 cases")
    p.add_argument("--json", dest="json_out")
    args = p.parse_args(argv)
    n = 400 if args.quick else args.cases
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lowbit-fuzz-seeds-") as d:
        seeds = build(Path(d))
        outcomes = [run(c, seeds, timeout=args.timeout) for c in track(generate(n, args.seed), "fuzz")]
    by_cat: dict[str, Counter] = defaultdict(Counter)
    for o in outcomes:
        by_cat[o.category][o.status] += 1
    statuses = ["error", "ok", *FAILURES]
    t = Table(title=f"{n} hostile inputs (seed {args.seed}): outcome by category")
    for c in ("category", *statuses, "peak MiB"):
        t.add_column(c, justify="left" if c == "category" else "right")
    for cat in sorted(by_cat):
        peak = max(o.peak_mib for o in outcomes if o.category == cat)
        t.add_row(cat, *(str(by_cat[cat][s]) for s in statuses), f"{peak:.0f}")
    total = Counter(o.status for o in outcomes)
    t.add_row("all", *(str(total[s]) for s in statuses), f"{max(o.peak_mib for o in outcomes):.0f}")
    console = Console(width=140)
    console.print(t)
    failures = [o for o in outcomes if o.status in FAILURES]
    for o in failures[:20]:
        console.print(f"[red]{o.status}[/] {o.id}: {o.message}")
    seconds = time.perf_counter() - t0
    console.print(f"[dim]{n} cases in {seconds:.0f} s[/]")
    if args.json_out:
        write_json({"command": "python bench/fuzz.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                    "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": {"platform": platform.platform()},
                    "cases": n, "seed": args.seed, "seconds": seconds,
                    "counts": {s: total[s] for s in statuses}, "tracebacks": total["traceback"], "hangs": total["hang"],
                    "crashes": total["crash"], "peak_mib_max": max(o.peak_mib for o in outcomes),
                    "by_category": {k: dict(v) for k, v in sorted(by_cat.items())},
                    "failures": [vars(o) for o in failures]}, args.json_out)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
