"""Speed under load: `lowbit compare smollm2 --methods rtn-w8,rtn-w4g64` once on an otherwise idle machine and
once with a CPU-burning process beside it (one busy loop per core), each in a fresh report directory.

    python bench/compare_load.py [--methods rtn-w8,rtn-w4g64] [--json FILE]

Each candidate's prefill and decode ratios to fp32 (compare times them interleaved with the fp32 model, pair
by pair) must stay within 25% of the idle run's, or the loaded run must mark that ratio "measured under load".
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time

from rich.console import Console
from rich.table import Table

from lowbit.compare import CompareSettings, compare
from lowbit.report import write_json

BURN = "while True: pass"


def run(methods: list[str], report: str) -> dict:
    s = CompareSettings(methods=methods, calib=None, windows=1, bar="kl=1")
    return {r["id"]: r for r in compare("smollm2", s, report)["candidates"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default="rtn-w8,rtn-w4g64")
    p.add_argument("--json", dest="json_out")
    args = p.parse_args(argv)
    methods = args.methods.split(",")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        idle = run(methods, os.path.join(d, "idle"))
        burners = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(os.cpu_count() or 1)]
        try:
            loaded = run(methods, os.path.join(d, "loaded"))
        finally:
            for b in burners:
                b.kill()
                b.wait()
    rows, ok = [], True
    for m in methods:
        for key in ("speed_ratio_vs_fp32", "decode_ratio_vs_fp32"):
            a, b = idle[m][key], loaded[m][key]
            marked = "measured under load" in loaded[m]["speed_note"]
            within = a is not None and b is not None and abs(b - a) <= 0.25 * a
            ok &= within or marked
            rows.append({"candidate": m, "ratio": key, "idle": a, "loaded": b, "within_25pct": within,
                         "marked_under_load": marked, "loaded_spread": loaded[m].get("speed_ratio_spread")})
    t = Table(title="compare's speed ratios to fp32: idle vs a busy loop on every core")
    for c in ("candidate", "ratio", "idle", "loaded", "within 25%", "marked under load"):
        t.add_column(c)
    for r in rows:
        t.add_row(r["candidate"], r["ratio"], f"{r['idle']:.2f}", f"{r['loaded']:.2f}", str(r["within_25pct"]),
                  str(r["marked_under_load"]))
    Console(width=140).print(t)
    print("criterion (each ratio within 25% of idle, or marked): " + ("holds" if ok else "FAILS"))
    if args.json_out:
        write_json({"command": "python bench/compare_load.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                    "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": {"platform": platform.platform(),
                                                                             "cpus": os.cpu_count()},
                    "rows": rows, "criterion_holds": ok, "seconds": time.perf_counter() - t0}, args.json_out)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
