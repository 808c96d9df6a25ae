"""Metrics on the user's own data: perplexity, KL to the reference, top-1 agreement, size, speed,
and embedding cosine for encoders. The verb is ``lowbit.evaluate``."""

from lowbit.metrics.result import EvalResult, Protocol
from lowbit.metrics.run import evaluate

__all__ = ["EvalResult", "Protocol", "evaluate"]
