"""RTN on the real models: smollm2 (PPL, KL, top-1 vs the float32 reference) and minilm (cosine).

    python bench/rtn.py [--quick] [--json FILE]

--quick: 4 eval windows of 512 tokens (smollm2) and 64 passages (minilm); the full run uses 16 and 256.
Speeds are measured in this process, so read them as ratios to the float32 reference of the same run.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # as the CLI does, before numpy is imported

import torch
from rich.console import Console

from lowbit import api
from lowbit.metrics.run import EvalSettings, Evaluator
from lowbit.loaders import load_model
from lowbit.report import results_table, write_json
from lowbit.spec import QuantSpec

VARIANTS = [
    QuantSpec(8, True, -1),
    QuantSpec(4, True, 64),
    QuantSpec(4, False, 64),
    QuantSpec(4, True, -1),
    QuantSpec(3, True, 64),
    QuantSpec(3, False, 64),
]


def run_model(name: str, settings: EvalSettings, console: Console) -> list[dict]:
    t0 = time.perf_counter()
    ref = load_model(name)
    console.print(f"[dim]{name}: loaded in {time.perf_counter() - t0:.1f} s[/]")
    ev = Evaluator(ref, settings)
    base = ev.run(ref, label=f"{name} fp32")
    results, rows = [base], []
    extra = {base.model: {"quantize s": "–", "size ×": "1.00"}}
    for spec in VARIANTS:
        qh, rep = api.quantize(ref, api.make_config("rtn", spec))
        r = ev.run(qh, label=f"{name} rtn {spec}")
        results.append(r)
        extra[r.model] = {"quantize s": f"{rep.seconds:.2f}", "size ×": f"{r.size_bytes / base.size_bytes:.3f}"}
        row = r.to_dict()
        row.update(spec=spec.to_dict(), quantize_seconds=rep.seconds, size_ratio=r.size_bytes / base.size_bytes,
                   prefill_ratio=(r.prefill_tok_s or 0) / base.prefill_tok_s if base.prefill_tok_s else None,
                   decode_ratio=(r.decode_tok_s or 0) / base.decode_tok_s if base.decode_tok_s else None,
                   ppl_ratio=(r.ppl / base.ppl) if r.ppl and base.ppl else None)
        rows.append(row)
        del qh
    console.print(results_table(results, title=f"{name}: RTN on {settings.data}", extra=extra))
    return [dict(base.to_dict(), spec=None)] + rows


def markdown(out: dict) -> str:
    """The tables of docs/benchmarks.md, from the figures this script writes."""
    lines: list[str] = []
    for name, rows in out["models"].items():
        ref = rows[0]
        p = ref["protocol"]
        if ref["kind"] == "causal-lm":
            lines += [f"### {name} (float32 reference: PPL {ref['ppl']:.3f}, {ref['size_bytes'] / 1e6:.1f} MB, "
                      f"prefill {ref['prefill_tok_s']:.0f} tok/s, decode {ref['decode_tok_s']:.1f} tok/s)", "",
                      f"{p['data']}, {p['windows']} windows x {p['seq_len']} tokens, seed {p['seed']}, "
                      f"{ref['n_tokens']} predicted tokens.", "",
                      "| spec | PPL | ΔPPL | KL mean | KL p99 | top-1 | bpw | model MB | size × fp32 | prefill × fp32 "
                      "| decode × fp32 | quantize s |", "|---|" + "---|" * 11]
            for r in rows[1:]:
                lines.append(f"| {r['model'].split('rtn ')[1]} | {r['ppl']:.3f} | {100 * (r['ppl_ratio'] - 1):+.1f}% | "
                             f"{r['kl_mean']:.4f} | {r['kl_p99']:.3f} | {r['top1_agreement']:.3f} | {r['bits_per_weight']:.3f} | "
                             f"{r['size_bytes'] / 1e6:.1f} | {r['size_ratio']:.3f} | {r['prefill_ratio']:.2f} | "
                             f"{r['decode_ratio']:.2f} | {r['quantize_seconds']:.2f} |")
        else:
            lines += [f"### {name} (float32 reference: {ref['size_bytes'] / 1e6:.1f} MB, prefill {ref['prefill_tok_s']:.0f} tok/s)",
                      "", f"{p['data']}, {p['windows']} passages, mean-pooled embeddings, max 128 tokens.", "",
                      "| spec | cosine mean | cosine min | bpw | model MB | size × fp32 | prefill × fp32 | quantize s |",
                      "|---|" + "---|" * 7]
            for r in rows[1:]:
                lines.append(f"| {r['model'].split('rtn ')[1]} | {r['cosine_mean']:.5f} | {r['cosine_min']:.5f} | "
                             f"{r['bits_per_weight']:.3f} | {r['size_bytes'] / 1e6:.1f} | {r['size_ratio']:.3f} | "
                             f"{r['prefill_ratio']:.2f} | {r['quantize_seconds']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few windows; finishes in a few minutes")
    p.add_argument("--json", dest="json_out", help="write the figures here")
    p.add_argument("--models", default="smollm2,minilm")
    p.add_argument("--markdown", help="also write the tables as markdown here (for docs/benchmarks.md)")
    args = p.parse_args(argv)
    console = Console(width=200)
    windows = 4 if args.quick else 16
    t0 = time.perf_counter()
    out: dict = {
        "command": "python bench/rtn.py" + (" --quick" if args.quick else "") + (f" --json {args.json_out}" if args.json_out else ""),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "python": sys.version.split()[0]},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "models": {},
    }
    for name in args.models.split(","):
        settings = EvalSettings(data="pydoc:eval", windows=windows, texts=16 * windows)
        out["models"][name] = run_model(name, settings, console)
    out["seconds"] = time.perf_counter() - t0
    console.print(f"[dim]bench finished in {out['seconds']:.0f} s[/]")
    if args.json_out:
        write_json(out, args.json_out)
        console.print(f"wrote {args.json_out}")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(out))
        console.print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
