"""The calibration-set check: does calibrating on the user's data beat calibrating on generic text?
One calibrated candidate is quantized again on a built-in corpus (pydoc or stdlib, whichever is
further from the eval data) and both are scored on the user's eval set."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from lowbit.calib.settings import CalibSettings
from lowbit.compare.domain import token_distance
from lowbit.compare.row import Row

if TYPE_CHECKING:
    from lowbit.compare.run import Comparison

GENERIC = ("pydoc:calib", "stdlib:calib")


@dataclass
class CalibCheck:
    candidate: str
    user_calib: str
    generic_calib: str
    metric: str  # kl_mean (lower is better) or cosine_mean (higher is better)
    user_value: float
    generic_value: float
    user_calib_better: bool
    distance_user_calib_to_eval: float  # Jensen-Shannon distance of the token distributions
    distance_generic_to_eval: float
    generic_row: Row

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["generic_row"] = self.generic_row.to_dict()
        return d


@dataclass
class CalibCheckSkipped:
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"skipped": self.reason}


def calib_check(cmp: Comparison, rows: list[Row], rec_id: str | None) -> CalibCheck | CalibCheckSkipped:
    """Check the recommended candidate if it calibrates, else the first calibrated one (GPTQ 4-bit
    if none is in the run); ``rows`` are the run's rows, reused where the candidate already ran."""
    from lowbit.compare.candidates import CANDIDATES

    s, calib = cmp.s, cmp.calib
    assert s.calib is not None and calib is not None, "the comparison checks --calib before it runs"
    calibrated = [c for c in cmp.candidates if c.needs_calib]
    pick = next((c for c in calibrated if c.id == rec_id), None) or (calibrated[0] if calibrated else CANDIDATES.get("gptq-w4g64"))
    if cmp.kind not in pick.kinds:
        return CalibCheckSkipped(f"{pick.id} does not apply to a {cmp.kind} model")
    tokenizer = cmp.ref.tokenizer
    eval_corpus = s.eval_text if cmp.task else s.eval
    dist = {g: token_distance(g, eval_corpus, tokenizer) for g in GENERIC}
    generic = max(dist, key=dist.get)
    if generic == s.calib:
        generic = min(dist, key=dist.get)
    mine = next((r for r in rows if r.id == pick.id), None) or cmp.run_candidate(pick)
    other = cmp.run_candidate(pick, CalibSettings(data=generic, n_samples=calib.n_samples, seq_len=calib.seq_len),
                              tag=f"@{generic}")
    user_dist = token_distance(s.calib, eval_corpus, tokenizer)
    key = "kl_mean" if mine.kl_mean is not None else "cosine_mean"
    ours, theirs = getattr(mine, key), getattr(other, key)
    better = (ours < theirs) if key == "kl_mean" else (ours > theirs)
    return CalibCheck(pick.id, s.calib, generic, key, ours, theirs, better, user_dist, dist[generic], other)
