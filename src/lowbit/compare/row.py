"""One line of `lowbit compare`'s table: the float reference or one candidate, with every figure the
run measured for it and, once all rows are in, the decision (Pareto front, bar).

Rows are what ``results.json`` holds and what the resume cache stores, so :meth:`Row.to_dict` writes
the keys a reader of those files knows, grouped as they were measured:

    always          ppl kl_mean kl_p99 top1_agreement cosine_mean cosine_min bits_per_weight size_bytes
                    n_tokens (the evaluator's, on the shared windows), id method family bits
    the reference   prefill_tok_s decode_tok_s (torch here, tokens per second)
    a candidate     label format calib_seconds calibrated speed_ratio_vs_fp32 decode_ratio_vs_fp32
                    speed_note layer_errors slower_than_fp32 seconds
    if planned      axes (the guide's five axes, with this run's numbers)
    --cluster       node (the hardware that built and timed the row: its speed ratios hold there)
    labelled task   accuracy flips (+ flips_to_wrong flips_to_right for a candidate)
    once decided    pareto meets_bar

and :meth:`Row.from_dict` reads them back.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lowbit.metrics.result import EvalResult

REFERENCE = "reference"  # the reference row's id
QUALITY = ("ppl", "kl_mean", "kl_p99", "top1_agreement", "cosine_mean", "cosine_min", "bits_per_weight", "size_bytes",
           "n_tokens", "ci95", "blocks")  # from the evaluator's EvalResult, same names
_REFERENCE_SPEED = ("prefill_tok_s", "decode_tok_s")
_CANDIDATE = ("label", "format", "calib_seconds", "calibrated", "speed_ratio_vs_fp32", "decode_ratio_vs_fp32",
              "speed_note", "layer_errors", "slower_than_fp32", "seconds")


@dataclass
class Row:
    """The reference (``id == "reference"``) or a candidate (``id`` is the candidate's, with ``@DATA``
    appended for the calibration check's rerun on other data; ``method`` is the candidate id)."""

    id: str
    method: str
    family: str
    bits: int
    # quality and size, scored by the evaluator on the windows every row shares
    ppl: float | None = None
    kl_mean: float | None = None
    kl_p99: float | None = None
    top1_agreement: float | None = None
    cosine_mean: float | None = None
    cosine_min: float | None = None
    bits_per_weight: float | None = None
    size_bytes: int | None = None
    n_tokens: int | None = None
    ci95: dict[str, list[float]] | None = None  # 95% intervals of kl_mean, ppl, top1_agreement (metrics/stats.py)
    blocks: dict[str, list[float]] | None = None  # per-block sums on the shared windows: paired differences
    # the reference's speed in torch on this machine (tokens/s): the candidates' ratios divide by it
    prefill_tok_s: float | None = None
    decode_tok_s: float | None = None
    # a candidate: what it is, its cost, its speed as a ratio to float32, where its error sits
    label: str = ""
    format: str = ""  # key of plan/hardware.toml
    calib_seconds: float | None = None  # quantizing, calibration included
    calibrated: bool = False
    speed_ratio_vs_fp32: float | None = None  # prefill
    decode_ratio_vs_fp32: float | None = None
    speed_note: str = ""  # how the speed was measured, or why it was not
    speed_ratio_spread: dict[str, list[float]] | None = None  # {"prefill" | "decode": [min, max]} over the pairs
    size_breakdown: dict[str, Any] | None = None  # bytes: quantized_layers, embeddings, head, other, total; policy
    layer_errors: dict[str, float] = field(default_factory=dict)  # ||y_q - y|| / ||y|| by layer (output error)
    slower_than_fp32: bool = False
    seconds: float | None = None  # wall time to build and score it (kept in the cache: --until-decided's estimates)
    axes: dict[str, str] | None = None  # the guide's five axes, where the candidate has a plan entry
    allocation: list[list[Any]] | None = None  # budget candidates: [tensor, type, bytes, predicted dKL] per tensor
    predicted_kl: float | None = None  # budget candidates: the allocation's summed prediction
    proxy: dict[str, Any] | None = None  # budget candidates: spearman, within_type, pairs (budget/validate.py)
    node: dict[str, Any] | None = None  # --cluster: the node that built and timed it (compare/cluster.py)
    fallbacks: list[str] | None = None  # GGUF: tensors whose width refused the mix's type, and what they took
    # a labelled eval set (multiple choice, classification): accuracy, and answers changed from the reference's
    accuracy: float | None = None
    flips: int | None = None
    flips_to_wrong: int | None = None
    flips_to_right: int | None = None
    # the decision, set once every row is in (None until then)
    pareto: bool | None = None
    meets_bar: bool | None = None  # None also when the row lacks the bar's metric
    paired_vs_recommended: dict[str, Any] | None = None  # this row minus the recommended one, same tokens

    @classmethod
    def scored(cls, res: EvalResult, **fields_: Any) -> Row:
        """A row with the evaluator's quality and size figures from ``res``."""
        return cls(**{k: getattr(res, k) for k in QUALITY}, **fields_)

    @property
    def is_reference(self) -> bool:
        return self.id == REFERENCE

    @property
    def decided(self) -> bool:
        return self.pareto is not None

    def to_dict(self) -> dict[str, Any]:
        names = [*QUALITY, "id", "method", "family", "bits"]
        names += _REFERENCE_SPEED if self.is_reference else _CANDIDATE
        if self.axes:
            names.append("axes")
        if self.allocation is not None:
            names += ["allocation", "predicted_kl", "proxy"]
        if self.fallbacks:
            names.append("fallbacks")
        if self.accuracy is not None:
            names += ["accuracy", "flips"] if self.is_reference else ["accuracy", "flips", "flips_to_wrong",
                                                                      "flips_to_right"]
        if self.decided:
            names += ["pareto", "meets_bar", "paired_vs_recommended"]
        d = {n: getattr(self, n) for n in names}
        if self.speed_ratio_spread is not None:
            d["speed_ratio_spread"] = dict(self.speed_ratio_spread)
        if self.size_breakdown is not None:
            d["size_breakdown"] = dict(self.size_breakdown)
        if self.node is not None:
            d["node"] = dict(self.node)
        for k in ("ci95", "blocks", "paired_vs_recommended", "seconds"):  # only where measured (tokens to score)
            if d.get(k, 0) is None:
                del d[k]
        for k in ("layer_errors", "axes"):
            if k in d:
                d[k] = dict(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Row:
        unknown = d.keys() - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"not a compare row: unknown key(s) {', '.join(sorted(unknown))}")
        return cls(**d)
