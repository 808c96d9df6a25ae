"""Speed in `lowbit compare`: each candidate as a ratio to full precision on this machine, measured
on the eval windows. A torch candidate is timed in torch against the float32 reference; a GGUF file in
llama.cpp against the F32 export of the same model in llama.cpp, so each ratio compares like with
like. The ratios are recorded where `lowbit plan` reads measured speeds."""

from __future__ import annotations

import logging
import time
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


class SpeedMeter:
    """Prefill and decode speed (encoders: one padded batch) of the reference, then each candidate's
    as a ratio to it. With ``enabled`` False nothing is timed and every figure is None."""

    def __init__(self, ref: ModelHandle, evaluator: Evaluator, work_dir: Path, enabled: bool) -> None:
        self.ref, self.evaluator, self.work_dir, self.enabled = ref, evaluator, work_dir, enabled
        self.ref_tok_s: tuple[float | None, float | None] = (None, None)
        self._f32_llamacpp: tuple[float, float] | None = None

    def tok_s(self, model: nn.Module) -> tuple[float | None, float | None]:
        """Tokens per second in torch: (prefill, decode) for a causal LM, (batch, None) for an encoder."""
        if not self.enabled:
            return None, None
        win = self.evaluator.windows(self.ref.tokenizer)
        if self.ref.kind == CAUSAL_LM:
            return (speedmod.prefill_tok_s(model, win[0, : min(256, win.shape[1])]),
                    speedmod.decode_tok_s(model, win[0, : min(32, win.shape[1])], 16))
        texts = self.evaluator.texts()[:16]
        enc = self.ref.tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        return speedmod.encoder_tok_s(model, enc), None

    def reference(self) -> tuple[float | None, float | None]:
        """The reference's tokens per second, kept as the base of the torch ratios."""
        self.ref_tok_s = self.tok_s(self.ref.model)
        return self.ref_tok_s

    def torch_ratio(self, model: nn.Module) -> tuple[float | None, float | None, str]:
        """(prefill ratio, decode ratio, note) of a torch model to the reference."""
        pre, dec = self.tok_s(model)
        rp, rd = self.ref_tok_s
        pre_r = pre / rp if pre and rp else None
        dec_r = dec / rd if dec and rd else None
        return pre_r, dec_r, TORCH_NOTE if pre_r else ""

    def gguf_ratio(self, path: Path) -> tuple[float | None, float | None, str]:
        """(prefill ratio, decode ratio, note) of a GGUF file to the F32 export, both in llama.cpp."""
        from lowbit.metrics import llamacpp

        if not self.enabled:
            return None, None, ""
        if not llamacpp.available():
            return None, None, NO_LLAMACPP
        if self._f32_llamacpp is None:
            from lowbit.writers.gguf import export_gguf

            f32 = self.work_dir / "f32-speed.gguf"
            export_gguf(self.ref, f32, "F32", overwrite=True)
            self._f32_llamacpp = self._llamacpp_tok_s(f32)
            f32.unlink()
        pre, dec = self._llamacpp_tok_s(path)
        return pre / self._f32_llamacpp[0], dec / self._f32_llamacpp[1], LLAMACPP_NOTE

    def _llamacpp_tok_s(self, path: Path) -> tuple[float, float]:
        from lowbit.metrics.llamacpp import load_llamacpp

        h = load_llamacpp(path, n_ctx=512)
        win = self.evaluator.windows(self.ref.tokenizer)
        pre = h.model.prefill_tok_s(win[0, :256])
        dec = h.model.decode_tok_s(win[0, :32], 16)
        del h
        return pre, dec


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
