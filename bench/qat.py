"""Quantization-aware training against post-training quantization, on real data.

    python bench/qat.py [--quick] [--json FILE] [--markdown FILE]

(a) digits: a small CNN on scikit-learn's bundled 8x8 digits (held-out 25% test split): float accuracy,
    then every Conv2d and Linear at 4 and 2 bits (asymmetric, per channel): RTN (PTQ) and QAT (label
    cross-entropy, starting from the RTN grid).
(b) smollm2 at 3 and 2 bits, asymmetric, group 64: RTN, GPTQ and HQQ against QAT with distillation (KL to
    the float model) on pydoc:calib, starting from RTN, and at 3 bits also from GPTQ (half the steps);
    KL, PPL and top-1 on pydoc:eval.
(c) minilm at 4 and 3 bits, asymmetric, group 64: RTN against QAT with distillation (cosine distance of
    token states) on pydoc:calib passages; cosine of pooled embeddings on pydoc:eval passages.

Full run: 200 training steps of one 256-token window for smollm2, 4 eval windows of 512 tokens, GPTQ on
16 x 512 calibration tokens. --quick: 30 steps of 128 tokens, 2 eval windows, GPTQ on 4 x 512 (still every
figure and ratio, less trained).
"""

from __future__ import annotations

import argparse
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

from lowbit import api, qat
from lowbit.examples import digits
from lowbit.loaders import ModelHandle, load_model
from lowbit.metrics.run import EvalSettings, Evaluator
from lowbit.report import write_json
from lowbit.spec import QuantSpec


def run_digits(quick: bool, console: Console) -> dict:
    d = digits.data()
    t = time.perf_counter()
    model = digits.train_float(d)
    out: dict = {"float_acc": digits.accuracy(model, d.x_test, d.y_test), "float_train_seconds": time.perf_counter() - t,
                 "n_train": len(d.y_train), "n_test": len(d.y_test), "rows": []}
    h = ModelHandle(model=model, kind="module", name="digits-cnn")
    for bits in (4, 2):
        spec = f"int{bits}-asym-ch"
        p = qat.prepare(h, spec, ignore=[])
        ptq = digits.accuracy(qat.convert(p).model, d.x_test, d.y_test)
        res = qat.train(p, (d.x_train, d.y_train), qat.TrainSettings(steps=600, lr=1e-3, batch=64, distill=False))
        acc = digits.accuracy(qat.convert(p).model, d.x_test, d.y_test)
        out["rows"].append({"bits": bits, "spec": spec, "ptq_acc": ptq, "qat_acc": acc, "train_seconds": res.seconds,
                            "steps": res.steps})
        console.print(f"digits {bits}-bit: float {out['float_acc']:.4f}, PTQ {ptq:.4f}, QAT {acc:.4f} ({res.seconds:.0f} s)")
    return out


def run_smollm2(quick: bool, console: Console) -> dict:
    ref = load_model("smollm2")
    ev = Evaluator(ref, EvalSettings(windows=2 if quick else 4, speed=False))
    steps, seq = (30, 128) if quick else (200, 256)
    calib = api.CalibSettings("pydoc:calib", 4 if quick else 16, 512)
    train = qat.lm_batches(ref, "pydoc:calib", steps, seq)
    out: dict = {"steps": steps, "seq_len": seq, "lr": 2e-5, "rows": []}
    for bits in (3, 2):
        spec = QuantSpec(bits, False, 64)
        for method in ("rtn", "gptq", "hqq"):
            t = time.perf_counter()
            q, _ = api.quantize(ref, api.make_config(method, spec), calib=calib if method == "gptq" else None)
            r = ev.run(q, f"{method} w{bits}g64")
            out["rows"].append({"bits": bits, "method": method, "kl_mean": r.kl_mean, "ppl": r.ppl,
                                "top1": r.top1_agreement, "seconds": time.perf_counter() - t})
            console.print(f"smollm2 {bits}-bit {method}: KL {r.kl_mean:.4f}")
            del q
        starts = ("rtn", "gptq") if bits == 3 else ("rtn",)
        for start in starts:  # from GPTQ: its error-compensated weights, fewer steps
            n = steps if start == "rtn" else steps // 2
            p = qat.prepare(ref, f"int{bits}-asym-g64", start=start, calib=calib)
            res = qat.train(p, train, qat.TrainSettings(steps=n, lr=2e-5, seq_len=seq, distill=True))
            r = ev.run(qat.convert(p), f"qat w{bits}g64 from {start}")
            out["rows"].append({"bits": bits, "method": "qat" if start == "rtn" else "qat_gptq", "start": start,
                                "kl_mean": r.kl_mean, "ppl": r.ppl, "top1": r.top1_agreement, "seconds": res.seconds,
                                "train_seconds": res.seconds, "steps": res.steps,
                                "loss_first10": sum(res.losses[:10]) / 10, "loss_last10": sum(res.losses[-10:]) / 10})
            console.print(f"smollm2 {bits}-bit QAT from {start}: KL {r.kl_mean:.4f} ({res.seconds:.0f} s)")
            del p
    out["ref_ppl"] = ev.run(ref, "float").ppl
    return out


def run_minilm(quick: bool, console: Console) -> dict:
    ref = load_model("minilm")
    ev = Evaluator(ref, EvalSettings(speed=False, texts=32 if quick else 64))
    steps = 30 if quick else 150
    train = qat.encoder_batches(ref, "pydoc:calib", steps * 4, 128)
    out: dict = {"steps": steps, "batch": 4, "lr": 3e-5, "rows": []}
    for bits in (4, 3):
        q, _ = api.quantize(ref, api.make_config("rtn", QuantSpec(bits, False, 64)))
        rtn_cos = ev.run(q, f"rtn w{bits}").cosine_mean
        p = qat.prepare(ref, f"int{bits}-asym-g64")
        res = qat.train(p, train, qat.TrainSettings(steps=steps, lr=3e-5, batch=4, distill=True))
        qat_cos = ev.run(qat.convert(p), f"qat w{bits}").cosine_mean
        out["rows"].append({"bits": bits, "rtn_cos": rtn_cos, "qat_cos": qat_cos, "train_seconds": res.seconds})
        console.print(f"minilm {bits}-bit: RTN cosine {rtn_cos:.4f}, QAT {qat_cos:.4f} ({res.seconds:.0f} s)")
    return out


def tables(out: dict) -> list[Table]:
    t1 = Table(title=f"(a) digits CNN, test accuracy ({out['digits']['n_test']} held-out images)")
    for c in ("weights", "float", "PTQ (RTN)", "QAT", "QAT - float (points)", "train s"):
        t1.add_column(c, justify="right")
    for r in out["digits"]["rows"]:
        t1.add_row(f"{r['bits']}-bit asym per-channel", f"{out['digits']['float_acc']:.4f}", f"{r['ptq_acc']:.4f}",
                   f"{r['qat_acc']:.4f}", f"{100 * (r['qat_acc'] - out['digits']['float_acc']):+.1f}", f"{r['train_seconds']:.0f}")
    t2 = Table(title=f"(b) smollm2, asym g64, pydoc:eval (float PPL {out['smollm2']['ref_ppl']:.2f})")
    for c in ("bits", "method", "KL", "x RTN", "PPL", "top-1", "s"):
        t2.add_column(c, justify="right")
    for r in out["smollm2"]["rows"]:
        rtn = next(x["kl_mean"] for x in out["smollm2"]["rows"] if x["bits"] == r["bits"] and x["method"] == "rtn")
        label = (f"QAT from {r['start'].upper()} ({r['steps']} steps, distill)" if r["method"].startswith("qat")
                 else r["method"].upper())
        t2.add_row(str(r["bits"]), label, f"{r['kl_mean']:.4f}", f"{r['kl_mean'] / rtn:.2f}", f"{r['ppl']:.2f}",
                   f"{r['top1']:.3f}", f"{r['seconds']:.0f}")
    t3 = Table(title="(c) minilm, asym g64, cosine to float on pydoc:eval passages")
    for c in ("bits", "RTN", "QAT (distill)", "train s"):
        t3.add_column(c, justify="right")
    for r in out["minilm"]["rows"]:
        t3.add_row(str(r["bits"]), f"{r['rtn_cos']:.4f}", f"{r['qat_cos']:.4f}", f"{r['train_seconds']:.0f}")
    return [t1, t2, t3]


def markdown(out: dict) -> str:
    from io import StringIO

    buf = StringIO()
    c = Console(file=buf, width=140, record=True)
    for t in tables(out):
        c.print(t)
    return c.export_text()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="30 short steps, 2 eval windows")
    p.add_argument("--json", dest="json_out")
    p.add_argument("--markdown")
    args = p.parse_args(argv)
    console = Console(width=160)
    t0 = time.perf_counter()
    out: dict = {"command": "python bench/qat.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                 "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "machine": {"platform": platform.platform(), "threads": torch.get_num_threads()}}
    out["digits"] = run_digits(args.quick, console)
    out["smollm2"] = run_smollm2(args.quick, console)
    out["minilm"] = run_minilm(args.quick, console)
    for t in tables(out):
        console.print(t)
    dg = {r["bits"]: r for r in out["digits"]["rows"]}
    out["digits_float_acc"] = out["digits"]["float_acc"]
    for b in (4, 2):
        out[f"digits_{b}bit_ptq_acc"], out[f"digits_{b}bit_qat_acc"] = dg[b]["ptq_acc"], dg[b]["qat_acc"]
    for r in out["smollm2"]["rows"]:
        out[f"smollm2_{r['bits']}bit_{r['method']}_kl"] = r["kl_mean"]
    for b in (3, 2):
        out[f"smollm2_{b}bit_qat_over_rtn"] = out[f"smollm2_{b}bit_qat_kl"] / out[f"smollm2_{b}bit_rtn_kl"]
    for r in out["minilm"]["rows"]:
        out[f"minilm_{r['bits']}bit_rtn_cos"], out[f"minilm_{r['bits']}bit_qat_cos"] = r["rtn_cos"], r["qat_cos"]
    out["train_seconds"] = (sum(r["train_seconds"] for r in out["digits"]["rows"])
                            + sum(r.get("train_seconds", 0) for r in out["smollm2"]["rows"])
                            + sum(r["train_seconds"] for r in out["minilm"]["rows"]))
    out["seconds"] = time.perf_counter() - t0
    console.print(f"smollm2 3-bit: QAT KL {out['smollm2_3bit_qat_kl']:.4f} = {out['smollm2_3bit_qat_over_rtn']:.2f}x RTN "
                  f"({out['smollm2_3bit_rtn_kl']:.4f}); GPTQ {out['smollm2_3bit_gptq_kl']:.4f}. "
                  f"digits 2-bit: QAT {out['digits_2bit_qat_acc']:.4f} vs float {out['digits_float_acc']:.4f}, "
                  f"PTQ {out['digits_2bit_ptq_acc']:.4f}. training {out['train_seconds']:.0f} s of {out['seconds']:.0f} s")
    if args.json_out:
        write_json(out, args.json_out)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
