"""Speed in `lowbit compare`: each candidate as a ratio to full precision on this machine, measured
on the eval windows, interleaved with the full-precision model pair by pair (the median of the pairs'
ratios, their range kept; a wide range is marked as measured under load). A torch candidate is timed in torch against the float32 reference; a GGUF file in
llama.cpp against the F32 export of the same model in llama.cpp, so each ratio compares like with
like. The ratios are recorded where `lowbit plan` reads measured speeds."""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from lowbit.compare.row import Row
from lowbit.loaders.handle import CAUSAL_LM, ModelHandle
from lowbit.metrics import speed as speedmod
from lowbit.metrics.run import Evaluator

log = logging.getLogger(__name__)
TORCH_NOTE = "torch on this machine, ratio to the float32 model"
LLAMACPP_NOTE = "llama.cpp, ratio to the F32 GGUF in llama.cpp"
NO_LLAMACPP = "speed not measured: llama.cpp is not installed (`make reference`)"
NO_BITSANDBYTES = ("speed not measured in its runtime: bitsandbytes is not installed (`pip install bitsandbytes`); "
                   "lowbit's own layer, which decodes the codes in torch, is not the speed a deployment gets")
BITSANDBYTES_NOTE = "bitsandbytes {version}'s CPU kernels ({layers} layers), ratio to the float32 model in torch"


class SpeedMeter:
    """Prefill and decode speed (encoders: one padded batch) of the reference, then each candidate's
    as a ratio to it. With ``enabled`` False nothing is timed and every figure is None."""

    def __init__(self, ref: ModelHandle, evaluator: Evaluator, work_dir: Path, enabled: bool) -> None:
        self.ref, self.evaluator, self.work_dir, self.enabled = ref, evaluator, work_dir, enabled
        self.ref_tok_s: tuple[float | None, float | None] = (None, None)
        self._f32_llamacpp: tuple[float, float] | None = None

    def tok_s(self, model: nn.Module, repeats: int = 2) -> tuple[float | None, float | None]:
        """Tokens per second in torch: (prefill, decode) for a causal LM, (batch, None) for an encoder."""
        if not self.enabled:
            return None, None
        win = self.evaluator.windows(self.ref.tokenizer)
        if self.ref.kind == CAUSAL_LM:
            return (speedmod.prefill_tok_s(model, win[0, : min(256, win.shape[1])], repeats),
                    speedmod.decode_tok_s(model, win[0, : min(32, win.shape[1])], 16))
        texts = self.evaluator.texts()[:16]
        enc = self.ref.tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        return speedmod.encoder_tok_s(model, enc, repeats), None

    def reference(self) -> tuple[float | None, float | None]:
        """The reference's tokens per second, kept as the base of the torch ratios."""
        self.ref_tok_s = self.tok_s(self.ref.model)
        return self.ref_tok_s

    def torch_ratio(self, model: nn.Module) -> Ratios:
        """A torch model's speed against the reference's, timed interleaved: reference, candidate,
        candidate, reference, ... (``PAIRS`` pairs), so a change of load hits both alike; the ratio is
        the median of the pairs' ratios and their range is kept."""
        if not self.enabled:
            return Ratios()
        return Ratios.of(interleaved(lambda: self.tok_s(self.ref.model, repeats=1),
                                     lambda: self.tok_s(model, repeats=1)), TORCH_NOTE)

    def bitsandbytes_ratio(self, model: nn.Module) -> Ratios:
        """NF4 / FP4 / LLM.int8 deploy in bitsandbytes' kernels: timed there (metrics/bnb_runtime.py), against
        the float32 model in torch; without bitsandbytes no figure, since lowbit's own layer, which decodes
        the codes in torch, would flag a fast format as slow."""
        from lowbit.metrics import bnb_runtime

        if not self.enabled:
            return Ratios()
        if not bnb_runtime.available():
            return Ratios(note=NO_BITSANDBYTES)
        bnb_model, layers = bnb_runtime.to_bitsandbytes(model)
        r = self.torch_ratio(bnb_model)
        r.note = r.note.replace(TORCH_NOTE, BITSANDBYTES_NOTE.format(version=bnb_runtime.version(), layers=layers))
        return r

    def gguf_ratio(self, path: Path) -> Ratios:
        """A GGUF file's speed against the F32 export of the same model, both in llama.cpp, interleaved
        as :meth:`torch_ratio`."""
        from lowbit.metrics import llamacpp

        if not self.enabled:
            return Ratios()
        if not llamacpp.available():
            return Ratios(note=NO_LLAMACPP)
        from lowbit.metrics.llamacpp import load_llamacpp
        from lowbit.writers.gguf import export_gguf

        f32 = self.work_dir / "f32-speed.gguf"
        if not f32.exists():
            export_gguf(self.ref, f32, "F32", overwrite=True)
        ref, cand = load_llamacpp(f32, n_ctx=512), load_llamacpp(path, n_ctx=512)
        win = self.evaluator.windows(self.ref.tokenizer)

        def tok_s(h: ModelHandle) -> Callable[[], tuple[float, float]]:
            return lambda: (h.model.prefill_tok_s(win[0, :256]), h.model.decode_tok_s(win[0, :32], 16))

        pairs = interleaved(tok_s(ref), tok_s(cand))
        del ref, cand
        return Ratios.of(pairs, LLAMACPP_NOTE)


def interleaved(ref: Callable[[], tuple[float | None, float | None]],
                cand: Callable[[], tuple[float | None, float | None]]) -> list[tuple[float | None, float | None]]:
    """``PAIRS`` (prefill, decode) ratios of the candidate's tokens/s to the reference's, each pair measured
    back to back, the order alternating (reference first, then candidate first, ...)."""
    pairs = []
    for k in range(PAIRS):
        if k % 2:
            (cp, cd), (rp, rd) = cand(), ref()
        else:
            (rp, rd), (cp, cd) = ref(), cand()
        pairs.append(((cp / rp if cp and rp else None), (cd / rd if cd and rd else None)))
    return pairs


PAIRS = 3
UNDER_LOAD = 0.25  # pair ratios spread wider than this (relative to their median): measured under load


@dataclass
class Ratios:
    """A candidate's speed as ratios to full precision: the median over interleaved pairs, the range of
    the pairs' ratios (``spread``), and how it was measured."""

    prefill: float | None = None
    decode: float | None = None
    note: str = ""
    spread: dict[str, list[float]] | None = None

    @classmethod
    def of(cls, pairs: list[tuple[float | None, float | None]], note: str) -> Ratios:
        pre = [p for p, _ in pairs if p]
        dec = [d for _, d in pairs if d]
        spread = {k: [min(v), max(v)] for k, v in (("prefill", pre), ("decode", dec)) if v}
        wide = [k for k, v in (("prefill", pre), ("decode", dec))
                if v and (max(v) - min(v)) / statistics.median(v) > UNDER_LOAD]
        if wide:
            note += f"; measured under load ({' and '.join(wide)} pair ratios spread over {UNDER_LOAD:.0%})"
        return cls(statistics.median(pre) if pre else None, statistics.median(dec) if dec else None,
                   note if pre else "", spread or None)


def record(rows: list[Row], model: str) -> None:
    """What was measured here feeds `lowbit plan` (plan/rule.py reads it): one entry per format, the
    last row of a format winning. A cache that cannot be written is a warning, not a failed run."""
    from lowbit.plan.rule import record_speed

    entries = {r.format: {"prefill_ratio_vs_fp32": r.speed_ratio_vs_fp32, "decode_ratio_vs_fp32": r.decode_ratio_vs_fp32,
                          "runtime": r.speed_note, "model": model, "date": time.strftime("%Y-%m-%d")}
               for r in rows if r.speed_ratio_vs_fp32 is not None and r.format}
    if not entries:
        return
    try:
        record_speed(entries)
    except OSError as e:
        log.warning("could not record measured speeds: %s", e)
