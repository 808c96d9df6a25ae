"""The quantization pipeline every method runs through (see run.py)."""

from lowbit.pipeline.report import CalibrationCost, QuantizeReport
from lowbit.pipeline.run import quantize

__all__ = ["CalibrationCost", "QuantizeReport", "quantize"]
