"""What `lowbit compare` runs: the data, the candidates, the bar, and how much of each to measure."""

from __future__ import annotations

import math
from dataclasses import dataclass

from lowbit.errors import InputError


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

    def check(self) -> None:
        """One clear error for a setting no run could use, before any model is loaded."""
        b = self.budget_bpw
        if b is not None and not (math.isfinite(b) and 0 < b <= 32):
            raise InputError(f"--budget-bpw {b:g}: expected bits per weight above 0 and at most 32")
        for name, v, low in (("--windows", self.windows, 1), ("--seq-len", self.seq_len, 8),
                             ("--calib-samples", self.calib_samples, 1), ("--qat-steps", self.qat_steps, 0)):
            if v < low:
                raise InputError(f"{name} {v}: expected at least {low}")
