"""Metrics on the user's own data: perplexity, KL to the reference, top-1 agreement, size, speed,
and embedding cosine for encoders."""

from lowbit.evaluate.result import EvalResult, Protocol
from lowbit.evaluate.run import evaluate

__all__ = ["EvalResult", "Protocol", "evaluate"]
