"""What `lowbit compare` runs: the data, the candidates, the bar, and how much of each to measure."""

from __future__ import annotations

from dataclasses import dataclass


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
