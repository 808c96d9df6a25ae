"""Evaluate a model (optionally against a reference) on a data set; one EvalResult per model.

An :class:`Evaluator` holds the data and the reference's outputs, so several candidates are compared
on identical windows with one reference pass.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from lowbit.calib import load_corpus, sample_texts, token_windows
from lowbit.calib.sample import text_chunks
from lowbit.errors import InputError
from lowbit.loaders.handle import CAUSAL_LM, ENCODER, ModelHandle
from lowbit.metrics import encoder as enc_metrics
from lowbit.metrics import speed, stats
from lowbit.metrics.lm import ReferenceLM, score_lm
from lowbit.metrics.refstore import LogprobStore, store_dir
from lowbit.metrics.result import EvalResult, Protocol, check_protocol
from lowbit.metrics.size import model_bytes, quantized_layer_bits
from lowbit.metrics.streamed import cached_logprobs, streamed_logprobs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalSettings:
    """Defaults sized to about a minute for smollm2 on 2 CPU cores; raise ``windows`` for tighter numbers."""

    data: str = "pydoc:eval"
    windows: int = 4
    seq_len: int = 512
    seed: int = 0
    speed: bool = True
    texts: int = 64
    decode_tokens: int = 16
    protocol: str = "windows"  # or "llama-perplexity" (metrics/result.py PROTOCOLS)


class Evaluator:
    """Scores models on one data set against one reference. ``ref_key`` (the reference's content key)
    keeps the reference's log-probs on disk (metrics/refstore.py) for later candidates and reruns."""

    def __init__(self, reference: ModelHandle | None, settings: EvalSettings = EvalSettings(),
                 tokenizer: object = None, ref_key: str | None = None) -> None:
        check_protocol(settings.protocol)
        self.reference, self.settings, self.ref_key = reference, settings, ref_key
        self.corpus = load_corpus(settings.data)
        self.tokenizer = tokenizer or (reference.tokenizer if reference else None)
        self._windows: torch.Tensor | None = None
        self._ref_lm: ReferenceLM | None = None
        self._texts: list[str] | None = None
        self._ref_emb: torch.Tensor | None = None
        self.text: str | None = None  # llama-perplexity: the text the chunks were cut from

    # --- data --------------------------------------------------------------------------------
    def windows(self, tokenizer: object) -> torch.Tensor:
        if self._windows is None:
            s, tok = self.settings, self.tokenizer or tokenizer
            if s.protocol == "llama-perplexity":
                self._windows, self.text = text_chunks(self.corpus, tok, s.windows, s.seq_len)
            else:
                self._windows = token_windows(self.corpus, tok, s.windows, s.seq_len, s.seed)
        return self._windows

    @property
    def first(self) -> int:
        """The first position of a window whose prediction is scored (llama-perplexity: the second half)."""
        return self.settings.seq_len // 2 if self.settings.protocol == "llama-perplexity" else 0

    def texts(self) -> list[str]:
        if self._texts is None:
            self._texts = sample_texts(self.corpus, self.settings.texts, self.settings.seed)
        return self._texts

    # --- run ---------------------------------------------------------------------------------
    def run(self, handle: ModelHandle, label: str | None = None) -> EvalResult:
        if self.reference is not None and self.reference.kind != handle.kind:
            raise InputError(f"reference is a {self.reference.kind} model but {handle.name} is a {handle.kind}")
        bpw, nq = quantized_layer_bits(handle.model)
        res = EvalResult(model=label or handle.name, kind=handle.kind, protocol=None, bits_per_weight=bpw,
                         size_bytes=model_bytes(handle.model), quantized_params=nq,
                         reference=self.reference.name if self.reference else None)
        if handle.artifact is not None:  # a file run by another runtime (llama.cpp): its own sizes
            res.size_bytes, res.bits_per_weight = handle.artifact.file_bytes, handle.artifact.bits_per_weight
        if handle.kind == CAUSAL_LM:
            self._run_lm(handle, res)
        elif handle.kind == ENCODER:
            self._run_encoder(handle, res)
        else:
            raise InputError(f"{handle.name}: text evaluation needs a causal LM or an encoder, not a bare module")
        return res

    def _run_lm(self, handle: ModelHandle, res: EvalResult) -> None:
        s = self.settings
        win = self.windows(handle.tokenizer)
        vocab = handle.model.get_output_embeddings().out_features if hasattr(handle.model, "get_output_embeddings") else None
        if vocab is not None and int(win.max()) >= vocab:
            raise InputError(f"{handle.name}: the data's token ids exceed its vocabulary ({vocab}); wrong tokenizer?")
        if self.reference is not None and self._ref_lm is None:
            lazy = self.reference.lazy  # too big for memory: its log-probs block by block, kept on disk
            stored = cached_logprobs(lazy, win, self.reference.name) if lazy is not None else None
            store = LogprobStore(store_dir(self.ref_key)) if self.ref_key and lazy is None else None
            self._ref_lm = ReferenceLM(self.reference.model, win, stored, store, self.first)
        streamed = None
        if handle.lazy is not None and handle is self.reference and self._ref_lm.stored is not None:
            streamed = ((i, self._ref_lm.logprobs(i)) for i in range(len(win)))  # the reference scored once
        elif handle.lazy is not None:
            streamed = streamed_logprobs(handle.lazy, win, res.model)
        sc = score_lm(handle.model, win, self._ref_lm, label=res.model, logprobs=streamed, first=self.first,
                      llama_kl=s.protocol == "llama-perplexity")
        res.protocol = self.protocol(win)
        res.n_tokens, res.ppl = sc.n_tokens, sc.ppl
        if sc.nll_tok is not None:
            res.blocks = stats.block_sums(sc.nll_tok, sc.kl, sc.agree_tok, win.shape[1] - 1 - self.first)
            res.ci95 = stats.ci95(res.blocks)
        if sc.kl is not None:
            res.kl_mean = float(sc.kl.mean())
            res.kl_p99 = float(torch.quantile(sc.kl.double(), 0.99))
            res.top1_agreement = sc.top1_agree / sc.n_tokens
            res.ref_ppl = self._ref_lm.ppl if self._ref_lm else None
        if s.speed and handle.lazy is not None:
            log.warning("%s is evaluated block by block (larger than memory): no speed measured", handle.name)
        elif s.speed:
            m = handle.model  # a foreign runtime measures itself; torch models go through metrics/speed.py
            prefill = getattr(m, "prefill_tok_s", None) or (lambda t: speed.prefill_tok_s(m, t))
            decode = getattr(m, "decode_tok_s", None) or (lambda t, n: speed.decode_tok_s(m, t, n))
            res.prefill_tok_s = prefill(win[0, : min(256, win.shape[1])])
            res.decode_tok_s = decode(win[0, : min(32, win.shape[1])], s.decode_tokens)

    def protocol(self, win: torch.Tensor) -> Protocol:
        s = self.settings
        if s.protocol == "llama-perplexity":
            return Protocol(s.data, len(win), win.shape[1], None, name=s.protocol,
                            counted=f"tokens {self.first + 2}..{win.shape[1]} of each chunk (its second half)")
        return Protocol(s.data, len(win), win.shape[1], s.seed)

    def check_kind(self, kind: str) -> None:
        """A protocol other than the default scores next tokens: an encoder cannot take it."""
        if kind == ENCODER and self.settings.protocol != "windows":
            raise InputError(f"--protocol {self.settings.protocol} scores a causal LM's next tokens; an encoder is "
                             "scored by the cosine of its embeddings (the default protocol)")

    def _run_encoder(self, handle: ModelHandle, res: EvalResult) -> None:
        self.check_kind(handle.kind)
        tok = self.tokenizer or handle.tokenizer
        texts = self.texts()
        emb = enc_metrics.embed(handle.model, tok, texts)
        res.protocol = Protocol(self.settings.data, len(texts), 128, self.settings.seed,
                                counted="mean-pooled embeddings of text passages, max 128 tokens")
        res.n_tokens = int(sum(len(tok(t, truncation=True, max_length=128)["input_ids"]) for t in texts))
        if self.reference is not None:
            if self._ref_emb is None:
                self._ref_emb = enc_metrics.embed(self.reference.model, tok, texts)
            cos = enc_metrics.cosine_to_reference(emb, self._ref_emb)
            res.cosine_mean, res.cosine_min = float(cos.mean()), float(cos.min())
            res.blocks = stats.cosine_blocks(cos)
            res.ci95 = stats.ci95(res.blocks)
        if self.settings.speed:
            enc = tok(texts[:16], padding=True, truncation=True, max_length=128, return_tensors="pt")
            res.prefill_tok_s = speed.encoder_tok_s(handle.model, enc)


def evaluate(handle: ModelHandle, reference: ModelHandle | None = None, settings: EvalSettings = EvalSettings()) -> EvalResult:
    """Evaluate ``handle`` on ``settings.data`` against ``reference`` (PPL alone without one)."""
    return Evaluator(reference, settings, tokenizer=(reference or handle).tokenizer).run(handle)
