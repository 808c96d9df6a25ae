"""`lowbit plan`: walk the guide's decision rule (plan/rules.toml) top-down, stop at the first match,
and explain the choice and the runner-up on the five axes, with hardware support from
plan/hardware.toml. Pure data plus a little matching: no torch, answers at once.

    plan = make_plan(Inputs(target="cuda:8.0", goal="serve"), ModelInfo.of("smollm2"))
    print(plan.render())
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from lowbit.errors import InputError
from lowbit.plan.model_info import ModelInfo

HERE = Path(__file__).resolve().parent
GOALS = ("experiment", "serve", "edge", "accuracy")
DEVICES = ("cpu", "cuda", "apple", "edge")
SPEED_ORDER = {"fast": 0, "runs": 1, "slow": 2, "none": 3}


@cache
def rules() -> dict[str, Any]:
    return tomllib.loads((HERE / "rules.toml").read_text())


@cache
def hardware() -> dict[str, Any]:
    return tomllib.loads((HERE / "hardware.toml").read_text())


@dataclass(frozen=True)
class Target:
    device: str
    sm: float | None = None

    @classmethod
    def parse(cls, text: str) -> Target:
        dev, _, rest = text.strip().lower().partition(":")
        if dev not in DEVICES:
            raise InputError(f"--target {text!r}: expected one of cpu, cuda[:SM], apple, edge (e.g. cuda:8.0)")
        if dev != "cuda" or not rest:
            if rest:
                raise InputError(f"--target {text!r}: only cuda takes a compute capability")
            return cls(dev)
        sm = rest.removeprefix("sm_").removeprefix("sm")
        try:
            value = float(sm) if "." in sm else (int(sm) / 10 if len(sm) >= 2 else float(sm))
        except ValueError:
            raise InputError(f"--target {text!r}: compute capability must look like 8.0, 80 or sm_80") from None
        if not 3.0 <= value < 20:
            raise InputError(f"--target {text!r}: compute capability {value} is not a real NVIDIA one")
        return cls(dev, value)

    def __str__(self) -> str:
        return f"{self.device}:{self.sm:g}" if self.sm is not None else self.device


@dataclass(frozen=True)
class Inputs:
    target: str = "cpu"
    goal: str = "serve"
    batch: int = 1
    have_training_data: bool = False
    latency_critical: bool = False

    def check(self) -> None:
        if self.goal not in GOALS:
            raise InputError(f"--goal {self.goal!r}: expected one of {', '.join(GOALS)}")
        if self.batch < 1:
            raise InputError(f"--batch must be at least 1, got {self.batch}")
        Target.parse(self.target)


@dataclass
class Step:
    question: str
    matched: bool
    reason: str


@dataclass
class Support:
    runtime: str
    speed: str
    note: str = ""


@dataclass
class Choice:
    id: str
    method: dict[str, Any]
    support: list[Support]
    cost_seconds: float | None
    cost_note: str
    in_lowbit: bool

    def axes(self) -> list[tuple[str, str]]:
        m = self.method
        if self.cost_seconds is None:
            cost = f"{m['calibration']}; {self.cost_note}"
        elif self.cost_seconds == 0:
            cost = m["calibration"]
        else:
            what = "quantizing takes" if m["calibration"].startswith("none") else "about"
            cost = f"{m['calibration']}; {what} {_duration(self.cost_seconds)} ({self.cost_note})"
        hw = "; ".join(f"{s.runtime}: {s.speed}" + (f" ({s.note})" if s.note else "") for s in self.support) or "no entry"
        return [("bit width", m["bits"]), ("what is quantized", m["quantizes"]), ("granularity", m["granularity"]),
                ("calibration cost", cost), ("hardware support", hw)]


@dataclass
class Plan:
    inputs: Inputs
    model: ModelInfo
    path: list[Step]
    rule: dict[str, Any]
    chosen: Choice
    runner_up: Choice
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        def choice(c: Choice) -> dict[str, Any]:
            return {"id": c.id, "label": c.method["label"], "family": c.method["family"], "axes": dict(c.axes()),
                    "calibration_seconds_estimate": c.cost_seconds, "in_lowbit": c.in_lowbit,
                    "command": c.method["command"], "support": [vars(s) for s in c.support]}

        return {"inputs": vars(self.inputs), "model": vars(self.model), "rule": self.rule["id"],
                "why": self.rule["why"], "path": [vars(s) for s in self.path], "chosen": choice(self.chosen),
                "runner_up": choice(self.runner_up), "notes": self.notes}

    def render(self) -> str:
        m = self.model
        size = f"{m.params / 1e6:,.0f}M parameters" if m.params else "parameter count unknown"
        lines = [(f"model: {m.name} ({m.kind}, {size})   target: {self.inputs.target}   goal: {self.inputs.goal}"
                 f"   batch: {self.inputs.batch}"), "", "The guide's decision rule, top-down, first match wins:"]
        for i, s in enumerate(self.path, 1):
            mark = "->" if s.matched else "  "
            lines.append(f" {mark} {i}. {s.question}  {'YES' if s.matched else 'no'}: {s.reason}")
        lines += ["", f"Choice: {self.chosen.method['label']}", f"  {self.rule['why']}"]
        for title, c in (("chosen", self.chosen), ("runner-up", self.runner_up)):
            lines += ["", f"{title}: {c.method['label']}"]
            lines += [f"  {k:<18} {v}" for k, v in c.axes()]
            lines.append(f"  {'lowbit':<18} {c.method['command']}" if c.in_lowbit else
                         f"  {'lowbit':<18} not in lowbit yet ({c.method['module']} is missing)")
        if self.notes:
            lines += ["", *[f"note: {n}" for n in self.notes]]
        lines += ["", "Validate on your own eval set: `lowbit compare MODEL --eval DATA --bar kl=0.05` runs the candidates."]
        return "\n".join(lines)


def _duration(sec: float) -> str:
    if sec < 1:
        return "under a second"
    if sec < 90:
        return f"{sec:.0f} s"
    if sec < 5400:
        return f"{sec / 60:.0f} min"
    return f"{sec / 3600:.1f} h"


def _holds(when: dict[str, Any], facts: dict[str, Any]) -> tuple[bool, str]:
    """Whether every condition holds, and why (the first that fails, or all that held)."""
    why = []
    for key, want in when.items():
        have = facts.get(key)
        if key == "max_params":
            if have is None:
                why.append("size unknown, taken as small")
                continue
            if have > want:
                return False, f"{have / 1e6:,.0f}M parameters is not tiny (limit {want / 1e6:,.0f}M)"
            why.append(f"{have / 1e6:,.0f}M parameters")
            continue
        if have not in want:
            return False, f"{key.replace('_', ' ')} is {have}, not {' or '.join(map(str, want))}"
        why.append(f"{key.replace('_', ' ')} {have}")
    return True, ", ".join(why) or "always"


def _support(fmt: str, target: Target) -> list[Support]:
    entries = hardware()["format"].get(fmt, {}).get("entries", [])
    out = []
    for e in entries:
        if e["device"] != target.device:
            continue
        if target.sm is not None and (target.sm < e.get("min_sm", 0) or target.sm >= e.get("max_sm", 99)):
            continue
        note = e.get("note", "")
        if "isa" in e and target.device == "cpu":
            have = e["isa"] in cpu_flags()
            note = f"needs {e['isa'].upper()} (this machine: {'yes' if have else 'no'})" + (f"; {note}" if note else "")
        if target.device == "cuda" and target.sm is None and "min_sm" in e:
            note = f"needs compute capability >= {e['min_sm']}" + (f"; {note}" if note else "")
        out.append(Support(e["runtime"], e["speed"], note))
    out.sort(key=lambda s: SPEED_ORDER.get(s.speed, 9))
    speeds = measured_speed()
    measured = {"cpu": speeds, "cuda": speeds.get("cuda", {})}.get(target.device, {}).get(fmt)
    cc = (measured or {}).get("compute_capability")
    if cc and target.sm is not None and abs(float(cc) - target.sm) > 1e-6:  # measured on another GPU
        measured = None
    if measured:  # what was measured here comes first
        r = measured["prefill_ratio_vs_fp32"]
        where = "this machine" if target.device == "cpu" else f"this machine's GPU, {measured.get('machine', '?')}"
        out.insert(0, Support(f"measured on {where} ({measured.get('runtime', 'lowbit')})",
                              "fast" if r >= 1.05 else ("runs" if r >= 0.95 else "slow"),
                              f"prefill {r:.2f}x fp32" + (" - SLOWER than full precision here" if r < 1 else "")))
    return out


def _cost(key: str, params: int | None) -> tuple[float | None, str]:
    c = rules()["cost"][key]
    if c["seconds"] == 0:
        return (0.0, c.get("note", "")) if key == "none" else (None, c.get("note", "not measured"))
    if params is None:
        return None, f"measured {c['seconds']:.0f} s for a {c['params'] / 1e6:.0f}M model; give MODEL to scale it"
    tokens = f" and {c['tokens']} {c.get('token_kind', 'calibration')} tokens" if c.get("per_token") else ""
    return (c["seconds"] * params / c["params"],
            f"scaled from {c['seconds']:.0f} s for {c['params'] / 1e6:.0f}M parameters{tokens} on {c['machine']}")


def method_choice(mid: str, target: Target, params: int | None) -> Choice:
    m = rules()["method"][mid]
    sec, note = _cost(m["cost"], params)
    in_lowbit = _module_exists(m["module"])
    return Choice(mid, m, _support(m["format"], target), sec, note, in_lowbit)


def _module_exists(dotted: str) -> bool:
    """Whether a lowbit module exists, looked up on disk: importing it (or find_spec, which imports
    its parent packages) would load torch."""
    rel = Path(*dotted.split(".")[1:])
    pkg = HERE.parent
    return (pkg / rel).with_suffix(".py").exists() or (pkg / rel / "__init__.py").exists()


def make_plan(inputs: Inputs, model: ModelInfo) -> Plan:
    inputs.check()
    target = Target.parse(inputs.target)
    facts = {"goal": inputs.goal, "target": target.device, "model_kind": model.kind,
             "latency_critical": inputs.latency_critical, "max_params": model.params}
    path: list[Step] = []
    for rule in rules()["rule"]:
        ok, why = _holds(rule["when"], facts)
        path.append(Step(rule["question"], ok, why))
        if ok:
            break
    notes = []
    if rule["id"] == "qat":
        notes.append("training labels given: cross-entropy on them" if inputs.have_training_data else
                     "no training labels: distil from the full-precision model (KL) on unlabeled in-domain text")
    if inputs.batch >= 32:
        notes.append(f"batch {inputs.batch}: serving is compute-bound, where weight-only formats gain little speed "
                     "and INT8 weight-and-activation (W8A8) kernels gain most")
    elif rule["id"] in ("gpu-4bit-serving", "cpu-edge"):
        notes.append(f"batch {inputs.batch}: decoding is memory-bound, where weight-only formats give their speedup")
    return Plan(inputs, model, path, rule, method_choice(rule["choose"], target, model.params),
                method_choice(rule["runner_up"], target, model.params), notes)


def rule_text() -> str:
    """The rule as `lowbit plan --help` shows it."""
    lines = []
    for i, r in enumerate(rules()["rule"], 1):
        lines.append(f"{i}. {r['question']} -> {rules()['method'][r['choose']]['label']}")
    return "\n".join(lines)


@cache
def cpu_flags() -> frozenset[str]:
    """This machine's CPU feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def speed_file() -> Path:
    from lowbit.loaders.cache import cache_root

    return cache_root() / "speed.json"


def measured_speed() -> dict[str, Any]:
    """Per-format speed ratios that `lowbit compare` and `lowbit hardware` measured on this machine
    (empty if none yet): ``{format: entry}``, and the GPU's under ``"cuda"``."""
    try:
        return json.loads(speed_file().read_text())
    except (OSError, ValueError):
        return {}


def record_speed(entries: dict[str, dict[str, Any]], section: str | None = None) -> Path:
    """Merge per-format entries into the speed cache (under ``section``, e.g. ``"cuda"``, if given) and
    write it atomically: a temporary file in the same directory, renamed over the old one only once
    it is complete, so a failure mid-write leaves the previous cache as it was. The one writer of the
    file: `lowbit compare` and `lowbit hardware` both record through it. Raises ``OSError``."""
    path = speed_file()
    data = measured_speed()
    where = data.setdefault(section, {}) if section else data
    where.update(entries)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # one per process: two writers never share it
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
