"""bitsandbytes-style NF4/FP4 and W8A8 (SmoothQuant-style) on the real models, with bitsandbytes' own
layers side by side in the same run.

    python bench/bnb_w8a8.py [--quick] [--json FILE] [--markdown FILE]

smollm2: PPL, KL and top-1 vs float32 on pydoc:eval; minilm: cosine on pydoc:eval passages. For each
format: bits per weight, and prefill (256 tokens) and decode (16 tokens) speed as a ratio to the float32
model in the same process. W8A8 quality comes from exact emulation of its integer arithmetic, its speed
from the x86/fbgemm int8 GEMM. bitsandbytes (`pip install --no-deps bitsandbytes`) is optional; without
it its rows say so. --quick: 2 eval windows, 4 x 512 calibration tokens; the full run 4 and 16.
LLM.int8: int8 rows with activation columns >= 6.0 in float32 ("int8 rows, no outliers": threshold 0).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import platform
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from lowbit.metrics import speed
from lowbit.metrics.run import EvalSettings, Evaluator
from lowbit.formats.bnb4 import quantize_4bit
from lowbit.loaders import ModelHandle, load_model
from lowbit.calib.settings import CalibSettings
from lowbit.methods import get_method, make_config
from lowbit.pipeline import quantize
from lowbit.modules.select import select_modules
from lowbit.report import write_json


def bnb_available() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def with_bnb_layers(ref: ModelHandle, kind: str) -> ModelHandle:
    """The reference with its selected Linears replaced by bitsandbytes' own modules (CPU backend)."""
    import bitsandbytes as bnb

    net = copy.deepcopy(ref.model)
    sel, _ = select_modules(net, None, None, False)
    for name, lin in sel.items():
        if not isinstance(lin, nn.Linear):
            continue
        if kind == "nf4-dq":
            new = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None, quant_type="nf4",
                                    compress_statistics=True, compute_dtype=torch.float32)
            new.weight = bnb.nn.Params4bit(lin.weight.data.clone(), requires_grad=False, quant_type="nf4",
                                           compress_statistics=True)
        else:  # LLM.int8: int8 weights, outliers above 6.0 in full precision
            new = bnb.nn.Linear8bitLt(lin.in_features, lin.out_features, bias=lin.bias is not None,
                                      has_fp16_weights=False, threshold=6.0)
            new.weight = bnb.nn.Int8Params(lin.weight.data.clone(), requires_grad=False, has_fp16_weights=False)
        if lin.bias is not None:
            new.bias = nn.Parameter(lin.bias.data.clone(), requires_grad=False)
        new = new.to("cpu")
        parent, _, leaf = name.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, leaf, new)
    return ModelHandle(model=net.eval(), tokenizer=ref.tokenizer, kind=ref.kind, name=ref.name)


def bit_exact(ref: ModelHandle) -> dict[str, bool | None]:
    """lowbit's NF4/FP4 (+DQ) codes and constants vs bitsandbytes on smollm2's real weights."""
    if not bnb_available():
        return {"nf4": None, "fp4": None}
    import bitsandbytes.functional as F

    ws = [m.weight.data for n, m in ref.model.named_modules() if isinstance(m, nn.Linear) and "layers.0." in n]
    out = {}
    for qt in ("nf4", "fp4"):
        ok = True
        for w in ws:
            for dq in (False, True):
                q, st = F.quantize_4bit(w, blocksize=64, quant_type=qt, compress_statistics=dq)
                mine = quantize_4bit(w, qt, 64, dq)
                ok &= torch.equal(q.reshape(-1), mine.packed) and torch.equal(st.absmax.reshape(-1), mine.absmax)
                if dq:
                    ok &= torch.equal(st.state2.absmax, mine.absmax2) and torch.equal(st.offset, mine.offset)
        out[qt] = bool(ok)
    return out


def speeds(model: nn.Module, win: torch.Tensor, kind: str, enc: dict | None) -> tuple[float, float | None]:
    if kind == "causal-lm":
        return speed.prefill_tok_s(model, win[:256], repeats=3), speed.decode_tok_s(model, win[:32], 16)
    return speed.encoder_tok_s(model, enc, repeats=3), None


def lowbit_run(ref: ModelHandle, method: str, n_cal: int = 16, **options: object) -> tuple[ModelHandle, dict]:
    """One lowbit method through the pipeline; the figures the table shows from its report."""
    calib = CalibSettings("pydoc:calib", n_samples=n_cal) if get_method(method).needs else None
    qh, rep = quantize(ref, make_config(method, **options), calib=calib)
    return qh, {"bits_per_weight": rep.bits_per_weight, "alpha": rep.details.get("alpha")}


def run(name: str, quick: bool, console: Console) -> dict:
    ref = load_model(name)
    windows = 2 if quick else 4
    ev = Evaluator(ref, EvalSettings(data="pydoc:eval", windows=windows, speed=False))
    base = ev.run(ref, label="float32")
    win = ev.windows(ref.tokenizer)[0]
    enc = None
    if ref.kind != "causal-lm":
        enc = ref.tokenizer(ev.texts()[:16], padding=True, truncation=True, max_length=128, return_tensors="pt")
    fp_pre, fp_dec = speeds(ref.model, win, ref.kind, enc)
    n_cal = 4 if quick else 16
    jobs: list[tuple[str, str, object]] = [
        ("nf4", "lowbit", lambda: lowbit_run(ref, "nf4", double_quant=False)),
        ("nf4-dq", "lowbit", lambda: lowbit_run(ref, "nf4", double_quant=True)),
        ("fp4", "lowbit", lambda: lowbit_run(ref, "fp4", double_quant=False)),
        ("llm.int8", "lowbit", lambda: lowbit_run(ref, "int8", threshold=6.0)),
        ("int8 rows, no outliers", "lowbit", lambda: lowbit_run(ref, "int8", threshold=0.0)),
    ]
    # W8A8 for both kinds: encoders calibrate on pydoc passages (post-norm BERT admits no exact smoothing fold)
    for act in ("dynamic", "static"):
        for smooth in (False, True):
            jobs.append((f"w8a8-{act}-{'smooth' if smooth else 'plain'}", "lowbit",
                         lambda act=act, smooth=smooth: lowbit_run(ref, "w8a8", n_cal, act=act, smooth=smooth,
                                                                   alpha=None if smooth else 0.5)))
    jobs += [("bnb nf4-dq", "bitsandbytes", lambda: (with_bnb_layers(ref, "nf4-dq"), {})),
             ("bnb int8 (LLM.int8)", "bitsandbytes", lambda: (with_bnb_layers(ref, "int8"), {}))]
    rows = []
    for label, impl, make in jobs:
        if impl == "bitsandbytes" and not bnb_available():
            rows.append({"format": label, "impl": impl, "note": "bitsandbytes not installed"})
            continue
        t0 = time.perf_counter()
        qh, rep = make()
        secs = time.perf_counter() - t0
        r = ev.run(qh, label=label)
        pre, dec = speeds(qh.model, win, ref.kind, enc)
        row = {"format": label, "impl": impl, "seconds": secs, "bits_per_weight": rep.get("bits_per_weight"),
               "alpha": rep.get("alpha"), "kl_mean": r.kl_mean, "ppl": r.ppl, "top1": r.top1_agreement,
               "cosine_mean": r.cosine_mean, "prefill_ratio_vs_fp32": pre / fp_pre,
               "decode_ratio_vs_fp32": dec / fp_dec if dec and fp_dec else None}
        rows.append(row)
        console.print(f"[dim]{name} {label}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()
                                                          if isinstance(v, float)) + "[/]")
        del qh
    return {"model": name, "fp32": base.to_dict(), "prefill_tok_s": fp_pre, "decode_tok_s": fp_dec, "rows": rows}


def table(res: dict) -> Table:
    t = Table(title=f"{res['model']}: bitsandbytes-style and W8A8 on pydoc:eval")
    lm = res["rows"][0].get("kl_mean") is not None
    cols = ["format", "impl", "bpw", "KL" if lm else "cosine", "PPL" if lm else "", "prefill x fp32", "decode x fp32", "note"]
    for c in cols:
        t.add_column(c)
    for r in res["rows"]:
        q = r.get("kl_mean") if lm else r.get("cosine_mean")
        t.add_row(r["format"], r["impl"], f"{r['bits_per_weight']:.3f}" if r.get("bits_per_weight") else "–",
                  f"{q:.4f}" if q is not None else "–", f"{r['ppl']:.3f}" if lm and r.get("ppl") else "",
                  f"{r['prefill_ratio_vs_fp32']:.2f}" if r.get("prefill_ratio_vs_fp32") else "–",
                  f"{r['decode_ratio_vs_fp32']:.2f}" if r.get("decode_ratio_vs_fp32") else "–", r.get("note", ""))
    return t


def markdown(out: dict) -> str:
    lines = []
    for res in (out["smollm2"], out["minilm"]):
        lines += [f"**{res['model']}**", "", "| format | impl | bpw | quality | PPL | prefill x fp32 | decode x fp32 | note |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in res["rows"]:
            q = r.get("kl_mean") if r.get("kl_mean") is not None else r.get("cosine_mean")
            bpw = r.get("bits_per_weight")
            lines.append(f"| {r['format']} | {r['impl']} | {'–' if bpw is None else format(bpw, '.3f')} | "
                         f"{'' if q is None else format(q, '.4f')} | {'' if not r.get('ppl') else format(r['ppl'], '.3f')} | "
                         f"{'' if not r.get('prefill_ratio_vs_fp32') else format(r['prefill_ratio_vs_fp32'], '.2f')} | "
                         f"{'' if not r.get('decode_ratio_vs_fp32') else format(r['decode_ratio_vs_fp32'], '.2f')} | {r.get('note', '')} |")
        lines.append("")
    keys = [k for k in out if k not in ("smollm2", "minilm", "machine")]
    lines += ["| key | value |", "|---|---|", *[f"| {k} | {out[k]} |" for k in keys]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 eval windows, 4 x 512 calibration tokens")
    p.add_argument("--json", dest="json_out")
    p.add_argument("--markdown")
    args = p.parse_args(argv)
    console = Console(width=200)
    t0 = time.perf_counter()
    out: dict = {"command": "python bench/bnb_w8a8.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                 "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "machine": {"platform": platform.platform(), "threads": torch.get_num_threads()}}
    sm = run("smollm2", args.quick, console)
    console.print(table(sm))
    exact = bit_exact(load_model("smollm2"))
    mi = run("minilm", args.quick, console)
    console.print(table(mi))
    rows = {r["format"]: r for r in sm["rows"]}
    out.update({"smollm2": sm, "minilm": mi, "nf4_bit_exact": exact["nf4"], "fp4_bit_exact": exact["fp4"],
                "nf4_dq_bpw": rows["nf4-dq"]["bits_per_weight"]})
    for act in ("static", "dynamic"):
        for sm_ in ("smooth", "plain"):
            out[f"w8a8_{act}_{sm_}_kl"] = rows[f"w8a8-{act}-{sm_}"]["kl_mean"]
    for key, fmt in (("nf4", "nf4"), ("nf4_dq", "nf4-dq"), ("fp4", "fp4"), ("llm_int8", "llm.int8"), ("w8a8", "w8a8-dynamic-smooth"),
                     ("w8a8_static", "w8a8-static-smooth"), ("bnb_nf4_dq", "bnb nf4-dq"), ("bnb_int8", "bnb int8 (LLM.int8)")):
        r = rows.get(fmt, {})
        out[f"{key}_prefill_ratio_vs_fp32"] = r.get("prefill_ratio_vs_fp32")
        out[f"{key}_decode_ratio_vs_fp32"] = r.get("decode_ratio_vs_fp32")
    out["seconds"] = time.perf_counter() - t0
    console.print(f"bit-exact with bitsandbytes on smollm2 layer 0: NF4 {exact['nf4']}, FP4 {exact['fp4']}; "
                  f"finished in {out['seconds']:.0f} s")
    if args.json_out:
        write_json(out, args.json_out)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
