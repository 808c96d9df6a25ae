"""Typed evaluation results and the pinned protocol that produced them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

PROTOCOLS = {
    "windows": "lowbit's windows: documents in an order shuffled by the seed, joined by EOS, cut into "
               "non-overlapping windows scored independently; tokens 2..seq_len of each window are predicted",
    "llama-perplexity": "llama-perplexity's chunks: the text in its own order, tokenized as one (BOS first where the "
                        "model adds one), consecutive chunks of seq_len tokens, each chunk's first token set to BOS "
                        "where the model adds one; the second half of each chunk is scored (seq_len/2 - 1 tokens), "
                        "as llama.cpp's perplexity and KL-divergence tables are; KL from the reference's log-probs "
                        "as llama-perplexity stores them (16-bit steps, terms below log p = -16 dropped)",
}


def check_protocol(name: str) -> None:
    if name not in PROTOCOLS:
        from lowbit.errors import InputError

        raise InputError(f"--protocol {name!r}: expected one of {', '.join(PROTOCOLS)}")


@dataclass(frozen=True)
class Protocol:
    """How the text metrics were computed; written into every result.

    ``windows`` (the default): the data is tokenized with the model's tokenizer (no special tokens,
    documents joined by EOS), cut into ``windows`` non-overlapping windows of ``seq_len`` tokens
    (stride = seq_len), each scored independently with no carried context; the first token of each
    window is context only, so ``windows * (seq_len - 1)`` tokens are predicted. ``llama-perplexity``:
    see :data:`PROTOCOLS`. PPL = exp(mean token NLL), natural log. KL is KL(reference || quantized) of
    the next-token distributions at the same positions.
    """

    data: str
    windows: int
    seq_len: int
    seed: int | None
    stride: int = 0
    counted: str = "tokens 2..seq_len of each window"
    name: str = "windows"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stride"] = self.stride or self.seq_len
        d["description"] = PROTOCOLS.get(self.name)
        return d


@dataclass
class EvalResult:
    model: str
    kind: str
    protocol: Protocol | None
    n_tokens: int = 0
    ppl: float | None = None
    ref_ppl: float | None = None
    kl_mean: float | None = None
    kl_p99: float | None = None
    top1_agreement: float | None = None
    cosine_mean: float | None = None
    cosine_min: float | None = None
    bits_per_weight: float | None = None
    size_bytes: int | None = None
    quantized_params: int | None = None
    prefill_tok_s: float | None = None
    decode_tok_s: float | None = None
    reference: str | None = None
    ci95: dict[str, list[float]] | None = None  # {"kl_mean" | "ppl" | "top1_agreement": [lo, hi]} (metrics/stats.py)
    blocks: dict[str, list[float]] | None = None  # per-block sums the intervals and paired differences come from
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["protocol"] = self.protocol.to_dict() if self.protocol else None
        return d
