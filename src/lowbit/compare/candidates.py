"""The candidates `lowbit compare` can run: one entry per (family, setting), in a registry, so a new
family joins with one ``register_candidate`` call in compare/families.py and no other change to compare.

A candidate turns the reference handle into something the evaluator scores: a quantized torch model,
or a GGUF file (read back into torch for quality, run in llama.cpp for speed when it is installed).
"""

from __future__ import annotations

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


def candidates_for(kind: str, names: list[str] | None, training: bool = False) -> list[Candidate]:
    """The named candidates, or the default set for this kind of model: every registered family's
    default rungs, most conservative (highest bit width) first; with ``training`` (the user gave
    training data and a step budget) the training candidates (QAT) join it."""
    import lowbit.compare.families  # noqa: F401  (every family registers its candidates there)
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
