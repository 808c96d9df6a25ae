"""Quantization-aware training: ``prepare`` -> ``train`` -> ``convert``.

The guide's escalation step: when post-training quantization misses the target, train through the
rounding. ``prepare`` swaps the selected Linear (and Conv2d) layers for fake-quantized ones
(modules/fake_quant.py), starting from a PTQ result (RTN or GPTQ) so step 0 *is* that PTQ model;
``train`` runs a CPU-sized loop (causal-LM loss, cross-entropy on labels, or distillation to the
full-precision model, which needs no labels); ``convert`` turns each fake-quantized layer into the
same real module PTQ produces (QuantizedLinear / QuantizedConv2d for integer specs, Linear4bit for
NF4/FP4, W8A8Linear, GGMLLinear for the GGUF types, whose blocks GGUF export writes unchanged), so
saving, compressed-tensors and GGUF export work as they do for PTQ.

Spec strings (``parse_spec``): ``int3-asym-g64``, ``int4-sym-ch``, ``int8-sym-tensor``, ``nf4``,
``fp4``, ``nf4-dq``, a GGUF type (``Q4_K``, ``Q3_K``, ``Q8_0``...), or ``w8a8`` (int8 per-channel
weights and int8 per-token activations).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.errors import InputError
from lowbit.loaders import ModelHandle, load_model
from lowbit.loaders.handle import CAUSAL_LM, ENCODER
from lowbit.modules.fake_quant import ActQuantizer, FakeQuantConv2d, FakeQuantLinear, IntQuantizer, RoundTrip
from lowbit.modules.select import select_modules
from lowbit.modules.swap import replace_module
from lowbit.spec import PER_CHANNEL, PER_TENSOR, QuantSpec

log = logging.getLogger(__name__)

STARTS = ("rtn", "gptq")
_INT = re.compile(r"^int(?P<bits>[2-8])(?:-(?P<sym>sym|asym))?(?:-(?P<gran>ch|tensor|g\d+))?$")


# --- spec --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QATSpec:
    """What the trained layers become: an integer ``QuantSpec``, a bitsandbytes 4-bit type, a GGUF
    type, or W8A8."""

    kind: str  # "int" | "bnb4" | "gguf" | "w8a8"
    text: str
    spec: QuantSpec | None = None
    double_quant: bool = False

    @property
    def quant_type(self) -> str:
        """nf4 / fp4 for the bitsandbytes types."""
        return self.text.removesuffix("-dq")

    @property
    def label(self) -> str:
        return str(self.spec) if self.spec is not None else self.text


def parse_spec(text: str) -> QATSpec:
    t = text.strip()
    m = _INT.match(t.lower())
    if m:
        gran = m["gran"] or "g64"
        group = PER_CHANNEL if gran == "ch" else PER_TENSOR if gran == "tensor" else int(gran[1:])
        return QATSpec("int", t.lower(), QuantSpec(int(m["bits"]), m["sym"] != "asym", group))
    if t.lower() in ("nf4", "fp4", "nf4-dq", "fp4-dq"):
        return QATSpec("bnb4", t.lower(), double_quant=t.lower().endswith("-dq"))
    if t.lower() == "w8a8":
        return QATSpec("w8a8", "w8a8")
    from lowbit.formats.ggml import GGML_TYPES

    if t.upper() in GGML_TYPES:
        return QATSpec("gguf", t.upper())
    raise InputError(f"--spec {text!r}: expected int<bits>[-sym|-asym][-g<N>|-ch|-tensor] (e.g. int3-asym-g64), "
                     f"nf4, fp4, nf4-dq, w8a8, or a GGUF type ({', '.join(sorted(GGML_TYPES))})")


def _roundtrip(qs: QATSpec, shape: tuple[int, ...]) -> RoundTrip:
    if qs.kind == "bnb4":
        from lowbit.formats.bnb4 import quantize_4bit

        return RoundTrip(lambda w: quantize_4bit(w, qs.quant_type, 64, qs.double_quant).dequantize(), qs.text)
    if qs.kind == "gguf":
        import numpy as np

        from lowbit.formats.ggml import GGML_TYPES

        t = GGML_TYPES.get(qs.text)
        t.check(np.zeros((shape[0], math.prod(shape[1:])), dtype=np.float32), "weight")

        def fn(w: torch.Tensor) -> torch.Tensor:
            x = w.reshape(shape[0], -1).numpy()
            return torch.from_numpy(np.asarray(t.dequantize(t.quantize(x), x.shape), dtype=np.float32))

        return RoundTrip(fn, f"GGUF {qs.text} grid")
    from lowbit.methods.w8a8 import int8_rows

    def w8(w: torch.Tensor) -> torch.Tensor:  # W8A8Linear's own weight grid
        codes, s = int8_rows(w)
        return codes * s[:, None]

    return RoundTrip(w8, "int8 per-channel (W8A8 weights)")


# --- prepare -------------------------------------------------------------------------------------
def _targets(net: nn.Module, targets: Sequence[str] | None, ignore: Sequence[str] | None) -> tuple[list[str], list[str]]:
    selected, skipped = select_modules(net, targets, ignore, False)
    names = [n for n, m in selected.items() if isinstance(m, nn.Linear)]
    names += [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    if not names:
        raise InputError("no nn.Linear or nn.Conv2d layer selected: nothing to train")
    return names, skipped


def _ptq_start(handle: ModelHandle, qs: QATSpec, names: list[str], start: str, calib: Any) -> dict[str, Any]:
    """name -> QuantizedTensor of the PTQ model training starts from (GPTQ's carry the weights they
    were rounded from, ``prerounding``)."""
    from lowbit.methods.rtn import RTNConfig, rtn

    if start == "gptq":
        if handle.kind != CAUSAL_LM:
            raise InputError("--start gptq needs a causal LM and calibration text; use --start rtn")
        from lowbit import api

        linears = [n for n in names if isinstance(handle.model.get_submodule(n), nn.Linear)]
        pre: dict[str, torch.Tensor] = {}
        q, _ = api.quantize(handle, api.make_config("gptq", qs.spec), calib=calib or "pydoc:calib", targets=[
            "^" + re.escape(n) + "$" for n in linears], ignore=[], prerounding=pre)
        out = {n: q.model.get_submodule(n).quantized_tensor() for n in linears}
        for n in linears:
            out[n].prerounding = pre[n]
        for n in names:
            if n not in out:  # convolutions: GPTQ is for Linear layers here
                out[n] = rtn(handle.model.get_submodule(n).weight.data, RTNConfig(spec=qs.spec))
        return out
    return {n: rtn(handle.model.get_submodule(n).weight.data, RTNConfig(spec=qs.spec)) for n in names}


def prepare(model: ModelHandle | nn.Module | str, spec: str | QATSpec, *, start: str = "rtn", lsq: bool = False,
            act: bool = False, calib: Any = None, targets: Sequence[str] | None = None,
            ignore: Sequence[str] | None = None) -> ModelHandle:
    """A copy of ``model`` with its selected Linear and Conv2d layers fake-quantized to ``spec``.

    ``start``: the PTQ result the integer grid starts from ("rtn", or "gptq" with ``calib`` text);
    the latent weights start at the float weights for RTN and at the error-compensated weights GPTQ
    rounded for GPTQ, so the prepared model's forward equals that PTQ model's and every latent weight
    sits where its PTQ rounding left it inside its bin. ``lsq`` learns the scales too. ``act``
    fake-quantizes the layers' inputs to int8 per token (implied by the ``w8a8`` spec).
    """
    handle = load_model(model)
    qs = parse_spec(spec) if isinstance(spec, str) else spec
    if start not in STARTS:
        raise InputError(f"--start {start!r}: choose one of {', '.join(STARTS)}")
    if qs.kind != "int" and (start != "rtn" or lsq):
        raise InputError(f"{qs.text}: --start gptq and --lsq need an integer spec (int<bits>-...)")
    names, skipped = _targets(handle.model, targets, ignore)
    for n in names:
        w = handle.model.get_submodule(n).weight
        if qs.spec is not None:
            qs.spec.block_len(tuple(w.shape), n)
    starts = _ptq_start(handle, qs, names, start, calib) if qs.kind == "int" else {}
    net = copy.deepcopy(handle.model)
    for n in names:
        mod = net.get_submodule(n)
        if qs.kind == "int":
            qt = starts[n]
            wq: nn.Module = IntQuantizer(qs.spec, qt, lsq)
            latent = qt.prerounding  # GPTQ: the error-compensated weights it rounded; RTN: the float weights
        else:
            wq, latent = _roundtrip(qs, tuple(mod.weight.shape)), None
        aq = ActQuantizer() if (act or qs.kind == "w8a8") else None
        cls = FakeQuantConv2d if isinstance(mod, nn.Conv2d) else FakeQuantLinear
        replace_module(net, n, cls(mod, wq, aq, latent))
    rec = {"spec": qs.text, "start": start, "lsq": lsq, "act": bool(act or qs.kind == "w8a8"), "layers": names,
           "skipped": skipped}
    return ModelHandle(model=net, tokenizer=handle.tokenizer, kind=handle.kind, name=handle.name, path=handle.path,
                       quant=None, extra={"qat": rec, "reference": handle})


def fake_quant_layers(net: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in net.named_modules() if isinstance(m, FakeQuantLinear | FakeQuantConv2d)}


# --- convert -------------------------------------------------------------------------------------
@torch.no_grad()
def convert(handle: ModelHandle) -> ModelHandle:
    """The trained model with real quantized layers, as PTQ makes them (``handle.quant`` records them
    for save / export). Its logits equal the fake-quantized model's to float tolerance."""
    from lowbit.writers.checkpoint import record_for
    from lowbit.modules.qconv import QuantizedConv2d
    from lowbit.modules.qlinear import QuantizedLinear

    rec = handle.extra.get("qat")
    if rec is None:
        raise InputError(f"{handle.name} was not prepared for QAT (lowbit.methods.qat.prepare)")
    qs = parse_spec(rec["spec"])
    net = copy.deepcopy(handle.model)
    layers: dict[str, Any] = {}
    for name, mod in fake_quant_layers(net).items():
        if qs.kind == "int":
            qt = mod.weight_quant.quantized_tensor(mod.weight)
            conv = isinstance(mod, FakeQuantConv2d)
            new: nn.Module = (QuantizedConv2d.from_conv(mod.float_conv(), qt) if conv
                              else QuantizedLinear.from_linear(mod.float_linear(), qt))
            layers[name] = {"spec": qs.spec.to_dict(), "shape": list(qt.shape), "format": "intpack",
                            "module": "conv2d" if conv else "linear"}
        elif isinstance(mod, FakeQuantConv2d):
            raise InputError(f"{name}: convolutions convert only from integer specs")
        elif qs.kind == "bnb4":
            from lowbit.modules.bnb4_linear import Linear4bit

            new = Linear4bit.from_linear(mod.float_linear(), qs.quant_type, qs.double_quant)
            layers[name] = new.record()
        elif qs.kind == "w8a8":
            from lowbit.methods.w8a8 import W8A8Linear

            new = W8A8Linear(mod.float_linear(), "dynamic")
            layers[name] = new.record()
        else:  # GGUF: the type's own blocks, which `lowbit export --format gguf` writes as they are
            from lowbit.modules.ggml_linear import GGMLLinear

            new = GGMLLinear.from_linear(mod.float_linear(), qs.text)
            layers[name] = new.record()
        replace_module(net, name, new)
    for p in net.parameters():
        p.requires_grad_(False)
    keep = ("start", "lsq", "act", "steps", "lr", "distill", "train_seconds", "data")
    method = {"method": "qat", "version": 1, "qat_spec": qs.text, **{k: rec[k] for k in keep if k in rec}}
    if qs.spec is not None:
        method["spec"] = qs.spec.to_dict()
    quant = record_for(method, layers, rec["skipped"], handle.name, rec.get("train_seconds", 0.0))
    return ModelHandle(model=net.eval(), tokenizer=handle.tokenizer, kind=handle.kind, name=handle.name,
                       quant=quant, extra={"qat": rec})


# --- training ------------------------------------------------------------------------------------
@dataclass
class TrainSettings:
    """Sized for a CPU: short sequences, one per step, a few hundred steps."""

    steps: int = 200
    lr: float = 1e-5
    scale_lr: float | None = None  # LSQ scales; default lr / 10 (on smollm2, 1e-4 diverged within 60 steps)
    batch: int = 1
    seq_len: int = 256
    distill: bool = True
    clip: float = 1.0
    checkpoint: str | None = None  # a file: written every ``save_every`` steps and at the end
    save_every: int = 50
    resume: bool = False
    seed: int = 0
    data: str = ""

    def __post_init__(self) -> None:  # checked when built, so a CLI run fails before loading a model
        if self.steps < 1:
            raise InputError(f"--steps {self.steps}: train at least one step")
        if self.lr <= 0 or not math.isfinite(self.lr):
            raise InputError(f"--lr {self.lr}: must be a positive number")
        if self.resume and not self.checkpoint:
            raise InputError("--resume needs --checkpoint FILE")


@dataclass
class TrainResult:
    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    resumed_from: int = 0


def lm_batches(handle: ModelHandle, data: str, n: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """(n, seq_len) token windows of ``data`` for causal-LM training."""
    from lowbit.calib import load_corpus, token_windows

    return token_windows(load_corpus(data), handle.tokenizer, n, seq_len, seed)


def _loss_fn(kind: str, distill: bool) -> Callable[[nn.Module, nn.Module | None, Any], torch.Tensor]:
    if kind == CAUSAL_LM:
        def lm(student: nn.Module, teacher: nn.Module | None, batch: Any) -> torch.Tensor:
            logits = student(input_ids=batch).logits.float()
            if teacher is None:
                return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
            with torch.no_grad():
                ref = F.log_softmax(teacher(input_ids=batch).logits.float(), -1)
            return F.kl_div(F.log_softmax(logits, -1), ref, log_target=True, reduction="none").sum(-1).mean()

        return lm
    if kind == ENCODER:
        if not distill:
            raise InputError("encoders train by distillation (--distill): there is no label to fit")

        def enc(student: nn.Module, teacher: nn.Module | None, batch: Any) -> torch.Tensor:
            h = student(**batch).last_hidden_state
            with torch.no_grad():
                ref = teacher(**batch).last_hidden_state
            mask = batch["attention_mask"].float()
            cos = F.cosine_similarity(h, ref, dim=-1)
            return ((1 - cos) * mask).sum() / mask.sum()

        return enc

    def module(student: nn.Module, teacher: nn.Module | None, batch: Any) -> torch.Tensor:
        x, y = batch
        out = student(x)
        if teacher is None:
            return F.cross_entropy(out, y)
        with torch.no_grad():
            ref = F.log_softmax(teacher(x), -1)
        return F.kl_div(F.log_softmax(out, -1), ref, log_target=True, reduction="batchmean")

    return module


def _cycle(data: Any, batch: int, seed: int, start_step: int) -> Iterator[Any]:
    """Mini-batches of ``data`` (a (n, seq) tensor, a list of tokenized-encoder dicts, or (x, y)),
    reshuffled every epoch, deterministic in ``seed``; skips the batches of ``start_step`` steps."""
    n = len(data[0]) if isinstance(data, tuple) else len(data)
    if n == 0:
        raise InputError("no training data")
    rng = random.Random(seed)
    step = 0
    while True:
        order = list(range(n))
        rng.shuffle(order)
        for i in range(0, n - batch + 1 if n >= batch else 1, batch):
            idx = order[i : i + batch]
            if step >= start_step:
                if isinstance(data, tuple):
                    yield tuple(d[idx] for d in data)
                elif isinstance(data, torch.Tensor):
                    yield data[idx]
                else:
                    yield _collate([data[j] for j in idx])
            step += 1


def _collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    width = max(it["input_ids"].shape[-1] for it in items)
    return {k: torch.cat([F.pad(it[k], (0, width - it[k].shape[-1])) for it in items]) for k in items[0]}


def encoder_batches(handle: ModelHandle, data: str, n: int, max_len: int = 128, seed: int = 0) -> list[dict]:
    """``n`` texts of ``data``, tokenized one by one, for encoder distillation."""
    from lowbit.calib import load_corpus
    from lowbit.calib.sample import sample_texts

    texts = sample_texts(load_corpus(data), n, seed)
    return [dict(handle.tokenizer(t, truncation=True, max_length=max_len, return_tensors="pt")) for t in texts]


def _save(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train(handle: ModelHandle, data: Any, settings: TrainSettings, teacher: ModelHandle | None = None,
          progress: Callable[[int, int, float], None] | None = None) -> TrainResult:
    """Train the fake-quantized layers of a prepared ``handle`` in place.

    ``data``: (n, seq) token windows (causal LM), a list of tokenized texts (encoder), or an
    ``(x, y)`` pair of tensors (a classifier). With ``settings.distill`` the loss is the KL divergence
    (cosine distance for encoders) to ``teacher`` (default: the model ``prepare`` started from);
    otherwise next-token or label cross-entropy. Only the fake-quantized layers train (latent
    weights, biases, LSQ scales). Gradients are clipped to ``settings.clip``. With
    ``settings.checkpoint`` the student, optimizer, step and RNG state are written every
    ``save_every`` steps and at the end (atomically); ``resume`` continues from that file.
    """
    rec = handle.extra.get("qat")
    if rec is None:
        raise InputError(f"{handle.name} was not prepared for QAT (lowbit.methods.qat.prepare)")
    net = handle.model
    teacher_net = None
    if settings.distill:
        teacher = teacher or handle.extra.get("reference")
        if teacher is None:
            raise InputError("--distill needs the full-precision model as the teacher")
        teacher_net = teacher.model.eval()
        for p in teacher_net.parameters():
            p.requires_grad_(False)
    layers = fake_quant_layers(net)
    for p in net.parameters():
        p.requires_grad_(False)
    weights, scales = [], []
    for mod in layers.values():
        weights += [p for p in (mod.weight, mod.bias) if p is not None]
        if getattr(mod.weight_quant, "lsq", False):
            scales.append(mod.weight_quant.scale)
    for p in weights + scales:
        p.requires_grad_(True)
    scale_lr = settings.scale_lr if settings.scale_lr is not None else settings.lr / 10
    groups = [{"params": weights, "lr": settings.lr}] + ([{"params": scales, "lr": scale_lr}] if scales else [])
    opt = torch.optim.Adam(groups)
    loss_fn = _loss_fn(handle.kind, settings.distill)
    ckpt = Path(settings.checkpoint) if settings.checkpoint else None
    done, losses, seconds = 0, [], 0.0
    if settings.resume:
        if not ckpt.is_file():
            raise InputError(f"--resume: no checkpoint at {ckpt}")
        state = torch.load(ckpt, weights_only=False)
        if state["spec"] != rec["spec"] or state["total_steps"] != settings.steps:
            raise InputError(f"{ckpt} was written for --spec {state['spec']} --steps {state['total_steps']}, "
                             f"not {rec['spec']} / {settings.steps}")
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        done, losses, seconds = state["step"], state["losses"], state["seconds"]
        torch.set_rng_state(state["rng"])
    resumed = done
    batches = _cycle(data, settings.batch, settings.seed, done)
    net.train()
    t0 = time.perf_counter() - seconds
    while done < settings.steps:
        batch = next(batches)
        loss = loss_fn(net, teacher_net, batch)
        if not torch.isfinite(loss):
            raise InputError(f"step {done + 1}: the loss is {loss.item()}; lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(weights + scales, settings.clip)
        opt.step()
        done += 1
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(done, settings.steps, losses[-1])
        if ckpt is not None and (done % settings.save_every == 0 or done == settings.steps):
            _save(ckpt, {"model": net.state_dict(), "optimizer": opt.state_dict(), "step": done, "losses": losses,
                         "seconds": time.perf_counter() - t0, "rng": torch.get_rng_state(), "spec": rec["spec"],
                         "total_steps": settings.steps, "settings": asdict(settings)})
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    seconds = time.perf_counter() - t0
    rec.update(steps=settings.steps, lr=settings.lr, distill=settings.distill, train_seconds=round(seconds, 3),
               data=settings.data)
    return TrainResult(done, seconds, losses, resumed)


# --- compare --------------------------------------------------------------------------------------
def _candidate(bits: int) -> Any:
    def build(ref: ModelHandle, ctx: Any) -> Any:
        from lowbit.compare.candidates import Built

        lm = ref.kind == CAUSAL_LM
        p = prepare(ref, f"int{bits}-asym-g64", start="rtn")
        data = (lm_batches(ref, ctx.train_data, ctx.qat_steps, 256) if lm
                else encoder_batches(ref, ctx.train_data, ctx.qat_steps * 4, 128))
        res = train(p, data, TrainSettings(steps=ctx.qat_steps, lr=2e-5 if lm else 3e-5, batch=1 if lm else 4,
                                           distill=True, data=ctx.train_data))
        return Built(convert(p), extra={"quantize_seconds": res.seconds, "train_steps": res.steps})

    return build


def _register() -> None:
    from lowbit.compare.candidates import Candidate, register_candidate

    for bits in (4, 3):
        register_candidate(Candidate(f"qat-w{bits}g64", "qat", bits, f"QAT {bits}-bit asym g64 (from RTN, distilled)",
                                     "int4-weight", _candidate(bits), kinds=(CAUSAL_LM, ENCODER), config=f"qat:{bits}:rtn",
                                     default=False, plan_method="qat", needs_training=True))


_register()

__all__ = ["QATSpec", "TrainResult", "TrainSettings", "convert", "encoder_batches", "fake_quant_layers",
           "lm_batches", "parse_spec", "prepare", "train"]
