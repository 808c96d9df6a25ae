"""GGUF on smollm2: every type and mix lowbit writes, against llama.cpp's own quantizer and runtime.

    python bench/gguf_types.py [--quick] [--json FILE] [--markdown FILE]

1. lowbit exports smollm2 as an F32 GGUF: the common input of both quantizers.
2. Bit-exactness per type: lowbit's bytes vs libggml's ``ggml_quantize_chunk`` on real smollm2 rows
   (live when llama-cpp-python is installed, `make reference`; else the committed golden fixtures).
3. For each mix: lowbit's ``export_gguf`` and llama.cpp's ``llama_model_quantize`` on the same F32
   weights, timed in this run (ratio), tensor data compared byte for byte.
4. Each lowbit file is scored on pydoc:eval (PPL, KL, top-1 vs the float model) through torch (the
   file's own bytes, dequantized) and, when installed, through llama.cpp (same windows, same protocol).
5. Q4_K_M, Q3_K_M and Q2_K again with an importance matrix computed from pydoc:calib.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # as the CLI does, before numpy is imported

import gguf
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from lowbit.calib import load_corpus, token_windows
from lowbit.calib.imatrix import compute_imatrix
from lowbit.formats.ggml import GGML_TYPES
from lowbit.loaders import load_model
from lowbit.loaders.handle import ModelHandle
from lowbit.metrics import llamacpp
from lowbit.metrics.run import EvalSettings, Evaluator
from lowbit.report import write_json
from lowbit.writers.gguf import export_gguf, load_into

ROOT = Path(__file__).resolve().parents[1]
MIXES = ["Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q4_K_M", "Q4_K_S", "IQ4_XS", "IQ4_NL", "Q3_K_L", "Q3_K_M", "Q3_K_S",
         "Q2_K", "TQ2_0", "TQ1_0", "Q5_0", "Q4_0", "F16"]
QUICK_MIXES = ["Q8_0", "Q4_K_M", "Q3_K_M", "Q2_K", "Q4_0"]
IMATRIX_MIXES = ["Q4_K_M", "IQ4_XS", "Q3_K_M", "Q2_K", "IQ2_XS", "IQ2_XXS"]  # IQ2_XXS: only with one, as in llama.cpp
TYPES = ["F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
         "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ1_M"]


def gguf_model(path: Path, like: ModelHandle) -> ModelHandle:
    return load_into(path, like)


def tensor_diff(a: Path, b: Path) -> tuple[int, int, list[str]]:
    """(tensors compared, tensors whose type or bytes differ, first few names) between two GGUF files."""
    ra, rb = gguf.GGUFReader(str(a)), gguf.GGUFReader(str(b))
    tb = {t.name: t for t in rb.tensors}
    bad = []
    for t in ra.tensors:
        u = tb.get(t.name)
        if u is None or u.tensor_type != t.tensor_type or not np.array_equal(np.asarray(t.data).view(np.uint8),
                                                                               np.asarray(u.data).view(np.uint8)):
            bad.append(t.name)
    return len(ra.tensors), len(bad) + abs(len(ra.tensors) - len(rb.tensors)), bad[:5]


def bit_exact_types(ref: ModelHandle, console: Console) -> tuple[list[str], str]:
    """Types whose bytes equal libggml's on real smollm2 rows where the width allows and on random
    512-wide rows (every type applies), with and without an importance matrix (live), or per the golden
    fixtures."""
    rows = {n: ref.model.get_parameter(n).detach().float().numpy()[:32] for n in
            ("model.layers.0.mlp.down_proj.weight", "model.layers.5.self_attn.q_proj.weight")}
    rows["random"] = np.random.default_rng(0).standard_normal((32, 512)).astype(np.float32)
    if llamacpp.available():
        sys.path.insert(0, str(ROOT / "tests" / "fixtures" / "ggml"))
        from make_fixtures import find_lib, ggml_quantize

        lib = find_lib(None)
        ok = []
        for t in TYPES:
            block = GGML_TYPES.get(t).block_size
            same = GGML_TYPES.get(t).needs_imatrix or all(
                np.array_equal(GGML_TYPES.get(t).quantize(x), ggml_quantize(lib, x, t))
                for x in rows.values() if x.shape[1] % block == 0)
            same_im = all(np.array_equal(GGML_TYPES.get(t).quantize(x, im := np.abs(x).mean(0) + 0.01),
                                         ggml_quantize(lib, x, t, im)) for x in rows.values() if x.shape[1] % block == 0)
            if same and same_im:
                ok.append(t)
            else:
                console.print(f"[red]{t}: differs from libggml (plain {same}, imatrix {same_im})[/]")
        return ok, "live libggml (llama-cpp-python), with and without imatrix"
    import subprocess

    res = subprocess.run([sys.executable, "-m", "pytest", "-q", str(ROOT / "tests/unit/test_ggml_types.py"), "-k",
                          "bit_exact", "-p", "no:cacheprovider"], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        console.print(res.stdout[-2000:])
        return [], "golden fixtures: FAILED"
    return TYPES, "golden fixtures (llama.cpp 0c1e570), with and without imatrix"


def evaluate(handle: ModelHandle, evs: dict, label: str) -> dict:
    r = evs["pydoc:eval"].run(handle, label=label)
    return {"ppl": r.ppl, "kl_mean": r.kl_mean, "kl_p99": r.kl_p99, "top1": r.top1_agreement}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="5 mixes, 2 eval windows, imatrix from 4 x 512 tokens")
    p.add_argument("--json", dest="json_out")
    p.add_argument("--markdown")
    p.add_argument("--mixes", help="comma-separated mixes to run (default: all, or the quick five); "
                                   "'MIX+imatrix' runs one with the importance matrix")
    args = p.parse_args(argv)
    console = Console(width=200)
    t_all = time.perf_counter()
    ref = load_model("smollm2")
    windows = 2 if args.quick else 4
    evs = {"pydoc:eval": Evaluator(ref, EvalSettings(data="pydoc:eval", windows=windows, speed=False))}
    base = evs["pydoc:eval"].run(ref)
    have_llamacpp = llamacpp.available()
    out: dict = {"command": "python bench/gguf_types.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                 "date": time.strftime("%Y-%m-%d %H:%M:%S"), "llamacpp": have_llamacpp,
                 "machine": {"platform": platform.platform(), "threads": torch.get_num_threads()},
                 "fp32_ppl": base.ppl, "eval_windows": windows, "rows": []}
    exact, how = bit_exact_types(ref, console)
    out["bit_exact_types"], out["bit_exact_source"] = exact, how
    console.print(f"bit-exact types ({how}): {', '.join(exact)}")
    if have_llamacpp:  # per architecture: llama.cpp against transformers, tokenizer, Q4_K_M / Q8_0 files
        from gguf_archs import measure

        out["architectures"], tokens, out["rope"] = measure()
        out["smollm2_tokenization"], out["tokenization"] = tokens["smollm2"], tokens["families"]

    n_cal = 4 if args.quick else 16
    ids = token_windows(load_corpus("pydoc:calib"), ref.tokenizer, n_cal, 512, 0)
    t0 = time.perf_counter()
    imatrix = compute_imatrix(ref.model, ids, dataset="pydoc:calib").weights()
    out["imatrix_seconds"], out["imatrix_tokens"] = time.perf_counter() - t0, int(ids.numel())

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        f32 = tmp / "f32.gguf"
        export_gguf(ref, f32, "F32")
        jobs = [(m, False) for m in (QUICK_MIXES if args.quick else MIXES)] + [(m, True) for m in IMATRIX_MIXES]
        if args.mixes:
            jobs = [(m.removesuffix("+imatrix"), m.endswith("+imatrix")) for m in args.mixes.split(",")]
        for mix, use_im in jobs:
            name = f"{mix}{'+imatrix' if use_im else ''}"
            mine = tmp / f"lowbit-{name}.gguf"
            t0 = time.perf_counter()
            summary = export_gguf(ref, mine, mix, imatrix=imatrix if use_im else None)
            secs = time.perf_counter() - t0
            weights = [t for t in gguf.GGUFReader(str(mine)).tensors if len(t.shape) >= 2]
            bpw = 8 * sum(int(t.n_bytes) for t in weights) / sum(int(t.n_elements) for t in weights)
            row = {"mix": name, "bytes": mine.stat().st_size, "bpw": bpw, "lowbit_seconds": secs,
                   "fallbacks": len(summary["fallbacks"]), "torch": evaluate(gguf_model(mine, ref), evs, name)}
            if have_llamacpp:
                theirs = tmp / f"llamacpp-{name}.gguf"
                row["llamacpp_seconds"] = llamacpp.quantize_with_llamacpp(f32, theirs, mix, imatrix=imatrix if use_im else None)
                n, nbad, first = tensor_diff(mine, theirs)
                row["tensors"], row["tensors_differing"], row["first_differing"] = n, nbad, first
                row["byte_identical"] = nbad == 0
                lc = llamacpp.load_llamacpp(mine, n_ctx=512)
                row["llamacpp"] = evaluate(lc, evs, f"{name} (llama.cpp)")
                del lc
                theirs.unlink()
            out["rows"].append(row)
            console.print(f"[dim]{name}: {row['bytes'] / 1e6:.1f} MB, bpw {bpw:.3f}, KL {row['torch']['kl_mean']:.4f}, "
                          f"{secs:.1f} s{'' if not have_llamacpp else ', llama.cpp ' + format(row['llamacpp_seconds'], '.1f') + ' s, identical ' + str(row['byte_identical'])}[/]")
            mine.unlink()

    rows = {r["mix"]: r for r in out["rows"]}
    q4 = rows.get("Q4_K_M", {})
    out.update({
        "q4_k_m_byte_identical": q4.get("byte_identical"), "q8_0_byte_identical": rows.get("Q8_0", {}).get("byte_identical"),
        "lowbit_quantize_seconds": q4.get("lowbit_seconds"), "llamacpp_quantize_seconds": q4.get("llamacpp_seconds"),
        "ppl_lowbit_q4_k_m": q4.get("torch", {}).get("ppl"), "ppl_llamacpp_q4_k_m": q4.get("llamacpp", {}).get("ppl"),
        "kl_q3_k_m_imatrix": rows.get("Q3_K_M+imatrix", {}).get("torch", {}).get("kl_mean"),
        "kl_q3_k_m_plain": rows.get("Q3_K_M", {}).get("torch", {}).get("kl_mean"),
        "kl_q2_k_imatrix": rows.get("Q2_K+imatrix", {}).get("torch", {}).get("kl_mean"),
        "kl_q2_k_plain": rows.get("Q2_K", {}).get("torch", {}).get("kl_mean"),
    })
    if out["lowbit_quantize_seconds"] and out["llamacpp_quantize_seconds"]:
        out["quantize_time_ratio"] = out["lowbit_quantize_seconds"] / out["llamacpp_quantize_seconds"]
    if out["ppl_lowbit_q4_k_m"] and out["ppl_llamacpp_q4_k_m"]:
        out["ppl_runtime_gap"] = out["ppl_llamacpp_q4_k_m"] / out["ppl_lowbit_q4_k_m"] - 1
    out["seconds"] = time.perf_counter() - t_all
    console.print(table(out))
    if args.json_out:
        write_json(out, args.json_out)
    if args.markdown:
        Path(args.markdown).write_text(markdown(out))
    console.print(f"[dim]bench finished in {out['seconds']:.0f} s[/]")
    return 0


def _fmt(v, f=".4f") -> str:
    return "-" if v is None else format(v, f)


def table(out: dict) -> Table:
    t = Table(title=f"smollm2 GGUF (float32 PPL {out['fp32_ppl']:.3f} on pydoc:eval)")
    for c in ("mix", "MB", "bpw", "PPL", "KL", "top-1", "PPL llama.cpp", "lowbit s", "llama.cpp s", "identical"):
        t.add_column(c, justify="left" if c == "mix" else "right")
    for r in out["rows"]:
        lc = r.get("llamacpp", {})
        t.add_row(r["mix"], f"{r['bytes'] / 1e6:.1f}", f"{r['bpw']:.3f}", _fmt(r["torch"]["ppl"], ".3f"),
                  _fmt(r["torch"]["kl_mean"]), _fmt(r["torch"]["top1"], ".3f"), _fmt(lc.get("ppl"), ".3f"),
                  f"{r['lowbit_seconds']:.2f}", _fmt(r.get("llamacpp_seconds"), ".2f"), str(r.get("byte_identical", "-")))
    return t


def markdown(out: dict) -> str:
    lines = [(f"smollm2 float32 PPL {out['fp32_ppl']:.3f} on pydoc:eval ({out['eval_windows']} windows x 512); "
              f"imatrix from {out['imatrix_tokens']} tokens of pydoc:calib; bit-exact types ({out['bit_exact_source']}): "
              f"{', '.join(out['bit_exact_types'])}."), "",
             "| mix | MB | bpw | PPL | KL | top-1 | PPL (llama.cpp) | KL (llama.cpp) | lowbit s | llama.cpp s | bytes identical |",
             "|---|" + "---|" * 10]
    for r in out["rows"]:
        lc = r.get("llamacpp", {})
        lines.append(f"| {r['mix']} | {r['bytes'] / 1e6:.1f} | {r['bpw']:.3f} | {r['torch']['ppl']:.3f} | "
                     f"{r['torch']['kl_mean']:.4f} | {r['torch']['top1']:.3f} | {_fmt(lc.get('ppl'), '.3f')} | "
                     f"{_fmt(lc.get('kl_mean'))} | {r['lowbit_seconds']:.2f} | {_fmt(r.get('llamacpp_seconds'), '.2f')} | "
                     f"{r.get('byte_identical', '-')} |")
    keys = ["bit_exact_types", "q4_k_m_byte_identical", "q8_0_byte_identical", "lowbit_quantize_seconds",
            "llamacpp_quantize_seconds", "quantize_time_ratio", "ppl_lowbit_q4_k_m", "ppl_llamacpp_q4_k_m",
            "ppl_runtime_gap", "kl_q3_k_m_plain", "kl_q3_k_m_imatrix", "kl_q2_k_plain", "kl_q2_k_imatrix"]
    lines += ["", "| key | value |", "|---|---|"] + [f"| {k} | {out.get(k)} |" for k in keys]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
