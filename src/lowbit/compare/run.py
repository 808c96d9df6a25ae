"""`lowbit compare`: every candidate on the user's own data, the same windows and reference for all,
then the Pareto front, the guide's recommendation and a report.

    load -> reference scores -> for each candidate: quantize (calibrating where needed) -> evaluate
    (quality, accuracy and flips, per-layer error, size, calibration cost, speed vs fp32 here)
    -> decide (bar, Pareto, recommendation) -> report (results.json, report.md, report.html)

Finished candidates are cached in ``REPORT/.cache``, keyed by the model, the candidate's settings and
the data, so a rerun after Ctrl-C or a crash skips them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.compare.candidates import Built, Candidate, candidates_for
from lowbit.compare.decide import Bar, default_bar, pareto, recommend
from lowbit.errors import InputError
from lowbit.metrics import speed as speedmod
from lowbit.metrics.run import EvalSettings, Evaluator
from lowbit.metrics.tasks import (
    MC,
    class_centroids,
    load_task,
    score_classification,
    score_mc,
    task_kind,
)
from lowbit.loaders import ModelHandle, load_model
from lowbit.loaders.handle import CAUSAL_LM

log = logging.getLogger(__name__)
VERSION = 1  # bump when a change alters cached rows


@dataclass
class CompareSettings:
    calib: str | None = "pydoc:calib"
    eval: str = "pydoc:eval"
    eval_text: str = "pydoc:eval"  # KL/PPL corpus when --eval is a labelled task
    methods: list[str] | None = None
    bar: str | None = None
    budget_bpw: float | None = None
    windows: int = 4
    seq_len: int = 512
    calib_samples: int = 16
    speed: bool = True
    calib_check: bool = False
    task_limit: int | None = 200
    target: str = "cpu"  # where it will run, for the hardware-support axis
    train_data: str | None = None  # QAT candidates: training text ...
    qat_steps: int = 0  # ... and a budget of optimizer steps


@dataclass
class Context:
    """What a candidate's build gets besides the reference: the calibration settings, and the
    importance matrix computed once from them."""

    ref: ModelHandle
    calib: Any
    train_data: str | None = None
    qat_steps: int = 0
    _imatrix: dict | None = field(default=None, repr=False)
    imatrix_seconds: float = 0.0

    def imatrix(self) -> dict:
        if self._imatrix is None:
            from lowbit.calib import load_corpus, token_windows
            from lowbit.calib.imatrix import compute_imatrix

            t0 = time.perf_counter()
            ids = token_windows(load_corpus(self.calib.data), self.ref.tokenizer, self.calib.n_samples,
                                self.calib.seq_len, self.calib.seed)
            self._imatrix = compute_imatrix(self.ref.model, ids, dataset=self.calib.data).weights()
            self.imatrix_seconds = time.perf_counter() - t0
        return self._imatrix


def _data_key(data: str) -> str:
    p = Path(data)
    if p.is_file():
        from lowbit.loaders.cache import file_key

        return f"{data}:{file_key(p)}"
    if p.is_dir():
        return f"{data}:" + hashlib.sha256("".join(f"{f}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in
                                                   sorted(p.rglob("*")) if f.is_file()).encode()).hexdigest()[:16]
    return f"{data}:{sys.version_info[:2]}"  # the built-in corpora come with the Python install


def _model_key(model: Any, handle: ModelHandle) -> str:
    src = handle.path or (model if isinstance(model, str) else None)
    if src and Path(src).exists():
        return _data_key(str(src))
    if isinstance(model, str):
        from lowbit.loaders.builtin import BUILTINS, builtin_path

        if model in BUILTINS:
            return _data_key(str(builtin_path(model)))
    h = hashlib.sha256()  # an in-memory module: hash its weights
    for k, t in handle.model.state_dict().items():
        h.update(k.encode())
        h.update(t.detach().float().contiguous().numpy().tobytes()[:4096])
    return h.hexdigest()[:16]


def layer_errors(ref: nn.Module, cand: nn.Module) -> dict[str, float]:
    """Relative Frobenius error of every quantized weight: ||W - Wq|| / ||W||, by layer name."""
    out = {}
    qmods = dict(cand.named_modules())
    for name, m in ref.named_modules():
        if not isinstance(m, nn.Linear) or name not in qmods:
            continue
        q = qmods[name]
        wq = q.dequantize(torch.float32) if hasattr(q, "dequantize") else getattr(q, "weight", None)
        if wq is None or wq.shape != m.weight.shape:
            continue
        w = m.weight.detach().float()
        wq = wq.detach()
        if torch.equal(wq, w):
            continue  # left in float (e.g. the output head)
        out[name] = float((wq.float() - w).norm() / w.norm().clamp_min(1e-12))
    return out


class Comparison:
    def __init__(self, model: Any, settings: CompareSettings, report_dir: Path, console: Any = None) -> None:
        self.s, self.report_dir, self.console = settings, Path(report_dir), console
        from lowbit.plan.rule import Target

        Target.parse(settings.target)  # a bad --target fails before any work
        self.ref = load_model(model)
        self.model_key = _model_key(model, self.ref)
        self.kind = self.ref.kind
        self.task = None
        if task_kind(settings.eval):
            self.task = load_task(settings.eval, settings.task_limit)
            if (self.task.kind == MC) != (self.kind == CAUSAL_LM):
                raise InputError(f"{settings.eval}: a {self.task.kind} set does not fit a {self.kind} model")
        text = settings.eval_text if self.task else settings.eval
        self.evaluator = Evaluator(self.ref, EvalSettings(data=text, windows=settings.windows, seq_len=settings.seq_len,
                                                          speed=False))
        self.bar = Bar.parse(settings.bar) if settings.bar else default_bar(self.kind, self.task is not None)
        training = bool(settings.train_data) and settings.qat_steps > 0
        self.candidates = candidates_for(self.kind, settings.methods, training)
        if any(c.needs_training for c in self.candidates) and not training:
            raise InputError("QAT candidates train: give --train-data DATA and --qat-steps N")
        from lowbit.api import CalibSettings

        needs = any(c.needs_calib for c in self.candidates) or settings.calib_check
        if needs and not settings.calib:
            raise InputError("these candidates calibrate: give --calib DATA")
        self.calib = CalibSettings(data=settings.calib, n_samples=settings.calib_samples, seq_len=settings.seq_len) \
            if settings.calib else None
        self.ctx = Context(self.ref, self.calib, settings.train_data, settings.qat_steps)
        self.cache_dir = self.report_dir / ".cache"

    def say(self, msg: str) -> None:
        if self.console is not None:
            self.console.print(msg)
        else:
            log.info(msg)

    # --- scoring -------------------------------------------------------------------------------
    def _task_scores(self, handle: ModelHandle) -> Any:
        if self.task is None:
            return None
        if self.task.kind == MC:
            return score_mc(handle.model, self.ref.tokenizer, self.task)
        from lowbit.metrics.encoder import embed

        texts = [it["text"] for it in self.task.items]
        emb = embed(handle.model, self.ref.tokenizer, texts)
        if handle is self.ref:
            self._centroids = class_centroids(emb, self.task)
        return score_classification(emb, self._centroids, self.task)

    def _speed(self, model: nn.Module) -> tuple[float | None, float | None]:
        if not self.s.speed:
            return None, None
        win = self.evaluator.windows(self.ref.tokenizer)
        if self.kind == CAUSAL_LM:
            return (speedmod.prefill_tok_s(model, win[0, : min(256, win.shape[1])]),
                    speedmod.decode_tok_s(model, win[0, : min(32, win.shape[1])], 16))
        texts = self.evaluator.texts()[:16]
        enc = self.ref.tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        return speedmod.encoder_tok_s(model, enc), None

    def _gguf_speed(self, path: Path) -> tuple[float | None, float | None, str]:
        """llama.cpp's speed on the candidate file, as a ratio to llama.cpp on the F32 export."""
        from lowbit.metrics import llamacpp

        if not self.s.speed:
            return None, None, ""
        if not llamacpp.available():
            return None, None, "speed not measured: llama.cpp is not installed (`make reference`)"
        if getattr(self, "_f32_speed", None) is None:
            from lowbit.writers.gguf import export_gguf

            f32 = self.cache_dir / "f32-speed.gguf"
            export_gguf(self.ref, f32, "F32", overwrite=True)
            self._f32_speed = self._llamacpp_speed(f32)
            f32.unlink()
        pre, dec = self._llamacpp_speed(path)
        return pre / self._f32_speed[0], dec / self._f32_speed[1], "llama.cpp, ratio to the F32 GGUF in llama.cpp"

    def _llamacpp_speed(self, path: Path) -> tuple[float, float]:
        from lowbit.metrics.llamacpp import load_llamacpp

        h = load_llamacpp(path, n_ctx=512)
        win = self.evaluator.windows(self.ref.tokenizer)
        pre = h.model.prefill_tok_s(win[0, :256])
        dec = h.model.decode_tok_s(win[0, :32], 16)
        del h
        return pre, dec

    def _row(self, res: Any, extra: dict[str, Any]) -> dict[str, Any]:
        d = res.to_dict()
        row = {k: d.get(k) for k in ("ppl", "kl_mean", "kl_p99", "top1_agreement", "cosine_mean", "cosine_min",
                                     "bits_per_weight", "size_bytes", "n_tokens")}
        row.update(extra)
        return row

    # --- the run -------------------------------------------------------------------------------
    def reference_row(self) -> dict[str, Any]:
        res = self.evaluator.run(self.ref, label="reference")
        pre, dec = self._speed(self.ref.model)
        self._ref_speed = (pre, dec)
        row = self._row(res, {"id": "reference", "method": "float32", "family": "float", "bits": 32,
                              "prefill_tok_s": pre, "decode_tok_s": dec})
        ts = self._task_scores(self.ref)
        if ts is not None:
            self._ref_task = ts
            row.update(accuracy=ts.accuracy, flips=0)
        return row

    def key(self, c: Candidate, calib: Any = None) -> str:
        calib = calib if calib is not None else self.calib
        parts = [VERSION, self.model_key, c.config, _data_key(self.s.eval), self.s.eval_text if self.task else "",
                 self.s.windows, self.s.seq_len, self.s.task_limit, self.s.speed,
                 (_data_key(calib.data), calib.n_samples, calib.seq_len) if (calib and (c.needs_calib or c.family == "gguf")) else None,
                 (_data_key(self.s.train_data), self.s.qat_steps) if c.needs_training else None]
        return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]

    def run_candidate(self, c: Candidate, calib: Any = None, tag: str = "") -> dict[str, Any]:
        path = self.cache_dir / f"{c.id}{tag}-{self.key(c, calib)}.json"
        if path.exists():
            self.say(f"[dim]{c.id}{tag}: finished in an earlier run, cached ({path.name})[/]")
            return json.loads(path.read_text())
        ctx = self.ctx if calib is None else Context(self.ref, calib, self.s.train_data, self.s.qat_steps)
        self.say(f"{c.id}{tag}: {c.label}")
        had_imatrix = ctx._imatrix is not None
        t0 = time.perf_counter()
        built: Built = c.build(self.ref, ctx)
        secs = time.perf_counter() - t0
        if built.extra.get("imatrix") and had_imatrix:  # computed once, for an earlier candidate: charge it here too
            secs += ctx.imatrix_seconds
        res = self.evaluator.run(built.handle, label=c.id + tag)
        if built.size_bytes is not None:
            res.size_bytes, res.bits_per_weight = built.size_bytes, built.bits_per_weight
        speed_note = ""
        if built.gguf_path is not None:
            pre_r, dec_r, speed_note = self._gguf_speed(built.gguf_path)
        else:
            pre, dec = self._speed(built.handle.model)
            rp, rd = getattr(self, "_ref_speed", (None, None))
            pre_r = pre / rp if pre and rp else None
            dec_r = dec / rd if dec and rd else None
            speed_note = "torch on this machine, ratio to the float32 model" if pre_r else ""
        row = self._row(res, {"id": c.id + tag, "method": c.id, "family": c.family, "bits": c.bits, "label": c.label,
                              "format": c.format, "calib_seconds": secs, "calibrated": c.needs_calib or bool(built.extra.get("imatrix")),
                              "speed_ratio_vs_fp32": pre_r, "decode_ratio_vs_fp32": dec_r, "speed_note": speed_note,
                              "layer_errors": layer_errors(self.ref.model, built.handle.model)})
        row["slower_than_fp32"] = pre_r is not None and pre_r < 1.0
        axes = self._axes(c.id)
        if axes:  # the plan's text, with this run's own numbers where it measured them
            axes["bit width"] = f"{c.bits} ({row['bits_per_weight']:.2f} bits per weight here)" if row.get("bits_per_weight") else str(c.bits)
            axes["calibration cost"] = f"{secs:.1f} s here ({'calibrated' if row['calibrated'] else 'no calibration'})"
            row["axes"] = axes
        ts = self._task_scores(built.handle)
        if ts is not None:
            ts.against(self._ref_task, self.task.answers)
            row.update(accuracy=ts.accuracy, flips=ts.flips, flips_to_wrong=ts.flips_to_wrong, flips_to_right=ts.flips_to_right)
        if built.gguf_path is not None:
            built.gguf_path.unlink(missing_ok=True)
            built.gguf_path.parent.rmdir()
        del built
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(row))
        tmp.replace(path)
        return row

    def calib_check(self, rows: list[dict[str, Any]], rec_id: str | None) -> dict[str, Any]:
        """Quantize one calibrated candidate again with a generic calibration set (pydoc or stdlib,
        whichever is further from the eval data) and show the quality gap on the user's eval set."""
        from lowbit.api import CalibSettings
        from lowbit.compare.candidates import CANDIDATES
        from lowbit.compare.domain import token_distance

        calibrated = [c for c in self.candidates if c.needs_calib]
        pick = next((c for c in calibrated if c.id == rec_id), None) or (calibrated[0] if calibrated else CANDIDATES.get("gptq-w4g64"))
        if self.kind not in pick.kinds:
            return {"skipped": f"{pick.id} does not apply to a {self.kind} model"}
        eval_corpus = self.s.eval_text if self.task else self.s.eval
        dist = {g: token_distance(g, eval_corpus, self.ref.tokenizer) for g in ("pydoc:calib", "stdlib:calib")}
        generic = max(dist, key=dist.get)
        if generic == self.s.calib:
            generic = min(dist, key=dist.get)
        mine = next((r for r in rows if r["id"] == pick.id), None) or self.run_candidate(pick)
        other = self.run_candidate(pick, CalibSettings(data=generic, n_samples=self.calib.n_samples,
                                                      seq_len=self.calib.seq_len), tag=f"@{generic}")
        user_dist = token_distance(self.s.calib, eval_corpus, self.ref.tokenizer)
        key = "kl_mean" if mine.get("kl_mean") is not None else "cosine_mean"
        better = (mine[key] < other[key]) if key == "kl_mean" else (mine[key] > other[key])
        return {"candidate": pick.id, "user_calib": self.s.calib, "generic_calib": generic, "metric": key,
                "user_value": mine[key], "generic_value": other[key], "user_calib_better": better,
                "distance_user_calib_to_eval": user_dist, "distance_generic_to_eval": dist[generic],
                "generic_row": other}

    def run(self) -> dict[str, Any]:
        self.report_dir.mkdir(parents=True, exist_ok=True)
        from lowbit.compare.domain import DOMAIN_WARN, token_distance

        warnings = []
        if self.calib is not None and self.kind == CAUSAL_LM:
            d = token_distance(self.s.calib, self.s.eval_text if self.task else self.s.eval, self.ref.tokenizer)
            if d > DOMAIN_WARN:
                warnings.append(f"the calibration tokens look unlike the eval tokens (Jensen-Shannon distance {d:.2f} "
                                f"> {DOMAIN_WARN}): calibrated methods may suffer; draw --calib from your real traffic "
                                "(the guide's 'calibrate on generic text, deploy on domain traffic' trap)")
        ref_row = self.reference_row()
        rows = [self.run_candidate(c) for c in self.candidates]
        front = pareto(rows)
        for r in rows:
            r["pareto"] = r["id"] in front
        rec = recommend(rows, ref_row, self.bar, self.s.budget_bpw)
        slow = [r["id"] for r in rows if r.get("slower_than_fp32")]
        if slow:
            warnings.append(f"slower than full precision on this machine: {', '.join(slow)} (the guide's portability "
                            "trap: confirm the format runs accelerated where you deploy)")
        out: dict[str, Any] = {
            "model": self.ref.name, "kind": self.kind, "settings": asdict(self.s), "bar": str(self.bar),
            "protocol": ref_row.get("protocol") or asdict(self.evaluator.settings),
            "machine": {"platform": platform.platform(), "threads": torch.get_num_threads(), "python": sys.version.split()[0]},
            "reference": ref_row, "candidates": rows,
            "recommendation": {"method": rec.id, "reasons": rec.reasons, "met_bar": rec.met_bar},
            "warnings": warnings,
            "task": {"kind": self.task.kind, "name": self.task.name, "items": len(self.task.items)} if self.task else None,
        }
        for r in rows:
            r["meets_bar"] = self.bar.holds(r, ref_row)
        out["axes"] = next((r.get("axes") for r in rows if r["id"] == rec.id), None) or self._axes(rec.id)
        if self.s.calib_check:
            out["calib_check"] = self.calib_check(rows, rec.id)
        self._record_speed(rows)
        from lowbit.compare.report import write_report

        write_report(out, self.report_dir)
        return out

    def _axes(self, cid: str | None) -> dict[str, str] | None:
        """The recommended candidate on the guide's five axes (plan/rules.toml), hardware for --target."""
        from lowbit.compare.candidates import CANDIDATES
        from lowbit.plan.rule import Target, method_choice

        base = cid.split("@")[0] if cid else None
        c = CANDIDATES.get(base) if base and base in CANDIDATES else None
        if c is None or c.plan_method is None:
            return None
        return dict(method_choice(c.plan_method, Target.parse(self.s.target), None).axes())

    def _record_speed(self, rows: list[dict[str, Any]]) -> None:
        """What was measured here feeds `lowbit plan` (plan/rule.py reads it)."""
        from lowbit.plan.rule import measured_speed, speed_file

        data = measured_speed()
        measured = [r for r in rows if r.get("speed_ratio_vs_fp32") is not None and r.get("format")]
        if not measured:
            return
        for r in measured:
            data[r["format"]] = {"prefill_ratio_vs_fp32": r["speed_ratio_vs_fp32"],
                                 "decode_ratio_vs_fp32": r.get("decode_ratio_vs_fp32"),
                                 "runtime": r.get("speed_note", ""), "model": self.ref.name,
                                 "date": time.strftime("%Y-%m-%d")}
        try:
            speed_file().write_text(json.dumps(data, indent=1))
        except OSError as e:
            log.warning("could not record measured speeds: %s", e)


def compare(model: Any, settings: CompareSettings, report_dir: str | Path, console: Any = None) -> dict[str, Any]:
    return Comparison(model, settings, Path(report_dir), console).run()
