"""``--until-decided SECONDS``: add eval windows, up to a time budget, until the recommendation no longer
depends on noise, or say that it could not be decided.

    score every candidate on W windows -> decide -> the candidates still open? -> none: decided
    -> rescore only those on 2W windows (the first W are the same windows: the reference's log-probs
    come back from the disk store) -> decide again ... until decided, out of time or out of data

A candidate is open when the decision could flip on it: those smaller than the recommended one whose
95% interval on the bar's statistic straddles the bar (more tokens may show they hold it), and the
recommended one with those indistinguishable from it (paired interval of the difference includes 0) or
when its own interval straddles the bar. Rows that were never open keep their smaller sample; paired differences use the tokens both
were scored on (windows are prefix-stable, so the shorter sample's blocks are the longer one's first).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lowbit.compare.decide import Bar, Recommendation, real_size
from lowbit.compare.row import Row

if TYPE_CHECKING:
    from lowbit.compare.run import Comparison


@dataclass
class Rounds:
    """What ``--until-decided`` did: each round's windows and open candidates, and how it ended."""

    budget_seconds: float
    rounds: list[dict[str, Any]] = field(default_factory=list)
    decided: bool = False
    why: str = ""  # "decided" | "out of time" | "out of data"
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"budget_seconds": self.budget_seconds, "rounds": self.rounds, "decided": self.decided,
                "why": self.why, "seconds": round(self.seconds, 1)}

    def reason(self) -> str:
        last = self.rounds[-1]
        if self.decided:
            return (f"Decided (--until-decided): after {len(self.rounds)} round(s), the open candidates scored on "
                    f"{last['windows']} windows, nothing is left to noise.")
        return (f"Could not decide (--until-decided {self.budget_seconds:g} s, {self.why}): "
                f"{', '.join(last['open'])} still open after {last['windows']} windows.")


def threshold(bar: Bar, ref: Row) -> float | None:
    """The value of the bar's statistic at which a candidate stops holding it; None where it has no interval."""
    if bar.metric in ("kl", "cos", "top1"):
        return bar.value
    if bar.metric == "ppl" and ref.ppl is not None:
        return ref.ppl * (1 + bar.value / 100) if bar.percent else ref.ppl + bar.value
    return None


def straddles(row: Row, bar: Bar, ref: Row) -> bool:
    ci, thr = (row.ci95 or {}).get(bar.key()), threshold(bar, ref)
    return ci is not None and thr is not None and ci[0] <= thr <= ci[1]


def open_candidates(rows: list[Row], rec: Recommendation, bar: Bar, ref: Row) -> list[str]:
    """The ids the decision could still flip on (see the module's docstring), in row order."""
    pick = next((r for r in rows if r.id == rec.id), None)
    if pick is None:
        return []
    size = real_size(pick)
    near = {r.id for r in rows if r is not pick and straddles(r, bar, ref)
            and (size is None or real_size(r) is None or real_size(r) < size)}
    if rec.indistinguishable_from or straddles(pick, bar, ref):  # a smaller one's bar test needs no more of the pick
        near |= {pick.id, *rec.indistinguishable_from}
    return [r.id for r in rows if r.id in near]


def estimate(rows: list[Row], still: list[str], ref: Row, windows: int) -> float:
    """Seconds the next round should take: each open candidate's last build and scoring (``Row.seconds``, kept
    in the cache) scaled from the windows it was scored on to twice ``windows``, and the reference on the
    new windows at the open candidates' mean rate per window."""
    per_window = ref.n_tokens / windows if ref.n_tokens else 0
    rates = [r.seconds / (r.n_tokens / per_window) for r in rows
             if r.id in still and r.seconds and r.n_tokens and per_window]
    if not rates:
        return 0.0
    return sum(rates) * 2 * windows + windows * sum(rates) / len(rates)


def until_decided(cmp: Comparison, ref_row: Row, rows: list[Row], budget: float) -> tuple[Row, list[Row], Rounds]:
    """Rescore the open candidates on doubled windows while time is left; returns the final reference row,
    rows and what was done. The decision itself is made again by the caller on the rows returned."""
    t0, out = time.perf_counter(), Rounds(budget)
    while True:
        rec = cmp.decide(ref_row, rows)
        still = open_candidates(rows, rec, cmp.bar, ref_row)
        out.rounds.append({"windows": cmp.s.windows, "open": still, "recommended": rec.id})
        if not still:
            out.decided, out.why = True, "decided"
            break
        if time.perf_counter() - t0 + estimate(rows, still, ref_row, cmp.s.windows) > budget:
            out.why = "out of time"
            break
        if not cmp.more_windows():
            out.why = "out of data"
            break
        cmp.say(f"[bold]--until-decided[/]: {', '.join(still)} open; rescoring on {cmp.s.windows} windows")
        ref_row = cmp.reference_row()
        rows = [cmp.run_candidate(c) if c.id in still else r for c, r in zip(cmp.candidates, rows)]
    out.seconds = time.perf_counter() - t0
    return ref_row, rows, out
