"""Scale: peak RSS and wall time of whole `lowbit quantize` / `export` / `eval` processes on big Llamas.

    python bench/scale.py [--quick] [--json FILE] [--blocks 2,4,8] [--methods rtn,gptq] [--shape 7b]
        [--parts sweep,13b,smollm2,llmc,cuda] [--llmc-blocks 22] [--workdir DIR] [--lowbit-args '--max-memory 4G']
        [--device cuda] [--tokenizer DIR]

Models are written tensor by tensor (random bf16, ~2 GB shards, smollm2's tokenizer) into a temp dir under
--workdir and deleted once measured. Peak RSS: of the whole CLI process (getrusage of a wrapper whose only
child it is). sweep: RTN W4 g128 and GPTQ (16 x 512 pydoc:calib; --quick: smallest model only) at --blocks;
done-when: RSS < +10% per doubling, marginal seconds per block within 20%. The full run adds 13b (40
blocks: RTN, its KL on 2 x 512 tokens, GGUF Q4_K_M; GPTQ s/block from 2 blocks), smollm2 (GPTQ) and llmc (a
TinyLlama-shape model by lowbit GPTQ and by llm-compressor, from `make bench-reference`). cuda (a GPU
machine): a 2-block --cuda-shape model quantized by RTN and GPTQ on the CPU and on the GPU, the bytes
compared, and `lowbit eval` of the GPU's output on both devices and of the CPU's on the CPU. --device: every quantize and eval
of the other parts runs there. --tokenizer: a saved tokenizer (vocab 49152) where smollm2 is not installed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from itertools import pairwise
from math import prod
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # as the CLI does, before numpy is imported

import torch
from rich.console import Console
from rich.table import Table

from lowbit.report import write_json

ROOT = Path(__file__).resolve().parents[1]
LLMC_PY = ROOT / ".venv-llmc" / "bin" / "python"
LOWBIT = [sys.executable, "-m", "lowbit.cli"]  # lowbit has no __main__.py; lowbit.cli has
VOCAB = 49152  # smollm2's tokenizer
SHARD_BYTES = 2 * 10**9
SHAPES = {"7b": (4096, 11008, 32, 32), "13b": (5120, 13824, 40, 40),  # hidden, intermediate, heads, kv heads
          "1b": (2048, 5632, 32, 4), "tiny": (256, 512, 4, 4)}  # 1b: TinyLlama's shape
CALIB = ["--calib", "pydoc:calib", "--n-samples", "16", "--seq-len", "512"]
# wrapper: its only child is the measured process, so RUSAGE_CHILDREN's ru_maxrss (KiB) is that one's peak
PROBE = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); print('PEAK', "
         "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, r.returncode)")
FIGURES = {  # figure -> the part and the run (method) it comes from
    "rtn_13b_peak_rss_bytes": ("13b", "rtn"), "rtn_13b_output_bytes": ("13b", "rtn"),
    "eval_13b_kl_mean": ("13b", "eval"), "eval_13b_peak_rss_bytes": ("13b", "eval"),
    "gguf_q4_k_m_13b_peak_rss_bytes": ("13b", "gguf"), "gguf_q4_k_m_13b_output_bytes": ("13b", "gguf"),
    "gptq_13b_seconds_per_block": ("13b", "gptq"), "gptq_13b_40_blocks_seconds_extrapolated": ("13b", "gptq"),
    "smollm2_gptq_peak_rss_bytes": ("smollm2", "gptq"), "lowbit_1b_gptq_peak_rss_bytes": ("llmc", "gptq"),
    "llmcompressor_1b_gptq_peak_rss_bytes": ("llmc", "llm-compressor")}
Plan = list[tuple[str, tuple[int, ...]]]


class DiskError(Exception):
    """Not enough free disk under --workdir for a model and its outputs."""


def tensor_plan(shape: str, blocks: int) -> Plan:
    """Names and shapes exactly as LlamaForCausalLM's state_dict."""
    h, inter, heads, kv = SHAPES[shape]
    kv_dim = h // heads * kv
    block = [("input_layernorm", (h,)), ("self_attn.q_proj", (h, h)), ("self_attn.k_proj", (kv_dim, h)),
             ("self_attn.v_proj", (kv_dim, h)), ("self_attn.o_proj", (h, h)),
             ("post_attention_layernorm", (h,)), ("mlp.gate_proj", (inter, h)), ("mlp.up_proj", (inter, h)),
             ("mlp.down_proj", (h, inter))]
    plan = [(f"model.layers.{b}.{n}.weight", s) for b in range(blocks) for n, s in block]
    return [("model.embed_tokens.weight", (VOCAB, h)), *plan, ("model.norm.weight", (h,)),
            ("lm_head.weight", (VOCAB, h))]


def model_bytes(shape: str, blocks: int) -> tuple[int, int]:
    """(bf16 bytes of the whole model, of embed_tokens + lm_head)."""
    return sum(2 * prod(s) for _, s in tensor_plan(shape, blocks)), 2 * 2 * VOCAB * SHAPES[shape][0]


def make_tensor(name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Random N(0, 0.02) weights, the same whatever the block count; drawn by the GPU where there is one
    (other values than the CPU's, as random; writing the models was most of a GPU run's time)."""
    if len(shape) == 1:
        return torch.ones(shape, dtype=torch.bfloat16)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator(dev).manual_seed(zlib.crc32(name.encode()))
    return torch.randn(shape, generator=g, dtype=torch.bfloat16, device=dev).mul_(0.02).cpu()


def shards(plan: Plan) -> list[Plan]:
    groups: list[Plan] = [[]]
    for name, s in plan:
        if groups[-1] and sum(2 * prod(x) for _, x in groups[-1]) + 2 * prod(s) > SHARD_BYTES:
            groups.append([])
        groups[-1].append((name, s))
    return groups


def write_model(path: Path, shape: str, blocks: int, tokenizer) -> int:
    """Write the model one ~2 GB shard at a time (never the whole model in memory); returns its bytes."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    groups, weight_map, total = shards(tensor_plan(shape, blocks)), {}, 0
    path.mkdir(parents=True)
    for k, group in enumerate(groups, 1):
        fname = f"model-{k:05d}-of-{len(groups):05d}.safetensors"
        save_file({n: make_tensor(n, s) for n, s in group}, str(path / fname), metadata={"format": "pt"})
        total += sum(2 * prod(s) for _, s in group)
        weight_map.update({name: fname for name, _ in group})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    h, inter, heads, kv = SHAPES[shape]
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=h, intermediate_size=inter, num_hidden_layers=blocks,
                      num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=4096,
                      rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, architectures=["LlamaForCausalLM"])
    d = cfg.to_dict()
    d["torch_dtype"] = d["dtype"] = "bfloat16"  # both spellings, for readers before and after transformers 5
    (path / "config.json").write_text(json.dumps(d, indent=2))
    tokenizer.save_pretrained(path)
    return total


def out_bytes(path: Path) -> int | None:
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()] if path.exists() else []
    return sum(f.stat().st_size for f in files) if files else None


def remove(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def mb(v: int | None, unit: int = 10**6) -> str:
    return "-" if v is None else f"{v / unit:,.0f}"


def ok(row: dict, key: str):
    return row.get(key) if row["ok"] else None


def quantize_cmd(src: str, out: Path, method: str, extra: list[str], group: int = 128) -> list[str]:
    cmd = [*LOWBIT, "quantize", src, "--method", method, "--bits", "4", "--group-size", str(group)]
    return cmd + ["--out", str(out)] + (CALIB if method == "gptq" else []) + extra


class Bench:
    """The work dir, the borrowed tokenizer and every measured run (in order, for the table and JSON)."""

    def __init__(self, work: Path, console: Console, extra: list[str], tokenizer: str | None = None,
                 device: str | None = None) -> None:
        from transformers import AutoTokenizer

        from lowbit.loaders.builtin import builtin_path

        if tokenizer:  # smollm2's, saved (a GPU machine without the package)
            self.tok = AutoTokenizer.from_pretrained(tokenizer)
        else:
            gguf = builtin_path("smollm2")  # its tokenizer (vocab 49152), saved into every model written
            self.tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        if len(self.tok) > VOCAB:
            raise SystemExit(f"the tokenizer has {len(self.tok)} ids; the models written have {VOCAB}")
        self.device = ["--device", device] if device else []
        self.work, self.console, self.extra, self.runs = work, console, extra, []

    @property
    def args(self) -> list[str]:
        """What every `lowbit quantize` of the parts gets: --lowbit-args, then --device."""
        return [*self.extra, *self.device]

    def model(self, shape: str, blocks: int, out_factor: float = 0.35) -> tuple[Path, int]:
        """Write a model if the disk holds 1.3 x it + an output (fp32 embed/head, blocks x out_factor)."""
        total, head = model_bytes(shape, blocks)
        need = int(1.3 * total + 2 * head + out_factor * (total - head))
        free = shutil.disk_usage(self.work).free
        if free < need:
            raise DiskError(f"{shape} x {blocks} blocks ({total / 1e9:.1f} GB bf16) needs {need / 1e9:.1f} "
                            f"GB free under {self.work}, {free / 1e9:.1f} GB are: --workdir on a bigger disk")
        path, t0 = self.work / f"{shape}-{blocks}", time.perf_counter()
        write_model(path, shape, blocks, self.tok)  # a failure ends the bench, and main removes the work dir
        self.console.print(f"wrote {path.name} ({total / 1e9:.2f} GB) in {time.perf_counter() - t0:.0f} s")
        return path, total

    def run(self, cmd: list[str], out: Path, keep: bool = False, **meta) -> dict:
        """Run `cmd` under the RSS wrapper: peak RSS, wall seconds, the output's bytes, or the failure."""
        env = dict(os.environ, LOWBIT_PROGRESS="0", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "-c", PROBE, *cmd], capture_output=True, text=True, env=env,
                             check=False)
        seconds = time.perf_counter() - t0
        probe = [line.split() for line in res.stdout.splitlines() if line.startswith("PEAK ")]
        peak, rc = (int(probe[-1][1]), int(probe[-1][2])) if probe else (None, res.returncode)
        row = dict(meta, command=shlex.join(cmd), ok=rc == 0, returncode=rc, seconds=seconds,
                   peak_rss_bytes=peak, output_bytes=out_bytes(out))
        label = f"{meta['part']} {meta['shape']} x{meta['blocks']} {meta['method']}"
        if rc != 0:  # a negative code is a signal: -9 with no stderr is most likely the OOM killer
            tail = res.stderr.strip()[-3000:] or f"killed by signal {-rc}{' (out of memory?)' * (rc == -9)}"
            row["error"] = tail[-1500:]
            self.console.print(f"[red]{label}: exit {rc} after {seconds:.0f} s[/]\n{tail}")
        else:
            self.console.print(f"[dim]{label}: peak RSS {mb(peak, 2**20)} MiB, {seconds:.1f} s[/]")
        if not keep:
            remove(out)
        self.runs.append(row)
        return row

    def on_model(self, part: str, shape: str, blocks: int, methods: list[str], out_factor: float = 0.35,
                 then=None) -> dict[str, dict]:
        """Write a model, quantize it by each method, `then(src, meta)`, delete it; no room: failed rows."""
        try:
            src, size = self.model(shape, blocks, out_factor)
        except DiskError as e:
            self.console.print(f"[yellow]skipped: {e}[/]")
            rows = {m: {"part": part, "shape": shape, "blocks": blocks, "method": m, "ok": False,
                        "error": str(e)} for m in methods or ["write model"]}
            self.runs += rows.values()
            return rows
        meta, out = {"part": part, "shape": shape, "blocks": blocks, "source_bytes": size}, self.work / "out"
        try:
            rows = {m: self.run(quantize_cmd(str(src), out, m, self.args), out, method=m, **meta)
                    for m in methods}
            if then is not None:
                then(src, meta)
            return rows
        finally:
            remove(src)


def by_blocks(runs: list[dict], key: str) -> dict:
    out: dict = {}
    for r in runs:
        if r["part"] == "sweep":
            out.setdefault(r["method"], {})[str(r["blocks"])] = ok(r, key)
    return out


def ratios(rss: dict, secs: dict) -> dict:
    """Per method and consecutive sizes: RSS ratio, marginal seconds per block, their ratio (1.0 = linear)."""
    out = {}
    for m, by_n in rss.items():
        pts = sorted((int(k), v, secs[m][k]) for k, v in by_n.items() if v is not None)
        spb = {f"{a}-{b}": (t2 - t1) / (b - a) for (a, _, t1), (b, _, t2) in pairwise(pts)}
        lin = {f"{k2} / {k1}": v2 / v1 if v1 > 0 else None for (k1, v1), (k2, v2) in pairwise(spb.items())}
        out[m] = {"rss": {f"{b}/{a}": y / x for (a, x, _), (b, y, _) in pairwise(pts)},
                  "seconds_per_block": spb, "linearity": lin}
    return out


def done_when(rat: dict) -> dict:
    """RSS grows < 10% per doubling; marginal seconds per block stay within +-20%. None: too few sizes."""
    rss = [v for r in rat.values() for v in r["rss"].values()]
    lin = [v for r in rat.values() for v in r["linearity"].values()]
    rss_ok = all(v < 1.10 for v in rss) if rss else None
    lin_ok = all(v is not None and 0.8 <= v <= 1.2 for v in lin) if lin else None
    return {"rss_under_10pct_per_doubling": rss_ok, "time_linear_within_20pct": lin_ok,
            "holds": None if rss_ok is None or lin_ok is None else rss_ok and lin_ok}


def run_13b_full(b: Bench, figs: dict, src: Path, meta: dict) -> None:
    """RTN, the KL of its output vs the bf16 source, then GGUF Q4_K_M: one output on disk at a time."""
    q, g, jfile = b.work / "rtn13b", b.work / "13b.gguf", b.work / "eval.json"
    try:
        rtn = b.run(quantize_cmd(str(src), q, "rtn", b.args), q, keep=True, method="rtn", **meta)
        figs["rtn_13b_peak_rss_bytes"] = ok(rtn, "peak_rss_bytes")
        figs["rtn_13b_output_bytes"] = ok(rtn, "output_bytes")
        if rtn["ok"]:
            cmd = [*LOWBIT, "eval", str(q), "--reference", str(src), "--windows", "2", "--seq-len", "512",
                   "--no-speed", "--json", str(jfile), *b.device]
            ev = b.run(cmd, b.work / "none", method="eval KL rtn vs bf16", **meta)  # no output but the JSON
            figs["eval_13b_peak_rss_bytes"] = ok(ev, "peak_rss_bytes")
            if ev["ok"] and jfile.exists():
                figs["eval_13b_kl_mean"] = json.loads(jfile.read_text()).get("kl_mean")
        remove(q)
        gg = b.run([*LOWBIT, "export", str(src), "--format", "gguf", "--type", "Q4_K_M", "--out", str(g)], g,
                   method="gguf Q4_K_M", **meta)
        figs["gguf_q4_k_m_13b_peak_rss_bytes"] = ok(gg, "peak_rss_bytes")
        figs["gguf_q4_k_m_13b_output_bytes"] = ok(gg, "output_bytes")
    finally:
        remove(q)
        remove(jfile)


def run_13b(b: Bench, figs: dict, whole: bool = True) -> None:
    if whole:
        b.on_model("13b", "13b", 40, [], then=lambda src, meta: run_13b_full(b, figs, src, meta))
    r = b.on_model("13b", "13b", 2, ["gptq"])["gptq"]
    if r["ok"]:  # includes the process's fixed costs (load, calibration tokens, save): an upper bound
        figs["gptq_13b_seconds_per_block"] = r["seconds"] / 2
        figs["gptq_13b_40_blocks_seconds_extrapolated"] = 40 * r["seconds"] / 2


def run_llmc(b: Bench, figs: dict, src: Path, meta: dict) -> None:
    """llm-compressor's GPTQ (W4 g128, static act-order, sequential pipeline) on lowbit's very windows."""
    from lowbit.calib import load_corpus, token_windows

    if not LLMC_PY.exists():
        why = f"{LLMC_PY} missing: `make bench-reference` builds it"
        figs["reasons"]["llmcompressor_1b_gptq_peak_rss_bytes"] = why
        b.console.print(f"[yellow]{why}[/]")
        return
    tok, w, j = b.work / "calib.pt", b.work / "llmc.safetensors", b.work / "llmc.json"
    torch.save(token_windows(load_corpus("pydoc:calib"), b.tok, 16, 512, 0), tok)
    cmd = [str(LLMC_PY), str(ROOT / "bench" / "ref_llmcompressor.py"), "--model", str(src), "--tokens",
           str(tok), "--bits", "4", "--group-size", "128", "--actorder", "static", "--out", str(w), "--json",
           str(j)]
    try:
        r = b.run(cmd, w, **dict(meta, method="llm-compressor gptq"))
        figs["llmcompressor_1b_gptq_peak_rss_bytes"] = ok(r, "peak_rss_bytes")
    finally:
        remove(tok)
        remove(j)


def compare_outputs(a: Path, b: Path) -> dict:
    """Tensor by tensor: how many tensors, and what fraction of all their bytes, are identical."""
    from safetensors import safe_open

    def tensors(d: Path) -> dict[str, Path]:
        out = {}
        for f in sorted(d.glob("*.safetensors")):
            with safe_open(f, "pt") as st:
                out.update(dict.fromkeys(st.keys(), f))
        return out

    ta, tb = tensors(a), tensors(b)
    same = same_bytes = total = 0
    for k in sorted(ta.keys() & tb.keys()):
        with safe_open(ta[k], "pt") as x, safe_open(tb[k], "pt") as y:
            u, v = x.get_tensor(k), y.get_tensor(k)
        if u.shape != v.shape or u.dtype != v.dtype:
            continue
        eq = u.contiguous().view(-1).view(torch.uint8) == v.contiguous().view(-1).view(torch.uint8)
        same += bool(eq.all())
        same_bytes, total = same_bytes + int(eq.sum()), total + eq.numel()
    return {"tensors": len(ta), "tensors_identical": same, "names_match": ta.keys() == tb.keys(),
            "bytes_identical_fraction": same_bytes / total if total else None}


def run_cuda(b: Bench, figs: dict, shape: str, blocks: int) -> None:
    """RTN and GPTQ of one model on the CPU and on the GPU; the outputs compared, then evaluated on both."""
    if not torch.cuda.is_available():
        figs["reasons"]["cuda"] = "no CUDA GPU: the cuda part runs on a GPU machine"
        b.console.print("[yellow]cuda part skipped: no CUDA GPU[/]")
        return
    try:
        src, size = b.model(shape, blocks)
    except DiskError as e:
        figs["reasons"]["cuda"] = str(e)
        return
    meta, res = {"part": "cuda", "shape": shape, "blocks": blocks, "source_bytes": size}, {}
    try:
        for method in ("rtn", "gptq"):
            outs = {d: b.work / f"{method}-{d}" for d in ("cpu", "cuda")}
            rows = {d: b.run(quantize_cmd(str(src), outs[d], method, [*b.extra, "--device", d]), outs[d], keep=True,
                             method=f"{method} --device {d}", **meta) for d in outs}
            r = res[method] = {f"{d}_seconds": ok(rows[d], "seconds") for d in rows}
            r.update({f"{d}_peak_rss_bytes": ok(rows[d], "peak_rss_bytes") for d in rows})
            if all(x["ok"] for x in rows.values()):
                r["speedup"] = rows["cpu"]["seconds"] / rows["cuda"]["seconds"]
                r.update(compare_outputs(outs["cpu"], outs["cuda"]))
                for q, d in (("cuda", "cuda"), ("cuda", "cpu"), ("cpu", "cpu")):  # the GPU's file on both
                    j = b.work / "eval.json"
                    cmd = [*LOWBIT, "eval", str(outs[q]), "--reference", str(src), "--windows", "2", "--seq-len",
                           "512", "--no-speed", "--json", str(j), "--device", d]
                    ev = b.run(cmd, b.work / "none", method=f"eval {method}/{q} on {d}", **meta)
                    if ev["ok"] and j.exists():
                        e = json.loads(j.read_text())
                        r[f"kl_{q}_output_on_{d}"], r[f"ppl_{q}_output_on_{d}"] = e.get("kl_mean"), e.get("ppl")
                    remove(j)
            for o in outs.values():
                remove(o)
    finally:
        remove(src)
    figs["cuda"] = dict(res, gpu=torch.cuda.get_device_name(0))
    b.console.print({"cuda": figs["cuda"]})


def table(runs: list[dict]) -> Table:
    t = Table(title="whole-process peak RSS and wall time")
    for c in ("part", "shape", "blocks", "method", "peak RSS MiB", "seconds", "output MB", "source MB"):
        t.add_column(c, justify="left" if c in ("part", "shape", "method") else "right")
    t.add_column("status")
    for r in runs:
        secs = "-" if r.get("seconds") is None else f"{r['seconds']:.1f}"
        t.add_row(r["part"], r["shape"], str(r["blocks"]), r["method"], mb(r.get("peak_rss_bytes"), 2**20),
                  secs, mb(ok(r, "output_bytes")), mb(r.get("source_bytes")),
                  "ok" if r["ok"] else f"FAILED (exit {r['returncode']})" if "returncode" in r else "skipped")
    return t


def print_ratios(console: Console, rat: dict, done: dict) -> None:
    for m, r in rat.items():
        rss = ", ".join(f"RSS {k}: {v:.3f}" for k, v in r["rss"].items())
        spb = ", ".join(f"{k} blocks: {v:.2f} s/block" for k, v in r["seconds_per_block"].items())
        lin = ", ".join(f"{k}: {v:.2f}" for k, v in r["linearity"].items() if v is not None)
        parts = (rss or "one size only", spb, lin and f"linearity {lin}")
        console.print(f"{m}: " + "; ".join(x for x in parts if x))
    verdict = {True: "HOLDS", False: "does not hold", None: "undecided (too few sizes)"}[done["holds"]]
    console.print(f"done-when: RSS < +10% per doubling: {done['rss_under_10pct_per_doubling']}, time linear "
                  f"within 20%: {done['time_linear_within_20pct']} -> {verdict}")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the sweep only; GPTQ on the smallest model only")
    p.add_argument("--json", dest="json_out", help="write the figures here")
    p.add_argument("--blocks", default="2,4,8", help="sweep: model sizes in decoder blocks")
    p.add_argument("--methods", default="rtn,gptq", help="sweep: rtn, gptq or both")
    p.add_argument("--shape", default="7b", choices=sorted(SHAPES), help="sweep: the width (tiny: a check)")
    p.add_argument("--parts", help="sweep,13b,smollm2,llmc, or 13b-gptq (the 13B width's GPTQ only) "
                                   "(default: sweep with --quick, else all)")
    p.add_argument("--llmc-blocks", type=int, default=22, help="blocks of the 1B model of the llmc part")
    p.add_argument("--workdir", help="where the temp models go (default /tmp)")
    p.add_argument("--lowbit-args", default="", help="appended to each `lowbit quantize` ('--max-memory 4G')")
    p.add_argument("--device", help="cpu, cuda, cuda:N: where every `lowbit quantize` and `eval` computes")
    p.add_argument("--cuda-shape", default="1b", choices=sorted(SHAPES), help="the width of the cuda part")
    p.add_argument("--tokenizer", help="a saved tokenizer of at most 49152 ids (default: smollm2's, from its package)")
    return p.parse_args(argv)


def run_parts(b: Bench, args: argparse.Namespace, out: dict) -> None:
    parts = (args.parts or ("sweep" if args.quick else "sweep,13b,smollm2,llmc")).split(",")
    if "cuda" in parts:  # first: on a lent GPU machine it is the figure that matters most
        run_cuda(b, out, args.cuda_shape, 2)
    if "sweep" in parts:
        blocks, methods = sorted(int(x) for x in args.blocks.split(",")), args.methods.split(",")
        for n in blocks:  # --quick: GPTQ on the smallest model only
            todo = [m for m in methods if m == "rtn" or not args.quick or n == blocks[0]]
            b.on_model("sweep", args.shape, n, todo)
    if "13b" in parts or "13b-gptq" in parts:  # 13b-gptq: only GPTQ's time per block at the 13B width
        run_13b(b, out, whole="13b" in parts)
    if "smollm2" in parts:
        r = b.run(quantize_cmd("smollm2", b.work / "out", "gptq", b.args, group=64), b.work / "out", part="smollm2",
                  shape="smollm2", blocks=30, method="gptq")
        out["smollm2_gptq_peak_rss_bytes"] = ok(r, "peak_rss_bytes")
    if "llmc" in parts:
        # llm-compressor's reference script writes every Linear back in float32: 2 x bf16 on disk
        r = b.on_model("llmc", "1b", args.llmc_blocks, ["gptq"], 2.0, lambda s, m: run_llmc(b, out, s, m))
        out["lowbit_1b_gptq_peak_rss_bytes"] = ok(r["gptq"], "peak_rss_bytes")
    for k, (part, method) in FIGURES.items():
        if out.get(k) is None:
            out[k] = None
            failed = [r["error"][-300:] for m in (method, "write model") for r in b.runs
                      if r["part"] == part and not r["ok"] and r["method"].startswith(m)]
            why = "not run: an earlier step failed" if any(r["part"] == part for r in b.runs) else "not run"
            out["reasons"].setdefault(k, f"failed: {failed[0]}" if failed else f"{why} (--parts: {part})")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    base = Path(args.workdir or tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    console, work = Console(width=200), Path(tempfile.mkdtemp(prefix="lowbit-scale-", dir=base))
    b, t0 = Bench(work, console, shlex.split(args.lowbit_args), args.tokenizer, args.device), time.perf_counter()
    out: dict = {"command": "python bench/scale.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
                 "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                             "torch": torch.__version__, "python": sys.version.split()[0],
                             "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
                 "date": time.strftime("%Y-%m-%d %H:%M:%S"), "lowbit_args": b.args, "reasons": {}}
    try:
        run_parts(b, args, out)
    finally:
        shutil.rmtree(b.work, ignore_errors=True)
    out["runs"] = b.runs
    for key in ("rss", "seconds", "output_bytes", "source_bytes"):
        out[f"{key}_by_blocks"] = by_blocks(b.runs, "peak_rss_bytes" if key == "rss" else key)
    out["ratios"] = ratios(out["rss_by_blocks"], out["seconds_by_blocks"])
    out["done_when"] = done_when(out["ratios"])
    out["seconds"] = time.perf_counter() - t0
    console.print(table(b.runs))
    print_ratios(console, out["ratios"], out["done_when"])
    console.print({k: out[k] for k in FIGURES if out[k] is not None} or "")
    if args.json_out:
        write_json(out, args.json_out)
        console.print(f"wrote {args.json_out}")
    console.print(f"[dim]bench finished in {out['seconds']:.0f} s[/]")
    return 0 if all(r["ok"] for r in b.runs) else 1


if __name__ == "__main__":
    sys.exit(main())
