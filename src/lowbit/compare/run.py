"""`lowbit compare`: every candidate on the user's own data, the same windows and reference for all,
then the Pareto front, the guide's recommendation and a report.

    load -> reference scores -> for each candidate: quantize (calibrating where needed) -> evaluate
    (quality, accuracy and flips, per-layer error, size, calibration cost, speed vs fp32 here)
    -> decide (bar, Pareto, recommendation) -> report (results.json, report.md, report.html)

Finished candidates are cached in ``REPORT/.cache`` (compare/cache.py), keyed by the model, the
candidate's settings and the data, so a rerun after Ctrl-C or a crash skips them.
"""

from __future__ import annotations

import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from lowbit.calib.settings import CalibSettings
from lowbit.compare import cache, speed
from lowbit.compare.calib_check import calib_check
from lowbit.compare.candidates import Built, Candidate, candidates_for
from lowbit.compare.context import Context
from lowbit.compare.decide import Bar, Recommendation, default_bar, pareto, recommend, settle
from lowbit.compare.results import Machine, Results, TaskInfo
from lowbit.compare.row import REFERENCE, Row
from lowbit.compare.settings import CompareSettings
from lowbit.compare.until import until_decided
from lowbit.errors import InputError
from lowbit.loaders import ModelHandle, load_model
from lowbit.loaders.handle import CAUSAL_LM
from lowbit.metrics.layer_error import layer_outputs, output_errors
from lowbit.metrics.run import EvalSettings, Evaluator
from lowbit.metrics.tasks import MC, class_centroids, load_task, score_classification, score_mc, task_kind

__all__ = ["CompareSettings", "Comparison", "Context", "compare"]

log = logging.getLogger(__name__)


LAYER_TOKENS = 64  # tokens the per-layer output error is measured on


class Comparison:
    """One run: checks the settings, scores the reference, then each candidate (or its cached row),
    decides and writes the report. :meth:`run` returns the typed :class:`Results`."""

    def __init__(self, model: Any, settings: CompareSettings, report_dir: Path, console: Any = None) -> None:
        from lowbit.plan.rule import Target

        self.s, self.report_dir, self.console = settings, Path(report_dir), console
        settings.check()
        Target.parse(settings.target)  # a bad --target fails before any work
        if settings.bar:
            Bar.parse(settings.bar)
        _import_plugins(settings.plugins)
        self.model_arg = model if isinstance(model, str) else None  # what a cluster's tasks load
        self.ref = load_model(model)
        self.model_key = cache.model_key(model, self.ref)
        self.kind = self.ref.kind
        self.task = None
        if task_kind(settings.eval):
            self.task = load_task(settings.eval, settings.task_limit)
            if (self.task.kind == MC) != (self.kind == CAUSAL_LM):
                raise InputError(f"{settings.eval}: a {self.task.kind} set does not fit a {self.kind} model")
        self.evaluator = Evaluator(self.ref, EvalSettings(data=self.eval_text, windows=settings.windows,
                                                          seq_len=settings.seq_len, seed=settings.seed, speed=False,
                                                          texts=16 * settings.windows, protocol=settings.protocol),
                                   ref_key=self.model_key)
        self.bar = Bar.parse(settings.bar) if settings.bar else default_bar(self.kind, self.task is not None)
        training = bool(settings.train_data) and settings.qat_steps > 0
        self.candidates = candidates_for(self.kind, settings.methods, training)
        if settings.budgets:
            from lowbit.compare.families import budget_candidate

            if self.kind != CAUSAL_LM:
                raise InputError("--budget mixes GGUF types by their effect on next-token KL: it needs a causal LM")
            self.candidates += [budget_candidate(b, settings.budget_check) for b in settings.budgets]
        if any(c.needs_training for c in self.candidates) and not training:
            raise InputError("QAT candidates train: give --train-data DATA and --qat-steps N")
        needs = any(c.needs_calib for c in self.candidates) or settings.calib_check
        if needs and not settings.calib:
            raise InputError("these candidates calibrate: give --calib DATA")
        self.calib = CalibSettings(data=settings.calib, n_samples=settings.calib_samples, seq_len=settings.seq_len) \
            if settings.calib else None
        self.ctx = Context(self.ref, self.calib, settings.train_data, settings.qat_steps, settings.embeddings,
                           proxy_pairs=settings.budget_check)
        self.evaluator.check_kind(self.kind)  # before the report, as an eval set too small for one window:
        if self.kind == CAUSAL_LM:
            self.evaluator.windows(self.ref.tokenizer)
        self.cache_dir = self.report_dir / ".cache"
        self.meter = speed.SpeedMeter(self.ref, self.evaluator, self.cache_dir, settings.speed)
        self._ref_task: Any = None
        self._ref_outputs: dict[str, Any] | None = None
        self._layer_ids: Any = None
        self._centroids: Any = None

    @property
    def eval_text(self) -> str:
        """The text KL and PPL are scored on: --eval, or --eval-text when --eval is a labelled task."""
        return self.s.eval_text if self.task else self.s.eval

    def say(self, msg: str) -> None:
        if self.console is not None:
            self.console.print(msg)
        else:
            log.info(msg)

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

    # --- the rows --------------------------------------------------------------------------------
    def reference_row(self) -> Row:
        res = self.evaluator.run(self.ref, label=REFERENCE)
        pre, dec = self.meter.reference()
        row = Row.scored(res, id=REFERENCE, method="float32", family="float", bits=32, prefill_tok_s=pre,
                         decode_tok_s=dec)
        ts = self._task_scores(self.ref)
        if ts is not None:
            self._ref_task = ts
            row.accuracy, row.flips = ts.accuracy, 0
        return row

    def key(self, c: Candidate, calib: CalibSettings | None = None) -> str:
        return cache.candidate_key(c, self.s, self.model_key, calib if calib is not None else self.calib,
                                   self.task is not None)

    def row_path(self, c: Candidate, calib: CalibSettings | None = None, tag: str = "") -> Path:
        """Where candidate ``c``'s finished row is cached."""
        return self.cache_dir / f"{c.id}{tag}-{self.key(c, calib)}.json"

    def run_candidate(self, c: Candidate, calib: CalibSettings | None = None, tag: str = "") -> Row:
        """Candidate ``c``'s row, from the cache or built and scored now; ``calib`` and ``tag``: the
        calibration check's rerun on other data."""
        path = self.row_path(c, calib, tag)
        cached = cache.read_row(path)
        if cached is not None:
            self.say(f"[dim]{c.id}{tag}: finished in an earlier run, cached ({path.name})[/]")
            return cached
        row = self.build_row(c, calib, tag)
        cache.write_row(path, row)
        return row

    def build_row(self, c: Candidate, calib: CalibSettings | None = None, tag: str = "") -> Row:
        """Candidate ``c`` built and scored now (not cached: :meth:`run_candidate`, or a cluster's driver, does that)."""
        ctx = self.ctx if calib is None else Context(self.ref, calib, self.s.train_data, self.s.qat_steps)
        self.say(f"{c.id}{tag}: {c.label}")
        had_imatrix = ctx.has_imatrix
        t0 = time.perf_counter()
        built: Built = c.build(self.ref, ctx)
        if self.s.embeddings == "quantized" and built.gguf_path is None:  # GGUF files do it in the file
            from lowbit.compare.families import quantize_embeddings

            built.handle = quantize_embeddings(built.handle)
        secs = time.perf_counter() - t0
        if built.extra.get("imatrix") and had_imatrix:  # computed once, for an earlier candidate: charge it here too
            secs += ctx.imatrix_seconds
        if built.extra.get("reused_sensitivity"):  # likewise the budget candidates' sensitivity pass
            secs += ctx.sensitivity_seconds
        secs -= built.extra.get("check_seconds", 0.0)  # --budget-check measures the proxy; the file does not need it
        row = self._score(c, built, secs, tag)
        row.allocation, row.predicted_kl, row.proxy, row.fallbacks = (
            built.extra.get(k) for k in ("allocation", "predicted_kl", "proxy", "fallbacks"))
        if built.gguf_path is not None:
            built.gguf_path.unlink(missing_ok=True)
            built.gguf_path.parent.rmdir()
        del built
        row.seconds = time.perf_counter() - t0
        return row

    def _score(self, c: Candidate, built: Built, secs: float, tag: str) -> Row:
        """Quality, size, speed, per-layer error, the five axes and task scores of a built candidate."""
        res = self.evaluator.run(built.handle, label=c.id + tag)
        if built.size_bytes is not None:
            res.size_bytes, res.bits_per_weight = built.size_bytes, built.bits_per_weight
        from lowbit.metrics.size import gguf_size_breakdown, size_breakdown

        sizes = gguf_size_breakdown(str(built.gguf_path)) if built.gguf_path is not None else \
            size_breakdown(built.handle.model)
        if built.gguf_path is not None:
            sp = self.meter.gguf_ratio(built.gguf_path)
        elif c.family == "bitsandbytes":
            sp = self.meter.bitsandbytes_ratio(built.handle.model)
        else:
            sp = self.meter.torch_ratio(built.handle.model)
        pre_r, dec_r, note = sp.prefill, sp.decode, sp.note
        row = Row.scored(res, id=c.id + tag, method=c.id, family=c.family, bits=c.bits, label=c.label, format=c.format,
                         calib_seconds=secs, calibrated=c.needs_calib or bool(built.extra.get("imatrix")),
                         speed_ratio_vs_fp32=pre_r, decode_ratio_vs_fp32=dec_r, speed_note=note,
                         speed_ratio_spread=sp.spread, size_breakdown=sizes,
                         layer_errors=self._layer_errors(built.handle.model),
                         slower_than_fp32=pre_r is not None and pre_r < 1.0)
        axes = self._axes(c.id)
        if axes:  # the plan's text, with this run's own numbers where it measured them
            axes["bit width"] = f"{c.bits} ({row.bits_per_weight:.2f} bits per weight here)" if row.bits_per_weight else str(c.bits)
            axes["calibration cost"] = f"{secs:.1f} s here ({'calibrated' if row.calibrated else 'no calibration'})"
            row.axes = axes
        ts = self._task_scores(built.handle)
        if ts is not None:
            ts.against(self._ref_task, self.task.answers)
            row.accuracy, row.flips = ts.accuracy, ts.flips
            row.flips_to_wrong, row.flips_to_right = ts.flips_to_wrong, ts.flips_to_right
        return row

    def _axes(self, cid: str | None) -> dict[str, str] | None:
        """A candidate on the guide's five axes (plan/rules.toml), hardware for --target."""
        from lowbit.compare.candidates import CANDIDATES
        from lowbit.plan.rule import Target, method_choice

        base = cid.split("@")[0] if cid else None
        c = CANDIDATES.get(base) if base and base in CANDIDATES else None
        if c is None or c.plan_method is None:
            return None
        return dict(method_choice(c.plan_method, Target.parse(self.s.target), None).axes())

    # --- the run ---------------------------------------------------------------------------------
    def run(self) -> Results:
        warnings, ref_row = self.start()
        return self.finish(ref_row, [self.run_candidate(c) for c in self.candidates], warnings)

    def start(self) -> tuple[list[str], Row]:
        """The report directory, the calibration-domain warning and the reference's row."""
        self.report_dir.mkdir(parents=True, exist_ok=True)
        return self._domain_warning(), self.reference_row()

    def finish(self, ref_row: Row, rows: list[Row], warnings: list[str], failed: dict[str, str] | None = None,
               local_node: dict[str, Any] | None = None) -> Results:
        """Decide on the candidates' ``rows`` and write the report. From a cluster's sweep: ``failed``, the
        candidates that raised, with their error, reported and left out of the decision; ``local_node``,
        this machine's identity: only the rows measured here feed `lowbit plan`'s speeds."""
        rounds = None
        if self.s.until_decided:
            ref_row, rows, rounds = until_decided(self, ref_row, rows, self.s.until_decided)
        rec = self.decide(ref_row, rows)
        if rounds is not None:
            rec.reasons.append(rounds.reason())
        if any(c.family == "gguf-budget" for c in self.candidates):
            from lowbit.budget.allocate import grid_warning

            msg = grid_warning(self.ref)
            if msg:
                warnings.append(msg)
        warnings += [f"{cid} failed: {err}" for cid, err in (failed or {}).items()]
        warnings += [f"{r.id}: {len(r.fallbacks)} tensor(s) could not take the mix's type at their width and took "
                     f"llama.cpp's fallback (e.g. {r.fallbacks[0]}); its size and quality are of the file as written"
                     for r in rows if r.fallbacks]
        slow = [r.id for r in rows if r.slower_than_fp32]
        if slow:
            warnings.append(f"slower than full precision on {'its node' if local_node else 'this machine'}: {', '.join(slow)} "
                            "(the guide's portability trap: confirm the format runs accelerated where you deploy)")
        for r in rows:
            r.meets_bar = self.bar.holds(r, ref_row)
        res = Results(
            model=self.ref.name, kind=self.kind, settings=self.s, bar=self.bar, protocol=self.evaluator.settings,
            machine=Machine(platform.platform(), torch.get_num_threads(), sys.version.split()[0]),
            reference=ref_row, candidates=rows, recommendation=rec, warnings=warnings,
            task=TaskInfo(self.task.kind, self.task.name, len(self.task.items)) if self.task else None,
            axes=next((r.axes for r in rows if r.id == rec.id), None) or self._axes(rec.id), until_decided=rounds,
            failed=dict(failed or {}))
        if self.s.calib_check:
            res.calib_check = calib_check(self, rows, rec.id)
        speed.record([r for r in rows if local_node is None or r.node == local_node], self.ref.name)
        from lowbit.compare.report import write_report

        write_report(res, self.report_dir)
        return res

    def decide(self, ref_row: Row, rows: list[Row]) -> Recommendation:
        """The Pareto front (marked on the rows), the recommendation and the paired differences to it."""
        front = pareto(rows)
        for r in rows:
            r.pareto = r.id in front
        rec = recommend(rows, ref_row, self.bar, self.s.budget_bpw)
        settle(rows, rec, self.bar)
        return rec

    def more_windows(self) -> bool:
        """Twice the eval windows (an encoder's: 16 passages each) for what is scored next, the first ones
        unchanged; False when the data holds no more."""
        from dataclasses import replace

        def sample(ev: Evaluator) -> int:
            return len(ev.windows(self.ref.tokenizer)) if self.kind == CAUSAL_LM else len(ev.texts())

        w = 2 * self.s.windows
        ev = Evaluator(self.ref, replace(self.evaluator.settings, windows=w, texts=16 * w), ref_key=self.model_key)
        if sample(ev) <= sample(self.evaluator):
            return False
        self.s = replace(self.s, windows=w)
        self.evaluator = self.meter.evaluator = ev
        return True

    def _layer_errors(self, model: Any) -> dict[str, float]:
        """Each Linear's output error in the candidate's forward pass on LAYER_TOKENS calibration tokens
        (eval tokens for an encoder or without calibration data), against the reference's outputs (computed
        once)."""
        from torch import nn

        if self._ref_outputs is None:
            tok = self.ref.tokenizer
            if self.calib is not None and self.kind == CAUSAL_LM:
                from lowbit.calib import load_corpus, token_windows

                ids = token_windows(load_corpus(self.calib.data), tok, 1, LAYER_TOKENS, self.calib.seed)
            elif self.kind == CAUSAL_LM:
                ids = self.evaluator.windows(tok)[:1, :LAYER_TOKENS]
            else:
                ids = tok(self.evaluator.texts()[0], truncation=True, max_length=LAYER_TOKENS, return_tensors="pt")["input_ids"]
            names = [n for n, m in self.ref.model.named_modules() if isinstance(m, nn.Linear)]
            self._layer_ids, self._ref_outputs = ids, layer_outputs(self.ref.model, names, ids)
        return output_errors(self._ref_outputs, model, self._layer_ids)

    def _domain_warning(self) -> list[str]:
        """The guide's trap of calibrating on generic text and deploying on domain traffic, measured."""
        from lowbit.compare.domain import DOMAIN_WARN, token_distance

        if self.calib is None or self.kind != CAUSAL_LM:
            return []
        d = token_distance(self.s.calib, self.eval_text, self.ref.tokenizer)
        if d <= DOMAIN_WARN:
            return []
        return [(f"the calibration tokens look unlike the eval tokens (Jensen-Shannon distance {d:.2f} > {DOMAIN_WARN}): "
                 "calibrated methods may suffer; draw --calib from your real traffic (the guide's 'calibrate on "
                 "generic text, deploy on domain traffic' trap)")]


def _import_plugins(modules: list[str]) -> None:
    """--plugin: modules that register more candidates (compare/candidates.py), imported before the
    candidates are chosen (on the driver and in every cluster task)."""
    import importlib

    for m in modules:
        try:
            importlib.import_module(m)
        except ImportError as e:
            raise InputError(f"--plugin {m}: cannot import it ({e})") from None


def compare_models(models: list[Any], settings: CompareSettings, report_dir: str | Path,
                   console: Any = None) -> list[Results]:
    """`lowbit compare MODEL [MODEL...]`: one report per model (``report_dir`` itself for one model,
    ``report_dir/NAME`` for each of several). With ``settings.cluster``, every candidate of every model
    runs as one Ray sweep (compare/cluster.py); without, one model after the other, as :class:`Comparison`."""
    report_dir = Path(report_dir)
    dirs = [report_dir] if len(models) == 1 else [report_dir / _slug(m) for m in models]
    if len(set(dirs)) < len(dirs):
        raise InputError("two models share a report name: compare them in separate runs")
    if settings.cluster is None:
        return [Comparison(m, settings, d, console).run() for m, d in zip(models, dirs, strict=True)]
    if not all(isinstance(m, str) for m in models):
        raise InputError("--cluster needs each model as a path or built-in name that every node can load")
    from lowbit.compare.cluster import check_nodes, connect, sweep

    connect(settings.cluster)  # an unreachable cluster, or a node that lacks lowbit or the files: before any loading
    n = check_nodes(models, [settings.calib, settings.eval, settings.eval_text, settings.train_data], settings.plugins)
    return sweep([Comparison(m, settings, d, console) for m, d in zip(models, dirs, strict=True)], nodes=n)[0]


def _slug(model: Any) -> str:
    name = Path(str(model).rstrip("/")).name or "model"
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name)


def compare(model: Any, settings: CompareSettings, report_dir: str | Path, console: Any = None) -> dict[str, Any]:
    """Run the comparison and write the report; returns ``results.json``'s content as a dict (keys
    ``reference``, ``candidates``, ``recommendation``, ``warnings``, ...). :class:`Comparison` gives
    the typed :class:`Results`."""
    return compare_models([model], settings, report_dir, console)[0].to_dict()
