"""Token windows: tokenize documents in a seeded order and pack them into N x L token sequences."""

from __future__ import annotations

import logging
import random
from typing import Any

import torch

from lowbit.calib.corpus import Corpus
from lowbit.errors import CalibrationError

log = logging.getLogger(__name__)


def _order(corpus: Corpus, seed: int | None) -> list[int]:
    idx = list(range(len(corpus.docs)))
    if seed is not None:
        random.Random(seed).shuffle(idx)
    return idx


def token_windows(corpus: Corpus, tokenizer: Any, n: int, seq_len: int, seed: int | None = 0) -> torch.Tensor:
    """``n`` windows of ``seq_len`` tokens, shape (n, seq_len), int64.

    Documents are taken in an order shuffled by ``seed`` (``None``: corpus order), tokenized without
    special tokens, joined with the EOS token and cut into consecutive windows. If the corpus is too
    short, fewer windows are returned (with a warning); none at all is a CalibrationError.
    """
    if n < 1 or seq_len < 2:
        raise CalibrationError(f"need at least 1 window of 2 tokens, got n={n}, seq_len={seq_len}")
    if tokenizer is None:
        raise CalibrationError("this model has no tokenizer, so text data cannot be tokenized for it")
    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    need = n * seq_len
    ids: list[int] = []
    for i in _order(corpus, seed):
        text = corpus.docs[i]()
        if not text.strip():
            continue
        ids.extend(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
        if sep is not None:
            ids.append(sep)
        if len(ids) >= need:
            break
    got = len(ids) // seq_len
    if got == 0:
        raise CalibrationError(
            f"data {corpus.name!r} has {len(ids)} tokens, fewer than one window of {seq_len}; "
            "give more text or a shorter --seq-len"
        )
    if got < n:
        log.warning("data %r yields only %d windows of %d tokens (asked for %d)", corpus.name, got, seq_len, n)
    k = min(n, got)
    return torch.tensor(ids[: k * seq_len], dtype=torch.long).view(k, seq_len)


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts a BOS token first when it encodes text (llama.cpp's add_bos_token)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True, verbose=False)["input_ids"]
    return bool(ids) and ids[0] == bos


def text_chunks(corpus: Corpus, tokenizer: Any, n: int, n_ctx: int) -> tuple[torch.Tensor, str]:
    """llama-perplexity's chunks: the corpus in its own order, documents joined by a blank line, tokenized
    as one text (BOS first where the tokenizer adds one), cut into ``n`` consecutive chunks of ``n_ctx``
    tokens, the first token of each replaced by BOS. Returns (chunks (n, n_ctx), the text tokenized), so
    the same text can be given to ``llama-perplexity -f``."""
    if n < 1 or n_ctx < 4:
        raise CalibrationError(f"need at least 1 chunk of 4 tokens, got n={n}, n_ctx={n_ctx}")
    bos = tokenizer.bos_token_id if adds_bos(tokenizer) else None
    need, chars, text, k = n * n_ctx, 8 * n * n_ctx, "", 0
    while True:  # tokenize a prefix of the text large enough for n chunks (the whole text at most)
        while k < len(corpus.docs) and len(text) < chars:  # documents read only as far as needed
            text += ("\n\n" if text else "") + corpus.docs[k]()
            k += 1
        ids = ([bos] if bos is not None else []) + tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        if len(ids) >= need or k == len(corpus.docs):
            break
        chars *= 2
    got = min(n, len(ids) // n_ctx)
    if got == 0:
        raise CalibrationError(f"data {corpus.name!r} has {len(ids)} tokens, fewer than one chunk of {n_ctx}; "
                               "give more text or a shorter --seq-len")
    if got < n:
        log.warning("data %r yields only %d chunks of %d tokens (asked for %d)", corpus.name, got, n_ctx, n)
    chunks = torch.tensor(ids[: got * n_ctx], dtype=torch.long).view(got, n_ctx)
    if bos is not None:
        chunks[:, 0] = bos
    return chunks, text


def sample_texts(corpus: Corpus, n: int, seed: int | None = 0, max_chars: int = 1000) -> list[str]:
    """``n`` text passages (paragraphs, cut to ``max_chars``) for encoder evaluation."""
    out: list[str] = []
    for i in _order(corpus, seed):
        for para in corpus.docs[i]().split("\n\n"):
            para = " ".join(para.split())
            if len(para) >= 40:
                out.append(para[:max_chars])
            if len(out) >= n:
                return out
    if not out:
        raise CalibrationError(f"data {corpus.name!r} holds no passages of text to embed")
    return out
