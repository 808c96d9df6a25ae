"""Compare two runs of the same bench JSON figure by figure: every quality figure (KL, PPL, top-1,
cosine, bits per weight, bytes, bit-exactness flags, alphas) must agree to 4 significant digits;
timings and dates are ignored. Used to check that a refactor left every number unchanged.

    python bench/same_figures.py BEFORE.json AFTER.json [--markdown FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

QUALITY = ("kl", "ppl", "top1", "cosine", "bits_per_weight", "bpw", "bit_exact", "byte_identical", "identical",
           "alpha", "size_bytes", "bytes", "n_tokens", "accuracy")
SKIP = ("seconds", "tok_s", "ratio", "date", "command", "machine", "peak_rss", "speed", "_ms", "time")


def figures(d: Any, path: str = "") -> dict[str, Any]:
    """path -> value for every quality figure in a nested JSON value (rows keyed by their label)."""
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(figures(v, f"{path}.{k}" if path else str(k)))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            key = next((v[k] for k in ("format", "mix", "method", "model", "id") if isinstance(v, dict) and k in v), i)
            tag = f"{key}/{v.get('impl', '')}/{v.get('spec', '')}/{v.get('imatrix', '')}" if isinstance(v, dict) else key
            out.update(figures(v, f"{path}[{tag}]"))
    else:
        leaf = path.rsplit(".", 1)[-1].lower()
        if any(s in leaf for s in SKIP) or not any(q in leaf for q in QUALITY):
            return out
        if isinstance(d, (int, float, bool)) or d is None:
            out[path] = d
    return out


def same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a == b
    if a == b:
        return True
    if not (math.isfinite(a) and math.isfinite(b)):
        return False
    return f"{a:.4g}" == f"{b:.4g}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--markdown")
    args = p.parse_args()
    a, b = (figures(json.loads(Path(f).read_text())) for f in (args.before, args.after))
    rows, bad = [], 0
    for k in sorted(set(a) | set(b)):
        ok = k in a and k in b and same(a[k], b[k])
        bad += not ok
        rows.append(f"| {k} | {a.get(k, 'missing')} | {b.get(k, 'missing')} | {'yes' if ok else '**NO**'} |")
    text = "| figure | before | after | same to 4 s.f. |\n|---|---|---|---|\n" + "\n".join(rows)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    print(f"{args.before} vs {args.after}: {len(rows)} figures, {bad} differ")
    for r in rows:
        if "**NO**" in r:
            print(r)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
