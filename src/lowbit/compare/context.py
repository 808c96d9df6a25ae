"""What a candidate's build gets besides the reference model."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from lowbit.calib.settings import CalibSettings
from lowbit.loaders.handle import ModelHandle


@dataclass
class Context:
    """The calibration settings, the QAT training data and budget, and the importance matrix computed
    once from the calibration data for every GGUF candidate that uses it."""

    ref: ModelHandle
    calib: CalibSettings | None
    train_data: str | None = None
    qat_steps: int = 0
    embeddings: str = "stored"  # CompareSettings.embeddings
    _imatrix: dict[str, Any] | None = field(default=None, repr=False)
    imatrix_seconds: float = 0.0
    _sensitivity: Any = field(default=None, repr=False)
    sensitivity_seconds: float = 0.0

    @property
    def has_imatrix(self) -> bool:
        return self._imatrix is not None

    @property
    def has_sensitivity(self) -> bool:
        return self._sensitivity is not None

    def imatrix(self) -> dict[str, Any]:
        if self._imatrix is None:
            from lowbit.calib import load_corpus, token_windows
            from lowbit.calib.imatrix import compute_imatrix

            assert self.calib is not None, "imatrix() needs calibration settings"
            t0 = time.perf_counter()
            ids = token_windows(load_corpus(self.calib.data), self.ref.tokenizer, self.calib.n_samples,
                                self.calib.seq_len, self.calib.seed)
            self._imatrix = compute_imatrix(self.ref.model, ids, dataset=self.calib.data).weights()
            self.imatrix_seconds = time.perf_counter() - t0
        return self._imatrix

    def sensitivity(self, pins: dict[str, str]) -> Any:
        """Every tensor's GGUF types with bytes and predicted dKL (budget/allocate.py), computed once on the
        calibration data for every budget candidate; quantized with the importance matrix, as the fixed
        mixes are."""
        if self._sensitivity is None:
            from lowbit.budget.allocate import sensitivity
            from lowbit.calib import load_corpus, token_windows

            assert self.calib is not None, "sensitivity() needs calibration settings"
            imatrix = self.imatrix()
            t0 = time.perf_counter()
            ids = token_windows(load_corpus(self.calib.data), self.ref.tokenizer, self.calib.n_samples,
                                self.calib.seq_len, self.calib.seed)
            self._sensitivity = sensitivity(self.ref, ids, imatrix, pins=pins)
            self.sensitivity_seconds = time.perf_counter() - t0
        return self._sensitivity
