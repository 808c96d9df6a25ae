"""What calibration data a method gets: ``n_samples`` windows of ``seq_len`` tokens of ``data``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CalibSettings:
    """Calibration data for methods that need it: ``n_samples`` windows of ``seq_len`` tokens of ``data``
    (a built-in corpus such as ``pydoc:calib``, a text file, a folder or JSONL), sampled with ``seed``."""

    data: str = "pydoc:calib"
    n_samples: int = 16
    seq_len: int = 512
    seed: int = 0
