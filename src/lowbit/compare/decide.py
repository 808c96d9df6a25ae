"""The user's quality bar, the Pareto front of size vs quality, and the guide's recommendation:
start conservative and push the size down only while the bar holds, by real size;
ties within the noise of the sample are named. Pure functions over result
rows (:class:`Row`: ``id``, ``bits``, ``bits_per_weight``, ``size_bytes`` and the metrics), so they are
tested without running a model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from lowbit.compare.row import Row
from lowbit.errors import InputError
from lowbit.metrics import stats

_BAR = re.compile(r"^\s*(kl|ppl|acc|cos|top1)\s*=\s*([+-]?\d+(?:\.\d+)?)\s*(%?)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Bar:
    """``kl=0.05`` mean KL at most 0.05; ``ppl=+3%`` PPL at most 3% above the reference's (``ppl=+0.5``:
    0.5 above); ``acc=-1`` accuracy at most 1 point below the reference's; ``cos=0.99`` mean embedding
    cosine at least 0.99; ``top1=0.9`` top-1 agreement at least 0.9."""

    metric: str
    value: float
    percent: bool = False

    @classmethod
    def parse(cls, text: str) -> Bar:
        m = _BAR.match(text or "")
        if not m:
            raise InputError(f"--bar {text!r}: expected kl=0.05, ppl=+3%, acc=-1, cos=0.99 or top1=0.9")
        metric, value, pct = m.group(1).lower(), float(m.group(2)), m.group(3) == "%"
        if pct and metric != "ppl":
            raise InputError(f"--bar {text!r}: only ppl takes a percentage")
        if metric in ("kl",) and value < 0:
            raise InputError(f"--bar {text!r}: a KL bar must be positive")
        return cls(metric, value, pct)

    def __str__(self) -> str:
        if self.metric == "ppl":
            return f"PPL <= reference {'+' if self.value >= 0 else ''}{self.value:g}{'%' if self.percent else ''}"
        return {"kl": f"KL <= {self.value:g}", "acc": f"accuracy >= reference {self.value:+g} points",
                "cos": f"cosine >= {self.value:g}", "top1": f"top-1 agreement >= {self.value:g}"}[self.metric]

    def key(self) -> str:
        """The :class:`Row` attribute the bar reads."""
        return {"kl": "kl_mean", "ppl": "ppl", "acc": "accuracy", "cos": "cosine_mean", "top1": "top1_agreement"}[self.metric]

    def holds(self, row: Row, ref: Row) -> bool | None:
        """True / False, or None when the row lacks the metric."""
        v = getattr(row, self.key())
        if v is None:
            return None
        if self.metric == "kl":
            return v <= self.value
        if self.metric == "ppl":
            base = ref.ppl
            if base is None:
                return None
            return v <= base * (1 + self.value / 100) if self.percent else v <= base + self.value
        if self.metric == "acc":
            base = ref.accuracy
            return None if base is None else 100 * (v - base) >= self.value - 1e-9
        return v >= self.value


def default_bar(kind: str, has_accuracy: bool) -> Bar:
    if has_accuracy:
        return Bar("acc", -1.0)
    return Bar("cos", 0.99) if kind == "encoder" else Bar("kl", 0.05)


def quality(row: Row) -> float | None:
    """Lower is better: KL for LMs, 1 - cosine for encoders."""
    if row.kl_mean is not None:
        return row.kl_mean
    if row.cosine_mean is not None:
        return 1 - row.cosine_mean
    return None


def pareto(rows: list[Row]) -> set[str]:
    """Ids on the front of (size, quality loss): no other row is at least as small and as good, and
    strictly better in one."""
    pts = [(r.id, r.size_bytes, quality(r)) for r in rows]
    pts = [p for p in pts if p[1] is not None and p[2] is not None]
    front = set()
    for i, s, q in pts:
        if not any((s2 <= s and q2 <= q) and (s2 < s or q2 < q) for j, s2, q2 in pts if j != i):
            front.add(i)
    return front


@dataclass
class Recommendation:
    id: str | None
    reasons: list[str]
    met_bar: bool
    indistinguishable_from: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.id, "reasons": list(self.reasons), "met_bar": self.met_bar,
                "indistinguishable_from": list(self.indistinguishable_from)}


def real_size(row: Row) -> float | None:
    """The bytes of the whole model as the candidate stores it (bits per weight when no size is known)."""
    return row.size_bytes if row.size_bytes is not None else row.bits_per_weight


def recommend(rows: list[Row], ref: Row, bar: Bar, budget_bpw: float | None = None) -> Recommendation:
    """The guide's walk by real size: from the largest candidate down, the smallest one that still meets
    the bar (and the bpw budget). Sizes are the whole model's bytes, never the nominal bit width: a
    "4-bit" file that falls back to wider types where widths do not divide is as large as it is."""
    reasons = [f"Bar: {bar}" + (f"; budget: at most {budget_bpw:g} bits per weight" if budget_bpw else "") + "."]
    ok = {r.id: bar.holds(r, ref) for r in rows}
    sized = sorted((r for r in rows if real_size(r) is not None), key=real_size, reverse=True)
    passing = [r for r in sized if ok[r.id]]
    fits = [r for r in passing if budget_bpw is None or (r.bits_per_weight or 99) <= budget_bpw]
    if fits:
        pick = min(fits, key=lambda r: (real_size(r), quality(r) or 0))
        reasons.append(f"{len(passing)} of {len(sized)} candidates meet the bar; from the largest down by real size "
                       f"(bytes of the whole model), the smallest of them is {pick.id}: {_size(pick)}, {_metric(pick, bar)}.")
        over = [r.id for r in passing if r not in fits]
        if over:
            reasons.append(f"{', '.join(over)} meet(s) the bar but exceed(s) the {budget_bpw:g} bpw budget.")
        smaller = [r for r in sized if real_size(r) < real_size(pick) and not ok[r.id]]
        if smaller:
            nxt = max(smaller, key=real_size)
            reasons.append(f"The next smaller, {nxt.id} ({_size(nxt)}), misses it ({_metric(nxt, bar)}); stop here.")
        reasons.append(f"Recommended: {pick.id}, the smallest that holds the bar ({pick.bits_per_weight or 0:.2f} "
                       f"bits per weight).")
        return Recommendation(pick.id, reasons, True)
    scored = [r for r in rows if quality(r) is not None]
    if not scored:
        return Recommendation(None, [*reasons, "No candidate could be scored."], False)
    best = min(scored, key=quality)
    step = ("QAT was among them: give it more steps (--qat-steps), a wider bit width, or loosen the bar."
            if any(r.family == "qat" for r in rows) else
            "The guide's next step: quantization-aware training (`--train-data DATA --qat-steps N`, `lowbit qat`), "
            "or loosen the bar.")
    reasons.append(f"No candidate meets the bar (within budget). The most faithful is {best.id} ({_metric(best, bar)}). {step}")
    return Recommendation(best.id, reasons, False)


def paired_stat(bar: Bar, row: Row) -> str:
    """The statistic whose paired difference decides ties: the bar's where it is measured per token or
    per passage, else the quality measure (KL, or cosine for an encoder)."""
    if bar.key() in stats.STATS:
        return bar.key()
    return "kl_mean" if row.kl_mean is not None else "cosine_mean"


def settle(rows: list[Row], rec: Recommendation, bar: Bar) -> None:
    """Each row's paired difference to the recommended one on the same tokens (``paired_vs_recommended``),
    the candidates that cannot be told apart from it at this sample size, and a caution when the
    recommended one's interval reaches past the bar."""
    pick = next((r for r in rows if r.id == rec.id), None)
    if pick is None or not pick.blocks:
        return
    name = paired_stat(bar, pick)
    for r in rows:
        r.paired_vs_recommended = None if r is pick else stats.paired(r.blocks, pick.blocks, name)
    rec.indistinguishable_from = [r.id for r in rows if r.paired_vs_recommended is not None
                                  and not r.paired_vs_recommended["distinguishable"]]
    if rec.indistinguishable_from:
        rec.reasons.append(f"Indistinguishable at this sample size from {pick.id} on {name} (95% interval of the paired "
                           f"difference includes 0): {', '.join(rec.indistinguishable_from)}; add windows (--windows) to "
                           f"separate them.")
    ci = (pick.ci95 or {}).get(bar.key())
    if rec.met_bar and ci is not None and bar.metric == "kl" and ci[1] > bar.value:
        rec.reasons.append(f"{pick.id}'s {bar.key()} is under the bar, but its 95% interval [{ci[0]:.4g}, {ci[1]:.4g}] "
                           f"reaches past {bar.value:g}: more windows would make sure.")


def _size(row: Row) -> str:
    return f"{row.size_bytes / 1e6:.1f} MB" if row.size_bytes is not None else f"{row.bits_per_weight:.2f} bpw"


def _metric(row: Row, bar: Bar) -> str:
    v = getattr(row, bar.key())
    return f"{bar.key()} {v:.4g}" if v is not None else f"no {bar.key()}"
