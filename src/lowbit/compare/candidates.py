"""The candidates `lowbit compare` can run: one entry per (family, setting), in a registry, so a new
family joins with one ``register_candidate`` call in its own module and no change to compare.

A candidate turns the reference handle into something the evaluator scores: a quantized torch model,
or a GGUF file (read back into torch for quality, run in llama.cpp for speed when it is installed).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lowbit.loaders.handle import CAUSAL_LM, ModelHandle
from lowbit.registry import Registry


@dataclass
class Built:
    """What a candidate produced: a handle to evaluate, and how big its deployable artifact is."""

    handle: ModelHandle
    size_bytes: int | None = None
    bits_per_weight: float | None = None
    gguf_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Candidate:
    id: str
    family: str
    bits: int  # nominal bit width: the rung of the ladder that compare pushes down
    label: str
    format: str  # key of plan/hardware.toml
    build: Callable[[ModelHandle, Any], Built]
    needs_calib: bool = False
    kinds: tuple[str, ...] = (CAUSAL_LM,)  # model kinds it applies to
    config: str = ""  # everything that changes the result, for the resume cache key
    default: bool = True  # in the default set: every family built so far
    plan_method: str | None = None  # its entry in plan/rules.toml, for the five axes in the report
    needs_training: bool = False  # QAT: joins the default set only when the user gives training data and steps


CANDIDATES: Registry[Candidate] = Registry("compare candidate")


def register_candidate(c: Candidate) -> Candidate:
    CANDIDATES.add(c.id, c)
    return c


# --- lowbit methods (quantized torch modules) ----------------------------------------------------
def _method(method: str, bits: int, symmetric: bool, group: int, **options: Any) -> Callable[[ModelHandle, Any], Built]:
    def build(ref: ModelHandle, ctx: Any) -> Built:
        from lowbit import api
        from lowbit.methods import get_method
        from lowbit.spec import QuantSpec

        cfg = api.make_config(method, QuantSpec(bits, symmetric, group), **options)
        qh, rep = api.quantize(ref, cfg, calib=ctx.calib if get_method(method).needs else None)
        return Built(qh, extra={"quantize_seconds": rep.seconds, "report_bpw": rep.bits_per_weight})

    return build


def _register_methods() -> None:
    both = (CAUSAL_LM, "encoder")
    lm = (CAUSAL_LM,)
    for cid, method, bits, sym, group, fmt, label, needs, kinds, default in [
        ("rtn-w8", "rtn", 8, True, -1, "int8-weight", "RTN 8-bit per channel", False, both, True),
        ("rtn-w4g64", "rtn", 4, False, 64, "int4-weight", "RTN 4-bit asym g64", False, both, True),
        ("hqq-w4g64", "hqq", 4, False, 64, "int4-weight", "HQQ 4-bit asym g64", False, both, True),
        ("gptq-w4g64", "gptq", 4, False, 64, "int4-weight", "GPTQ 4-bit asym g64 (act-order)", True, lm, True),
        ("awq-w4g64", "awq", 4, False, 64, "int4-weight", "AWQ 4-bit asym g64", True, lm, True),
        ("gptq-w3g64", "gptq", 3, False, 64, "int4-weight", "GPTQ 3-bit asym g64 (act-order)", True, lm, True),
        ("rtn-w3g64", "rtn", 3, False, 64, "int4-weight", "RTN 3-bit asym g64", False, both, False),
        ("awq-w3g64", "awq", 3, False, 64, "int4-weight", "AWQ 3-bit asym g64", True, lm, False),
    ]:
        axes = {"rtn": "int8-weight" if bits == 8 else "rtn-w4g64", "hqq": "rtn-w4g64", "gptq": "gptq-w4",
                "awq": "awq-w4"}.get(method)
        register_candidate(Candidate(cid, method, bits, label, fmt, _method(method, bits, sym, group), needs, kinds,
                                     config=f"{method}:{bits}:{sym}:{group}", default=default, plan_method=axes))


# --- GGUF (llama.cpp types and mixes) -------------------------------------------------------------
def _gguf(mix: str) -> Callable[[ModelHandle, Any], Built]:
    def build(ref: ModelHandle, ctx: Any) -> Built:
        import gguf

        from lowbit.writers.gguf import export_gguf, load_into

        path = Path(tempfile.mkdtemp(prefix="lowbit-compare-")) / f"{mix}.gguf"
        imatrix = ctx.imatrix() if ctx.calib is not None and mix not in ("Q8_0", "F16") else None
        export_gguf(ref, path, mix, imatrix=imatrix)
        weights = [t for t in gguf.GGUFReader(str(path)).tensors if len(t.shape) >= 2]
        bpw = 8 * sum(int(t.n_bytes) for t in weights) / sum(int(t.n_elements) for t in weights)
        return Built(load_into(path, ref), path.stat().st_size, bpw, gguf_path=path,
                     extra={"imatrix": imatrix is not None})

    return build


def _register_gguf() -> None:
    for mix, bits in [("Q8_0", 8), ("Q6_K", 6), ("Q5_K_M", 5), ("Q4_K_M", 4), ("Q3_K_M", 3), ("Q2_K", 2)]:
        register_candidate(Candidate(f"gguf-{mix.lower()}", "gguf", bits, f"GGUF {mix} (llama.cpp)", "gguf", _gguf(mix),
                                     config=f"gguf:{mix}", default=mix in ("Q8_0", "Q4_K_M", "Q3_K_M"),
                                     plan_method="gguf-q8_0" if mix == "Q8_0" else
                                     "gguf-q5_k_m" if bits >= 5 else "gguf-q4_k_m"))


_register_methods()
_register_gguf()

def candidates_for(kind: str, names: list[str] | None, training: bool = False) -> list[Candidate]:
    """The named candidates, or the default set for this kind of model: every registered family's
    default rungs, most conservative (highest bit width) first; with ``training`` (the user gave
    training data and a step budget) the training candidates (QAT) join it."""
    import lowbit.methods  # noqa: F401  (families register their candidates on import)
    from lowbit.errors import InputError

    if names:
        chosen = [CANDIDATES.get(n) for n in names]
    else:
        every = [CANDIDATES.get(n) for n in CANDIDATES]
        chosen = sorted((c for c in every if (c.default or (training and c.needs_training)) and kind in c.kinds),
                        key=lambda c: -c.bits)
    bad = [c.id for c in chosen if kind not in c.kinds]
    if bad:
        raise InputError(f"candidate(s) {', '.join(bad)} cannot run on {'an' if kind[0] in 'aeiou' else 'a'} {kind} model (they need calibration "
                         "text through a causal LM)")
    return chosen
