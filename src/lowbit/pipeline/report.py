"""What every method's run returns: one typed report."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from lowbit.methods.base import MethodConfig


@dataclass
class CalibrationCost:
    """What calibration took: windows and tokens seen, seconds and peak resident memory of the whole run."""

    data: str | None = None
    samples: int = 0
    tokens: int = 0
    seconds: float = 0.0
    peak_rss_bytes: int = 0
    schedule: str = ""  # "fused" / "two-pass" (sequential methods), "float" (one pass of the float model)
    unreached: list[str] = field(default_factory=list)  # layers no calibration token reached (quantized with RTN)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class QuantizeReport:
    """One method run: which layers were quantized (and which kept), the size of what was quantized,
    the cost, and the method's own findings (``details``: e.g. W8A8's searched alpha)."""

    method: str
    config: MethodConfig
    layers: list[str]
    skipped: list[str]
    seconds: float
    quantized_params: int
    quantized_bytes: int
    calibration: CalibrationCost = field(default_factory=CalibrationCost)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.quantized_bytes / max(self.quantized_params, 1)

    @property
    def spec(self) -> Any:
        """The integer-grid spec (rtn, gptq, awq, hqq), else None."""
        return getattr(self.config, "spec", None)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "config": self.config.to_dict(), "layers": self.layers, "skipped": self.skipped,
                "seconds": self.seconds, "quantized_params": self.quantized_params,
                "quantized_bytes": self.quantized_bytes, "bits_per_weight": self.bits_per_weight,
                "calibration": self.calibration.to_dict(), "details": self.details}
