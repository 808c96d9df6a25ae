"""Every family's candidates for `lowbit compare`, registered in one place on the compare side: each
builds its quantized model through the one pipeline (``lowbit.pipeline.quantize``), or writes a GGUF.

A new family is one ``register_candidate`` call here (and one method file in methods/)."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lowbit.compare.candidates import Built, Candidate, register_candidate
from lowbit.loaders.handle import CAUSAL_LM, ENCODER, ModelHandle
from lowbit.methods import get_method, make_config
from lowbit.pipeline import quantize
from lowbit.spec import QuantSpec

BOTH = (CAUSAL_LM, ENCODER)
Build = Callable[[ModelHandle, Any], Built]


def _method(method: str, spec: QuantSpec | None = None, keep: tuple[str, ...] = (), **options: Any) -> Build:
    """A candidate that runs ``method`` through the pipeline (calibrated on the comparison's data when
    the method needs it); ``keep`` names report details worth a column (W8A8's alpha)."""

    def build(ref: ModelHandle, ctx: Any) -> Built:
        cfg = make_config(method, spec, **options)
        qh, rep = quantize(ref, cfg, calib=ctx.calib if get_method(method).needs else None)
        extra = {"quantize_seconds": rep.seconds, "report_bpw": rep.bits_per_weight}
        extra.update({k: rep.details.get(k) for k in keep})
        return Built(qh, extra=extra)

    return build


def quantize_embeddings(handle: ModelHandle) -> ModelHandle:
    """``--embeddings quantized`` for a torch candidate: its token embeddings and output head to int8 per row
    (RTN, symmetric), data-free, after its own method ran on the other layers; a tied head shares the codes."""
    model = handle.model
    names = [n for n, m in model.named_modules()
             if m is model.get_input_embeddings() or m is getattr(model, "get_output_embeddings", lambda: None)()]
    if not names:
        return handle
    qh, _ = quantize(handle, make_config("rtn", QuantSpec(8, True, -1)), targets=[f"^{n}$" for n in names], ignore=[],
                     embeddings=True)
    return qh


def _register_grids() -> None:
    lm = (CAUSAL_LM,)
    for cid, method, bits, sym, group, fmt, label, needs, kinds, default in [
        ("rtn-w8", "rtn", 8, True, -1, "int8-weight", "RTN 8-bit per channel", False, BOTH, True),
        ("rtn-w4g64", "rtn", 4, False, 64, "int4-weight", "RTN 4-bit asym g64", False, BOTH, True),
        ("hqq-w4g64", "hqq", 4, False, 64, "int4-weight", "HQQ 4-bit asym g64", False, BOTH, True),
        ("gptq-w4g64", "gptq", 4, False, 64, "int4-weight", "GPTQ 4-bit asym g64 (act-order)", True, lm, True),
        ("awq-w4g64", "awq", 4, False, 64, "int4-weight", "AWQ 4-bit asym g64", True, lm, True),
        ("gptq-w3g64", "gptq", 3, False, 64, "int4-weight", "GPTQ 3-bit asym g64 (act-order)", True, lm, True),
        ("rtn-w3g64", "rtn", 3, False, 64, "int4-weight", "RTN 3-bit asym g64", False, BOTH, False),
        ("rtn-w4g32", "rtn", 4, False, 32, "int4-weight", "RTN 4-bit asym g32", False, BOTH, False),
        ("hqq-w3g64", "hqq", 3, False, 64, "int4-weight", "HQQ 3-bit asym g64", False, BOTH, False),
        ("awq-w3g64", "awq", 3, False, 64, "int4-weight", "AWQ 3-bit asym g64", True, lm, False),
    ]:
        axes = {"rtn": "int8-weight" if bits == 8 else "rtn-w4g64", "hqq": "rtn-w4g64", "gptq": "gptq-w4",
                "awq": "awq-w4"}.get(method)
        register_candidate(Candidate(cid, method, bits, label, fmt, _method(method, QuantSpec(bits, sym, group)), needs,
                                     kinds, config=f"{method}:{bits}:{sym}:{group}", default=default, plan_method=axes))


def _gguf(mix: str) -> Build:
    def build(ref: ModelHandle, ctx: Any) -> Built:
        import gguf

        from lowbit.writers.gguf import export_gguf, load_into

        path = Path(tempfile.mkdtemp(prefix="lowbit-compare-")) / f"{mix}.gguf"
        imatrix = ctx.imatrix() if ctx.calib is not None and mix not in ("Q8_0", "F16") else None
        rule = {"stored": "F32", "quantized": "Q8_0"}.get(ctx.embeddings)  # gguf-rule: llama.cpp's mix decides
        kept = [f"^token_embd\\.weight$={rule}", f"^output\\.weight$={rule}"] if rule else None
        summary = export_gguf(ref, path, mix, imatrix=imatrix, tensor_types=kept)
        kept_names = ("token_embd.weight", "output.weight") if rule == "F32" else ()  # bpw of the quantized layers
        weights = [t for t in gguf.GGUFReader(str(path)).tensors if len(t.shape) >= 2 and t.name not in kept_names]
        bpw = 8 * sum(int(t.n_bytes) for t in weights) / sum(int(t.n_elements) for t in weights)
        return Built(load_into(path, ref), path.stat().st_size, bpw, gguf_path=path,
                     extra={"imatrix": imatrix is not None, "fallbacks": summary["fallbacks"] or None})

    return build


def _register_gguf() -> None:
    from lowbit.writers.gguf_mix import MIXES, NEEDS_IMATRIX

    for mix, bits in [("Q8_0", 8), ("Q6_K", 6), ("Q5_K_M", 5), ("Q4_K_M", 4), ("IQ4_XS", 4), ("IQ4_NL", 4),
                      ("Q3_K_M", 3), ("IQ3_M", 3), ("IQ3_XXS", 3), ("Q2_K", 2), ("IQ2_M", 2), ("IQ2_XXS", 2),
                      ("TQ2_0", 2), ("IQ1_M", 1)]:
        needs = MIXES[mix][0] in NEEDS_IMATRIX  # llama.cpp refuses the mix's own type without importance data
        register_candidate(Candidate(f"gguf-{mix.lower()}", "gguf", bits, f"GGUF {mix} (llama.cpp)", "gguf", _gguf(mix),
                                     needs_calib=needs, config=f"gguf:{mix}", default=mix in ("Q8_0", "Q4_K_M", "Q3_K_M"),
                                     plan_method="gguf-q8_0" if mix == "Q8_0" else
                                     "gguf-q5_k_m" if bits >= 5 else "gguf-q4_k_m"))


def _gguf_budget(budget: str) -> Build:
    def build(ref: ModelHandle, ctx: Any) -> Built:
        from lowbit.budget.allocate import allocate, export_allocation
        from lowbit.budget.solve import parse_budget
        from lowbit.writers.gguf import load_into

        rule = {"stored": "F32", "quantized": "Q8_0"}.get(ctx.embeddings)  # as the fixed mixes under --embeddings
        pins = {"token_embd.weight": rule, "output.weight": rule} if rule else {}
        had = ctx.has_sensitivity
        alloc = allocate(ctx.sensitivity(pins), parse_budget(budget))
        path = Path(tempfile.mkdtemp(prefix="lowbit-compare-")) / "budget.gguf"
        export_allocation(ref, str(path), alloc, imatrix=ctx.imatrix())
        kept = {n for n, t in pins.items() if t == "F32"}
        qbytes = sum(n for name, _, n, _ in alloc.table() if name not in kept)  # bpw of the quantized layers
        numel = sum(math.prod(r.shape) for r in alloc.rows if r.quantizable and r.name not in kept)
        bpw = 8 * qbytes / max(numel, 1)
        checked = ctx.proxy_seconds
        proxy = ctx.proxy_check(pins)
        return Built(load_into(path, ref), path.stat().st_size, bpw, gguf_path=path,
                     extra={"imatrix": True, "allocation": [list(t) for t in alloc.table()],
                            "predicted_kl": alloc.predicted_dkl, "reused_sensitivity": had,
                            "check_seconds": ctx.proxy_seconds - checked,  # the proxy check: not the file's cost
                            "proxy": None if proxy is None else {"spearman": proxy.spearman, "within_type": proxy.within_type,
                                                                 "pairs": [list(p) for p in proxy.pairs]}})

    return build


def budget_candidate(budget: str, check: int = 0) -> Candidate:
    """A GGUF file mixed to ``budget`` (``lowbit compare --budget 4.5``): one type per tensor, least
    predicted KL, calibrated on the compare's calibration data, with its importance matrix. ``check``:
    (tensor, type) pairs measured alone to check the predictions (``--budget-check``; 0: none)."""
    from lowbit.budget.solve import parse_budget

    b = parse_budget(budget)
    slug = f"{b.bpw:g}bpw" if b.bpw is not None else str(budget).strip().lower().replace(" ", "")
    bits = int(b.bpw) if b.bpw is not None else 4
    return Candidate(f"gguf-budget-{slug}", "gguf-budget", bits, f"GGUF mixed to {b} (lowbit allocation)", "gguf",
                     _gguf_budget(budget), needs_calib=True, config=f"gguf-budget:{b}:check{check}", default=False,
                     plan_method="gguf-q4_k_m")


def _register_bitsandbytes() -> None:
    for qt, dq, default in (("nf4", False, False), ("nf4", True, True), ("fp4", False, False)):
        register_candidate(Candidate(f"bnb-{qt}{'-dq' if dq else ''}", "bitsandbytes", 4,
                                     f"bitsandbytes-style {qt.upper()}{' + double quant' if dq else ''}, block 64",
                                     "bnb-nf4", _method(qt, double_quant=dq), kinds=BOTH, config=f"bnb4:{qt}:{dq}:64",
                                     default=default, plan_method="bnb-nf4"))
    register_candidate(Candidate("bnb-int8", "bitsandbytes", 8, "LLM.int8 (int8 rows, outlier columns >= 6 in float32)",
                                 "bnb-int8", _method("int8"), kinds=BOTH, config="llm_int8:6.0", default=True,
                                 plan_method="bnb-int8"))


def _register_w8a8() -> None:
    for act, smooth, default in (("dynamic", True, True), ("dynamic", False, False), ("static", True, False),
                                 ("static", False, False)):
        register_candidate(Candidate(f"w8a8-{act}{'-smooth' if smooth else ''}", "w8a8", 8,
                                     f"W8A8 int8, {act} activations{', SmoothQuant' if smooth else ''}", "w8a8-int8",
                                     _method("w8a8", keep=("alpha",), act=act, smooth=smooth,
                                             alpha=None if smooth else 0.5),
                                     needs_calib=True, kinds=BOTH, config=f"w8a8:{act}:{smooth}", default=default,
                                     plan_method="w8a8"))


def _qat(bits: int) -> Build:
    def build(ref: ModelHandle, ctx: Any) -> Built:
        from lowbit import qat

        lm = ref.kind == CAUSAL_LM
        p = qat.prepare(ref, f"int{bits}-asym-g64", start="rtn")
        data = (qat.lm_batches(ref, ctx.train_data, ctx.qat_steps, 256) if lm
                else qat.encoder_batches(ref, ctx.train_data, ctx.qat_steps * 4, 128))
        res = qat.train(p, data, qat.TrainSettings(steps=ctx.qat_steps, lr=2e-5 if lm else 3e-5, batch=1 if lm else 4,
                                                   distill=True, data=ctx.train_data))
        return Built(qat.convert(p), extra={"quantize_seconds": res.seconds, "train_steps": res.steps})

    return build


def _register_qat() -> None:
    for bits in (4, 3):
        register_candidate(Candidate(f"qat-w{bits}g64", "qat", bits, f"QAT {bits}-bit asym g64 (from RTN, distilled)",
                                     "int4-weight", _qat(bits), kinds=BOTH, config=f"qat:{bits}:rtn", default=False,
                                     plan_method="qat", needs_training=True))


_register_grids()
_register_gguf()
_register_bitsandbytes()
_register_w8a8()
_register_qat()
