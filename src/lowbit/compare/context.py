"""What a candidate's build gets besides the reference model."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from lowbit.calib.settings import CalibSettings
from lowbit.loaders.handle import ModelHandle

PROXY_WINDOWS = 2  # calibration windows each proxy-check pair is measured on (a forward pass per window and pair)


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
    proxy_pairs: int = 0  # CompareSettings.budget_check: (tensor, type) pairs measured alone to check the proxy
    _proxy: Any = field(default=None, repr=False)
    proxy_seconds: float = 0.0
    _calib_windows: Any = field(default=None, repr=False)

    @property
    def has_imatrix(self) -> bool:
        return self._imatrix is not None

    @property
    def has_sensitivity(self) -> bool:
        return self._sensitivity is not None

    def calib_windows(self) -> Any:
        """The calibration windows (tokenized once: the imatrix, the sensitivity and the proxy check share them)."""
        if self._calib_windows is None:
            from lowbit.calib import load_corpus, token_windows

            assert self.calib is not None, "the imatrix and the sensitivity need calibration settings"
            self._calib_windows = token_windows(load_corpus(self.calib.data), self.ref.tokenizer, self.calib.n_samples,
                                                self.calib.seq_len, self.calib.seed)
        return self._calib_windows

    def imatrix(self) -> dict[str, Any]:
        if self._imatrix is None:
            from lowbit.calib.imatrix import compute_imatrix

            t0 = time.perf_counter()
            ids = self.calib_windows()
            self._imatrix = compute_imatrix(self.ref.model, ids, dataset=self.calib.data).weights()
            self.imatrix_seconds = time.perf_counter() - t0
        return self._imatrix

    def sensitivity(self, pins: dict[str, str]) -> Any:
        """Every tensor's GGUF types with bytes and predicted dKL (budget/allocate.py), computed once on the
        calibration data for every budget candidate; quantized with the importance matrix, as the fixed
        mixes are."""
        if self._sensitivity is None:
            from lowbit.budget.allocate import sensitivity

            imatrix = self.imatrix()
            t0 = time.perf_counter()
            self._sensitivity = sensitivity(self.ref, self.calib_windows(), imatrix, pins=pins)
            self.sensitivity_seconds = time.perf_counter() - t0
        return self._sensitivity

    def proxy_check(self, pins: dict[str, str]) -> Any:
        """The sensitivity's predictions against the ground truth (budget/validate.py), once for every budget
        candidate: ``proxy_pairs`` (tensor, type) pairs, each tensor quantized alone in a copy of the model,
        KL measured on the first PROXY_WINDOWS calibration windows. None when ``proxy_pairs`` is 0."""
        if self._proxy is None and self.proxy_pairs > 0:
            import copy

            from lowbit.budget.validate import Perturber, proxy_check
            from lowbit.metrics.lm import ReferenceLM

            sens = self.sensitivity(pins)
            t0 = time.perf_counter()
            ids = self.calib_windows()[:PROXY_WINDOWS]
            work = copy.deepcopy(self.ref)  # the perturbed copy; the reference's log-probs come from the original
            self._proxy = proxy_check(Perturber(work, ReferenceLM(self.ref.model, ids), ids, self.imatrix()), sens,
                                      n=self.proxy_pairs)
            self.proxy_seconds = time.perf_counter() - t0
        return self._proxy
