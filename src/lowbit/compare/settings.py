"""What `lowbit compare` runs: the data, the candidates, the bar, and how much of each to measure."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from lowbit.errors import InputError

EMBEDDINGS = {"stored": "every candidate keeps the token embeddings and the output head as the model stores them "
                        "(GGUF files too: token_embd and output in F32), so sizes compare the quantized layers alone",
              "quantized": "every candidate quantizes the token embeddings and the output head by one rule, 8 bits per "
                           "weight: int8 per row (RTN, symmetric) for the torch families, Q8_0 in GGUF files; a head "
                           "tied to the embeddings stays tied (one copy)",
              "gguf-rule": "GGUF candidates quantize the token embeddings and head by llama.cpp's mix rule; the other "
                           "families keep them as stored (GGUF files are smaller for that reason alone)"}


@dataclass
class CompareSettings:
    calib: str | None = "pydoc:calib"
    eval: str = "pydoc:eval"
    eval_text: str = "pydoc:eval"  # KL/PPL corpus when --eval is a labelled task
    methods: list[str] | None = None
    bar: str | None = None
    budget_bpw: float | None = None
    budgets: list[str] = field(default_factory=list)  # --budget: GGUF candidates mixed to these sizes (budget/)
    budget_check: int = 16  # --budget-check: (tensor, type) pairs measured alone against the predictions; 0: none
    windows: int = 4
    seed: int = 0  # which eval windows are drawn
    seq_len: int = 512
    calib_samples: int = 16
    speed: bool = True
    calib_check: bool = False
    task_limit: int | None = 200
    target: str = "cpu"  # where it will run, for the hardware-support axis
    train_data: str | None = None  # QAT candidates: training text ...
    qat_steps: int = 0  # ... and a budget of optimizer steps
    until_decided: float | None = None  # seconds: add windows until the recommendation no longer depends on noise
    protocol: str = "windows"  # how KL/PPL are scored: "windows", or "llama-perplexity" (metrics/result.py)
    cluster: str | None = None  # "ray" or "ray://HOST:PORT": candidates as Ray tasks (compare/cluster.py)
    task_cpus: int = 1  # --cluster: CPUs each task requests (torch's threads in it)
    plugins: list[str] = field(default_factory=list)  # modules that register more candidates (imported on every node)
    embeddings: str = "stored"  # "stored": every candidate keeps embeddings and head as the model stores them;
    # "quantized": every candidate quantizes them to 8 bits (int8 rows / Q8_0); "gguf-rule": GGUF candidates
    # quantize them by llama.cpp's mix rule, the others keep them (unequal footing)

    def check(self) -> None:
        """One clear error for a setting no run could use, before any model is loaded."""
        b = self.budget_bpw
        if b is not None and not (math.isfinite(b) and 0 < b <= 32):
            raise InputError(f"--budget-bpw {b:g}: expected bits per weight above 0 and at most 32")
        from lowbit.budget.solve import parse_budget
        from lowbit.metrics.result import check_protocol

        for text in self.budgets:
            parse_budget(text)
        if self.budget_check < 0:
            raise InputError(f"--budget-check {self.budget_check}: expected a number of pairs, 0 or more")

        u = self.until_decided
        if u is not None and not (math.isfinite(u) and u > 0):
            raise InputError(f"--until-decided {u:g}: expected a time budget in seconds above 0")
        check_protocol(self.protocol)
        if self.cluster is not None:
            from lowbit.compare.cluster import parse_address

            parse_address(self.cluster)
            if u is not None or self.calib_check:
                raise InputError("--until-decided and --calib-check run on this machine only, not with --cluster")
        if self.embeddings not in EMBEDDINGS:
            raise InputError(f"--embeddings {self.embeddings!r}: expected one of {', '.join(EMBEDDINGS)}")
        for name, v, low in (("--windows", self.windows, 1), ("--seq-len", self.seq_len, 8),
                             ("--calib-samples", self.calib_samples, 1), ("--qat-steps", self.qat_steps, 0),
                             ("--task-cpus", self.task_cpus, 1)):
            if v < low:
                raise InputError(f"{name} {v}: expected at least {low}")
