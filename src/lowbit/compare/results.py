"""What a `lowbit compare` run found: every row, the decision and the context to read it in. The
report is drawn from it, and :meth:`Results.to_dict` is ``results.json``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from lowbit.compare.calib_check import CalibCheck, CalibCheckSkipped
from lowbit.compare.decide import Bar, Recommendation
from lowbit.compare.row import Row
from lowbit.compare.settings import CompareSettings
from lowbit.compare.until import Rounds
from lowbit.metrics.run import EvalSettings


@dataclass(frozen=True)
class Machine:
    platform: str
    threads: int  # torch's
    python: str


@dataclass(frozen=True)
class TaskInfo:
    """The labelled eval set, when --eval is one: multiple choice (causal LMs) or classification."""

    kind: str
    name: str
    items: int


@dataclass
class Results:
    model: str
    kind: str
    settings: CompareSettings
    bar: Bar
    protocol: EvalSettings  # how every row was scored
    machine: Machine
    reference: Row
    candidates: list[Row]
    recommendation: Recommendation
    warnings: list[str] = field(default_factory=list)
    task: TaskInfo | None = None
    axes: dict[str, str] | None = None  # the recommended candidate on the guide's five axes
    calib_check: CalibCheck | CalibCheckSkipped | None = None  # with --calib-check
    until_decided: Rounds | None = None  # with --until-decided
    failed: dict[str, str] = field(default_factory=dict)  # --cluster: candidates whose task raised, with the error

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "model": self.model, "kind": self.kind, "settings": asdict(self.settings), "bar": str(self.bar),
            "protocol": asdict(self.protocol), "machine": asdict(self.machine),
            "reference": self.reference.to_dict(), "candidates": [r.to_dict() for r in self.candidates],
            "recommendation": self.recommendation.to_dict(), "warnings": list(self.warnings),
            "task": asdict(self.task) if self.task else None, "axes": dict(self.axes) if self.axes else self.axes,
        }
        if self.until_decided is not None:
            d["until_decided"] = self.until_decided.to_dict()
        if self.calib_check is not None:
            d["calib_check"] = self.calib_check.to_dict()
        if self.failed:
            d["failed"] = dict(self.failed)
        return d
