"""Mixed precision to a size budget against llama.cpp's fixed mixes, on smollm2.

    python bench/budget.py [--quick] [--json FILE]

For each fixed mix (Q3_K_S ... Q6_K; --quick: Q3_K_M and Q4_K_M) lowbit writes the mix's file, then a
budget file no larger than it (`lowbit export --budget SIZE`), both without and with the same
importance matrix (pydoc:calib). Both files are scored by their exact weights on pydoc:eval and
stdlib:eval (KL to the float model; calibration saw only pydoc:calib). Also measured:

- the proxy: predicted against measured dKL of single-tensor perturbations, a stratified sample of
  (tensor, type) pairs; Spearman over all pairs and within each type;
- additivity: the allocation's summed prediction against the measured KL of its file;
- time: the allocation (Fisher pass, every tensor in every type, solve) against one GPTQ run (W4 g128,
  the default calibration of 16 x 512 tokens of pydoc:calib).

The reference. smollm2 ships as SmolLM2-135M-Instruct.Q4_1.gguf, so its "float" weights lie on Q4_1's
grid (and its embedding on Q8_0's). Against such a reference, types that can reproduce the grid measure
as (nearly) lossless: Q4_1 exactly (dKL 0), Q5_1 with an importance matrix (a step of half Q4_1's hits
every Q4_1 level), Q4_K nearly. The allocator finds and uses them, and the fixed mixes (Q5_0 where
smollm2's 576-wide rows refuse Q4_K) cannot: the comparison would flatter the allocator for a reason
no real float model has. By default (``--reference dithered``) every quantized block of the reference
therefore gets uniform noise of +-1/2 of its own grid step (Q4_1: (max - min) / 15; Q8_0: max|w| / 127),
seeded: a model with continuous weights, the size of a fresh Q4_1 error away from the shipped one, and
every type, Q4_1 included, is a candidate. ``--reference shipped`` scores against the file as shipped
with Q4_1 withheld from the allocator, and shows the artifact.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from rich.console import Console
from rich.table import Table

from lowbit import api
from lowbit.budget.allocate import allocate, export_allocation, sensitivity
from lowbit.budget.fisher import collect_fisher
from lowbit.budget.sensitivity import GGUF_CANDIDATES
from lowbit.budget.solve import Budget
from lowbit.budget.validate import Perturber, proxy_check
from lowbit.calib import load_corpus, token_windows
from lowbit.calib.imatrix import compute_imatrix
from lowbit.loaders import load_model
from lowbit.metrics.run import EvalSettings, Evaluator
from lowbit.report import write_json
from lowbit.writers.gguf import export_gguf, load_into

MIXES = ("Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K")
QUICK_MIXES = ("Q3_K_M", "Q4_K_M")
EVAL_SETS = ("pydoc:eval", "stdlib:eval")
SHIPPED_TYPES = tuple(t for t in GGUF_CANDIDATES if t != "Q4_1")  # see the module docstring


def dithered(ref, seed: int = 0):
    """``ref`` (smollm2 from its Q4_1 GGUF) with every quantized block moved off its grid, in place:
    uniform noise of +-1/2 of the block's step (see the module docstring)."""
    import gguf
    import numpy as np
    import torch

    from lowbit.writers.gguf import tensor_names

    src = {t.name: t.tensor_type.name for t in gguf.GGUFReader(ref.gguf_source).tensors}
    rng = np.random.default_rng(seed)
    for hf, g in tensor_names(ref.model):
        kind = src.get(g)
        if kind not in ("Q4_1", "Q8_0"):
            continue
        p = ref.model.get_parameter(hf)
        w = p.detach().numpy().reshape(-1, 32)
        step = (w.max(1) - w.min(1)) / 15 if kind == "Q4_1" else np.abs(w).max(1) / 127
        noise = (rng.random(w.shape, dtype=np.float32) - 0.5) * step[:, None]
        with torch.no_grad():
            p.copy_(torch.from_numpy((w + noise).reshape(p.shape)))
    return ref


def _kl(evs: dict, path: Path, ref) -> dict[str, float]:
    h = load_into(path, ref)
    return {d: float(ev.run(h).kl_mean) for d, ev in evs.items()}


def _gptq_seconds(ref) -> float:
    t0 = time.perf_counter()
    api.quantize(ref, api.make_config("gptq"), calib=api.CalibSettings("pydoc:calib"))
    return time.perf_counter() - t0


def timing(args: argparse.Namespace, console: Console) -> dict:
    """The allocation's cost alone, on an idle machine: one GPTQ run, then the Fisher pass and every
    tensor in every type (without and with an importance matrix) and the solve, as `export --budget` runs them."""
    ref = load_model("smollm2")
    gptq = _gptq_seconds(ref)
    ids = token_windows(load_corpus("pydoc:calib"), ref.tokenizer, args.calib, 512, 0)
    out = {"calib_windows": args.calib, "gptq_seconds": gptq}
    t0 = time.perf_counter()
    fisher = collect_fisher(ref.model, ids)
    for setting, imx in (("", None), ("_imatrix", compute_imatrix(ref.model, ids).weights())):
        t1 = time.perf_counter()
        allocate(sensitivity(ref, ids, imx, fisher=fisher), Budget(bpw=6.0))
        out[f"allocation_seconds{setting}"] = fisher.seconds + time.perf_counter() - t1
        console.print(f"allocation{setting or ' (no imatrix)'}: {out[f'allocation_seconds{setting}']:.0f} s = "
                      f"{out[f'allocation_seconds{setting}'] / gptq:.2f}x one GPTQ run ({gptq:.0f} s)")
    out["fisher_seconds"] = fisher.seconds
    out["timing_seconds"] = time.perf_counter() - t0
    return out


def run(args: argparse.Namespace, console: Console) -> dict:
    ref = load_model("smollm2")
    types = GGUF_CANDIDATES if args.reference == "dithered" else SHIPPED_TYPES
    if args.reference == "dithered":
        dithered(ref)
    ids = token_windows(load_corpus("pydoc:calib"), ref.tokenizer, args.calib, 512, 0)
    evs = {d: Evaluator(ref, EvalSettings(data=d, windows=args.windows, speed=False)) for d in EVAL_SETS}
    for ev in evs.values():
        ev.run(ref)  # the reference's log-probs, once
    im = compute_imatrix(ref.model, ids, dataset="pydoc:calib").weights()
    fisher = collect_fisher(ref.model, ids)
    out: dict = {"reference": args.reference, "calib_windows": args.calib, "eval_windows": args.windows,
                 "types": list(types), "rows": []}
    tmp = Path(tempfile.mkdtemp(prefix="lowbit-budget-"))
    sens_none = None
    for setting, imx in (("none", None), ("imatrix", im)):
        sens = sensitivity(ref, ids, imx, types, fisher=fisher)
        sens_none = sens_none or sens
        for mix in QUICK_MIXES if args.quick else MIXES:
            fixed = tmp / f"{mix}-{setting}.gguf"
            export_gguf(ref, fixed, mix, imatrix=imx)
            size = fixed.stat().st_size
            alloc = allocate(sens, Budget(nbytes=size))
            mine = tmp / f"budget-{mix}-{setting}.gguf"
            export_allocation(ref, str(mine), alloc, imatrix=imx)
            assert mine.stat().st_size == alloc.file_bytes, (mine.stat().st_size, alloc.file_bytes)
            row = {"mix": mix, "imatrix": setting == "imatrix", "mix_bytes": size, "budget_bytes": alloc.file_bytes,
                   "budget_bpw": alloc.bpw, "mix_kl": _kl(evs, fixed, ref), "budget_kl": _kl(evs, mine, ref),
                   "predicted_kl": alloc.predicted_dkl, "allocation_seconds": sum(alloc.seconds.values()),
                   "types": dict(sorted(_type_bytes(alloc).items()))}
            out["rows"].append(row)
            console.print(_row_line(row))
            fixed.unlink()
            mine.unlink()
        if setting == "none":
            out["allocation_seconds"] = fisher.seconds + sens.seconds["types"] + sens.seconds["header"]
    work = copy.deepcopy(ref)
    pc = proxy_check(Perturber(work, evs["pydoc:eval"]._ref_lm, evs["pydoc:eval"].windows(ref.tokenizer)),
                     sens_none, n=args.pairs)
    out.update(proxy_spearman=pc.spearman, proxy_within_type=pc.within_type,
               proxy_pairs=[list(p) for p in pc.pairs], gptq_seconds=_gptq_seconds(ref))
    _summary(out)
    return out


def _type_bytes(alloc) -> dict[str, int]:
    share: dict[str, int] = {}
    for _, t, n, _ in alloc.table():
        share[t] = share.get(t, 0) + n
    return share


def _row_line(r: dict) -> str:
    kl = " ".join(f"{d.split(':')[0]} {r['mix_kl'][d]:.4f} -> {r['budget_kl'][d]:.4f} ({r['budget_kl'][d] / r['mix_kl'][d]:.2f}x)"
                  for d in EVAL_SETS)
    return (f"{r['mix']:7} imatrix={r['imatrix']!s:5} {r['mix_bytes']:,} vs {r['budget_bytes']:,} B: {kl}; "
            f"predicted {r['predicted_kl']:.4f}")


def _summary(out: dict) -> None:
    """The keys the issue names: the no-imatrix figures plain, the imatrix ones with an _imatrix suffix."""
    for r in out["rows"]:
        if r["mix"] not in ("Q4_K_M", "Q3_K_M"):
            continue
        k, sfx = r["mix"].lower(), "_imatrix" if r["imatrix"] else ""
        out[f"{k}_bytes{sfx}"] = r["mix_bytes"]
        out[f"budget_at_{k}_bytes{sfx}"] = r["budget_bytes"]
        for d in EVAL_SETS:
            ev = d.split(":")[0]
            out[f"{k}_kl_{ev}{sfx}"] = r["mix_kl"][d]
            out[f"budget_at_{k}_kl_{ev}{sfx}"] = r["budget_kl"][d]
        if r["mix"] == "Q4_K_M" and not r["imatrix"]:
            out["additivity_predicted_kl"] = r["predicted_kl"]
            out["additivity_measured_kl"] = r["budget_kl"]["pydoc:eval"]


def _table(out: dict) -> Table:
    t = Table(title="smollm2: budget file vs llama.cpp mix of the same size (KL to float)")
    for c in ("mix", "imatrix", "mix MB", "budget MB", "bpw", *(f"{d} mix / budget" for d in EVAL_SETS), "predicted"):
        t.add_column(c)
    for r in out["rows"]:
        t.add_row(r["mix"], "yes" if r["imatrix"] else "no", f"{r['mix_bytes'] / 1e6:.2f}", f"{r['budget_bytes'] / 1e6:.2f}",
                  f"{r['budget_bpw']:.3f}", *(f"{r['mix_kl'][d]:.4f} / {r['budget_kl'][d]:.4f} ({r['budget_kl'][d] / r['mix_kl'][d]:.2f}x)"
                                               for d in EVAL_SETS), f"{r['predicted_kl']:.4f}")
    return t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="Q3_K_M and Q4_K_M only, fewer windows and pairs")
    p.add_argument("--json", type=Path)
    p.add_argument("--timing", action="store_true", help="only the allocation's time against one GPTQ run (idle machine)")
    p.add_argument("--reference", choices=("dithered", "shipped"), default="dithered",
                   help="smollm2 off its Q4_1 grid (default), or as shipped with Q4_1 withheld (see above)")
    p.add_argument("--calib", type=int, default=None, help="calibration windows of 512 tokens (default 8; quick 4)")
    p.add_argument("--windows", type=int, default=None, help="eval windows of 512 tokens per set (default 8; quick 4)")
    p.add_argument("--pairs", type=int, default=None, help="(tensor, type) pairs for the proxy check (default 40; quick 16)")
    args = p.parse_args(argv)
    args.calib = args.calib or (4 if args.quick else 8)
    args.windows = args.windows or (4 if args.quick else 8)
    args.pairs = args.pairs or (16 if args.quick else 40)
    console = Console()
    t0 = time.perf_counter()
    if args.timing:
        out = timing(args, console)
        if args.json:
            write_json(out, args.json)
        return 0
    out = run(args, console)
    out["bench_seconds"] = time.perf_counter() - t0
    console.print(_table(out))
    console.print(f"proxy Spearman {out['proxy_spearman']:.3f} over {len(out['proxy_pairs'])} pairs; within type: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in out["proxy_within_type"].items()))
    console.print(f"additivity: predicted {out['additivity_predicted_kl']:.4f}, measured {out['additivity_measured_kl']:.4f}")
    console.print(f"allocation {out['allocation_seconds']:.0f} s vs one GPTQ run {out['gptq_seconds']:.0f} s "
                  f"({out['allocation_seconds'] / out['gptq_seconds']:.2f}x)")
    if args.json:
        write_json(out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
