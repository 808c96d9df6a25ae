"""Causal-LM metrics over token windows: perplexity, KL to the reference, top-1 agreement.

The reference's log-probabilities are computed once per window and kept (float32, about
seq_len * vocab * 4 bytes per window: 100 MB for smollm2 at 512 tokens), so comparing several
candidates costs one reference pass in all.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.metrics.refstore import LogprobStore
from lowbit.progress import track

MAX_CACHE_BYTES = 3 << 30


@dataclass
class LMScores:
    nll_sum: float
    n_tokens: int
    kl: torch.Tensor | None  # (n_tokens,) per-token KL, or None without a reference
    top1_agree: int
    nll_tok: torch.Tensor | None = None  # (n_tokens,) per-token NLL
    agree_tok: torch.Tensor | None = None  # (n_tokens,) top-1 agreement with the reference, 0 / 1

    @property
    def ppl(self) -> float:
        return math.exp(self.nll_sum / max(self.n_tokens, 1))


@torch.inference_mode()
def window_logprobs(model: nn.Module, window: torch.Tensor) -> torch.Tensor:
    """log-softmax of the next-token logits at positions 0..L-2 for one window, (L-1, vocab) float32."""
    from lowbit.modules.kernel_mode import kernel_mode

    with kernel_mode(model, "dequant"):  # quality numbers always use the exact quantized weights
        logits = model(input_ids=window.unsqueeze(0)).logits[0, :-1].float()
    return F.log_softmax(logits, dim=-1)


def model_logprobs(model: nn.Module, windows: torch.Tensor, label: str) -> Iterator[tuple[int, torch.Tensor]]:
    """(window index, log-probs) of a model in memory, one window at a time."""
    for i in track(range(len(windows)), f"{label}: {len(windows)} x {windows.shape[1]} tokens"):
        yield i, window_logprobs(model, windows[i])


class ReferenceLM:
    """A reference model's log-probs over fixed windows, computed lazily and cached in memory. ``stored(i)``
    reads them instead of running ``model`` (a reference streamed block by block keeps them on disk);
    ``store`` (metrics/refstore.py) keeps every window's on disk for other candidates and reruns."""

    def __init__(self, model: nn.Module, windows: torch.Tensor,
                 stored: Callable[[int], torch.Tensor] | None = None, store: LogprobStore | None = None,
                 first: int = 0) -> None:
        self.model, self.windows, self.stored, self.store, self.first = model, windows, stored, store, first
        self.computed = 0  # windows the reference was run on here (not read from a store)
        self._cache: dict[int, torch.Tensor] = {}
        self.nll_sum = 0.0
        self._done: set[int] = set()

    def logprobs(self, i: int) -> torch.Tensor:
        if i in self._cache:
            return self._cache[i]
        lp = self.stored(i) if self.stored is not None else None
        if lp is None and self.store is not None:
            lp = self.store.get(self.windows[i])
        if lp is None:
            lp = window_logprobs(self.model, self.windows[i])
            self.computed += 1
            if self.store is not None:
                self.store.put(self.windows[i], lp)
        if i not in self._done:
            f = self.first
            self.nll_sum += float(-lp[f:].gather(1, self.windows[i, f + 1 :, None]).sum())
            self._done.add(i)
        per_window = lp.numel() * 4
        if per_window * len(self.windows) <= MAX_CACHE_BYTES:
            self._cache[i] = lp
        return lp

    @property
    def ppl(self) -> float:
        n = len(self._done) * (self.windows.shape[1] - 1 - self.first)
        return math.exp(self.nll_sum / max(n, 1))


def llama_perplexity_kl(rlp: torch.Tensor, lp: torch.Tensor) -> torch.Tensor:
    """KL(reference || quantized) per position as ``llama-perplexity --kl-divergence`` computes it: the
    reference log-probs as its base file stores them (16-bit steps over the 16 nats below the top token,
    lower ones floored there), and only the terms whose stored log-prob is above -16. Close to the exact
    KL (smollm2 Q4_K_M in llama.cpp, 4 x 512 pydoc:eval: 0.05190 vs 0.05202), not equal."""
    top = rlp.max(-1, keepdim=True).values
    lo = torch.maximum(rlp.min(-1, keepdim=True).values, top - 16)
    scale = (top - lo) / 65535
    steps = torch.where((rlp > lo) & (scale > 0), torch.round((rlp - lo) / scale.clamp_min(1e-30)), 0)
    base = scale * steps + lo
    return torch.where(base > -16, base.exp() * (base - lp), 0).sum(-1)


@torch.inference_mode()
def score_lm(model: nn.Module, windows: torch.Tensor, ref: ReferenceLM | None, label: str = "eval",
             logprobs: Iterator[tuple[int, torch.Tensor]] | None = None, first: int = 0,
             llama_kl: bool = False) -> LMScores:
    """PPL, KL to ``ref`` and top-1 agreement over ``windows``, scoring the predictions made at positions
    ``first``.. of each window (0: every token after the first; llama-perplexity: the second half);
    ``logprobs`` (window index, log-probs) replaces running ``model`` window by window (metrics/streamed.py's
    block-by-block pass). ``llama_kl``: KL as llama-perplexity computes it (:func:`llama_perplexity_kl`)."""
    nll, n, agree = 0.0, 0, 0
    kls: list[torch.Tensor] = []
    nlls: list[torch.Tensor] = []
    agrees: list[torch.Tensor] = []
    for i, lp in logprobs if logprobs is not None else model_logprobs(model, windows, label):
        lp, targets = lp[first:], windows[i, first + 1 :]
        tok = -lp.gather(1, targets[:, None])[:, 0]
        nll += float(tok.sum())
        nlls.append(tok)
        n += targets.numel()
        if ref is not None:
            rlp = ref.logprobs(i)[first:]
            kls.append(llama_perplexity_kl(rlp, lp) if llama_kl else (rlp.exp() * (rlp - lp)).sum(dim=-1).clamp_min(0))
            agrees.append(rlp.argmax(-1) == lp.argmax(-1))
            agree += int(agrees[-1].sum())
    return LMScores(nll, n, torch.cat(kls) if kls else None, agree, torch.cat(nlls) if nlls else None,
                    torch.cat(agrees) if agrees else None)
