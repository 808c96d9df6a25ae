"""`lowbit compare --cluster`: one sweep of RTN / HQQ / GPTQ candidates on smollm2, on a local Ray
node of one CPU and on two nodes of one CPU each (loopback, this machine's two cores), against the same
sweep run locally without Ray (torch, numpy's BLAS and OpenMP on one thread, as each task runs).

    python bench/sweep.py [--quick] [--json FILE]

Reported: the wall time of each run from the driver (the reference row included, cluster start-up
not), the two-node / one-node ratio, whether every row's quality figures (KL, PPL, top-1, size, per-layer
error) equal the local run's, the retried tasks, and Ray's own cost per task: the round trip of a task
that does nothing (after the sweep, so on the sweep's warm workers; a fresh worker's start-up is inside
each task's seconds).
Full: 8 candidates, speed measured in every task against float32 on its node; --quick: 4 candidates,
no speed, fewer windows.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

TOKEN = secrets.token_hex(32)  # Ray reads its auth settings once, when imported: set them first
os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN, "RAY_USAGE_STATS_ENABLED": "0",
                   "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "LOWBIT_PROGRESS": "0"})

from rich.console import Console
from rich.table import Table

from lowbit.compare import CompareSettings
from lowbit.compare.local_cluster import LocalCluster

FULL = ["rtn-w8", "rtn-w4g64", "rtn-w4g32", "rtn-w3g64", "hqq-w4g64", "hqq-w3g64", "gptq-w4g64", "gptq-w3g64"]
QUICK = ["rtn-w8", "rtn-w4g64", "hqq-w4g64", "gptq-w4g64"]
QUALITY = ("kl_mean", "kl_p99", "ppl", "top1_agreement", "bits_per_weight", "size_bytes", "n_tokens", "layer_errors")


def settings(args: argparse.Namespace, cluster: str | None) -> CompareSettings:
    return CompareSettings(calib="pydoc:calib", eval="pydoc:eval", methods=QUICK if args.quick else FULL,
                           windows=1 if args.quick else 2, calib_samples=4 if args.quick else 8,
                           speed=not args.quick, cluster=cluster)


def sweep(args: argparse.Namespace, root: Path, cpus: tuple[int, ...] | None) -> tuple[float, list, object, dict | None]:
    """One run: locally (``cpus`` None, torch on one thread) or on a fresh cluster of ``cpus``."""
    import ray
    import torch

    from lowbit.compare.cluster import sweep as ray_sweep
    from lowbit.compare.run import Comparison

    report = root / f"report-{'local' if cpus is None else len(cpus)}"
    if cpus is None:
        from threadpoolctl import threadpool_limits

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:  # numpy's BLAS and OpenMP on one thread too, as Ray's OMP_NUM_THREADS=1 sets them in a task
            with threadpool_limits(1):
                t0 = time.perf_counter()
                res = Comparison("smollm2", settings(args, None), report).run()
            return time.perf_counter() - t0, res.candidates, None, None
        finally:
            torch.set_num_threads(threads)
    with LocalCluster(root / f"nodes-{len(cpus)}", cpus=cpus, token=TOKEN) as c:
        try:
            t0 = time.perf_counter()
            results, stats = ray_sweep([Comparison("smollm2", settings(args, c.address), report)])
            wall = time.perf_counter() - t0
            return wall, results[0].candidates, stats, overhead() if len(cpus) == 2 else None
        finally:
            ray.shutdown()


def overhead(n: int = 8) -> dict[str, float]:
    """Round trips of a task that does nothing (after importing torch, as lowbit's tasks do): the first
    call and the median of the next ``n``, on the workers the sweep left."""
    import ray

    @ray.remote(num_cpus=1)
    def nothing() -> int:
        import torch

        return torch.get_num_threads()

    times = []
    for _ in range(n + 1):
        t0 = time.perf_counter()
        ray.get(nothing.remote())
        times.append(time.perf_counter() - t0)
    return {"first": times[0], "warm": statistics.median(times[1:])}


def quality(rows: list) -> dict:
    return {r.id: {k: getattr(r, k) for k in QUALITY} for r in rows}


def differences(**runs: list) -> dict[str, dict[str, list[str]]]:
    """Per pair of runs, per candidate, the quality fields on which they disagree (empty: identical)."""
    qs = {name: quality(rows) for name, rows in runs.items()}
    names = list(qs)
    out = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            out[f"{a} vs {b}"] = {cid: [k for k in QUALITY if repr(qs[a][cid][k]) != repr(qs[b][cid][k])]
                                  for cid in qs[a] if qs[a][cid] != qs[b][cid]}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="4 candidates, 1 eval window, no speed (about 5 minutes)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    console = Console()
    with tempfile.TemporaryDirectory(prefix="lowbit-sweep-") as tmp:
        os.environ["LOWBIT_CACHE"] = str(Path(tmp) / "cache")  # the reference's log-probs: computed in the first run
        root = Path(tmp)
        local_s, local_rows, _, _ = sweep(args, root, None)
        one_s, one_rows, one, _ = sweep(args, root, (1,))
        two_s, two_rows, two, ray_cost = sweep(args, root, (1, 1))
    out = {"candidates": [r.id for r in two_rows], "local_seconds": local_s, "one_node_seconds": one_s,
           "two_node_seconds": two_s, "two_over_one": two_s / one_s,
           "rows_identical": quality(one_rows) == quality(local_rows) == quality(two_rows),
           "row_differences": differences(local=local_rows, one_node=one_rows, two_nodes=two_rows),
           "retried_tasks": one.retried + two.retried, "failed_tasks": one.failed + two.failed,
           "per_task_overhead_seconds": ray_cost["warm"], "first_task_overhead_seconds": ray_cost["first"],
           "nodes_used": sorted({r.node["ip"] for r in two_rows}),
           "overlapping_tasks": [list(p) for s in (one, two) for p in s.overlaps()],  # two tasks on one CPU at once
           "rows": {r.id: {"kl_mean": r.kl_mean, "bits_per_weight": r.bits_per_weight, "node": r.node["ip"],
                           "speed_ratio_vs_fp32": r.speed_ratio_vs_fp32, "task_seconds": two.task_seconds.get(f"smollm2 {r.id}")}
                    for r in two_rows},
           "quick": args.quick, "python": sys.version.split()[0]}
    t = Table(title="compare smollm2 on Ray: one node vs two (one CPU each)")
    for col in ("candidate", "KL", "bpw", "node (2-node run)", "speed vs fp32 there", "task s"):
        t.add_column(col)
    for cid, r in out["rows"].items():
        sp = r["speed_ratio_vs_fp32"]
        t.add_row(cid, f"{r['kl_mean']:.4f}", f"{r['bits_per_weight']:.2f}", r["node"], "-" if sp is None else f"{sp:.2f}x",
                  f"{r['task_seconds']:.0f}")
    console.print(t)
    console.print(f"local (no Ray, 1 thread) {local_s:.0f} s; one node {one_s:.0f} s; two nodes {two_s:.0f} s = "
                  f"{out['two_over_one']:.2f}x; rows identical: {out['rows_identical']}; retried {out['retried_tasks']}; "
                  f"Ray per task: {out['per_task_overhead_seconds'] * 1000:.0f} ms warm, "
                  f"{out['first_task_overhead_seconds'] * 1000:.0f} ms the first call; tasks overlapping on one CPU: "
                  f"{len(out['overlapping_tasks'])}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0 if out["rows_identical"] and out["two_over_one"] <= 0.65 and not out["overlapping_tasks"] else 1


if __name__ == "__main__":
    sys.exit(main())
