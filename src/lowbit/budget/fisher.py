"""How much each weight matrix moves the model's predictions: factored Fisher statistics from one
forward and backward pass per calibration window.

For a Linear ``y = W x``, the second-order expansion of the mean per-token KL(p || p_quantized) is

    dKL ~= 1/2 vec(dW)^T F vec(dW),   F the Fisher information of the model's own predictions.

lowbit keeps a factored diagonal of F (as K-FAC does, output gradients independent of inputs and of
other tokens): per output row ``i`` the summed squared gradient ``G_i = sum_t delta_{t,i}^2`` of a
loss whose labels are *sampled from the model itself* (so E[delta delta^T] is the Fisher, not the
empirical Fisher of the text's labels), and the input second moments ``C = mean_t x_t x_t^T``:

    dKL(W -> W + dW) ~= 1/2 / T * sum_i G_i * dW_i C dW_i^T            (T scored tokens)

An embedding table's input is one-hot, so its rows take the per-(row, column) gradient energy ``E`` of
the positions that looked them up: ``1/2 / T * sum_{v,d} E_{v,d} dW_{v,d}^2``. A table tied to the
output head gets both terms. Statistics are keyed by the model's weight names, rows in the Hugging Face
order (the GGUF writer permutes attn_q / attn_k rows; budget/allocate.py permutes G with them). Linears
that read the same input tensor (q/k/v, gate/up) are recorded as one group: runtimes fuse them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lowbit.errors import InputError
from lowbit.progress import track


@dataclass
class TensorFisher:
    """One tensor's factors: ``g`` (rows,) output-gradient energy and ``cov`` (cols, cols) input
    second moments of its Linear use; ``emb`` (rows, cols) gradient energy of its lookups."""

    g: np.ndarray | None = None
    cov: np.ndarray | None = None
    emb: np.ndarray | None = None


@dataclass
class Fisher:
    tensors: dict[str, TensorFisher] = field(default_factory=dict)
    tokens: int = 0  # scored positions T
    seconds: float = 0.0
    shared: list[list[str]] = field(default_factory=list)  # weight names of Linears fed the same input


class _Acc:
    """Running sums for one module: G (float64) and X^T X (float32, from calib.stats.gram)."""

    def __init__(self) -> None:
        self.g: torch.Tensor | None = None
        self.xtx: torch.Tensor | None = None
        self.rows = 0
        self.input_ptr: int | None = None  # the first input's storage: Linears sharing it are fused by runtimes

    def add_input(self, x: torch.Tensor, grams: dict[tuple, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """X^T X of this input, computed once per input tensor (``grams``: this window's, shared by the
        Linears that read the same input), in torch's threads (numpy's BLAS would fight them here)."""
        if self.input_ptr is None:
            self.input_ptr = x.data_ptr()
        key = (x.data_ptr(), tuple(x.shape))
        if key not in grams:  # the entry holds x: its memory cannot be reused by a later input of the window
            f = x.detach().reshape(-1, x.shape[-1]).float()
            grams[key] = (x, (f.T @ f).double())
        xtx = grams[key][1]
        self.xtx = xtx if self.xtx is None else self.xtx + xtx
        self.rows += x.numel() // x.shape[-1]

    def add_grad(self, g: torch.Tensor) -> None:
        e = g.detach().reshape(-1, g.shape[-1]).float().pow(2).sum(0).double()  # per window, float64 across windows
        self.g = e if self.g is None else self.g + e


def _targets(model: nn.Module) -> tuple[dict[str, tuple[str, nn.Module]], bool]:
    """Weight name -> (module name, Linear) for every Linear of the model (a head tied to the input
    embedding left out: its statistics join the embedding's), and whether the head is tied."""
    out = {f"{name}.weight": (name, mod) for name, mod in model.named_modules() if isinstance(mod, nn.Linear)}
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    tied = head is not None and emb is not None and head.weight is emb.weight
    if tied:
        out = {k: v for k, v in out.items() if v[1] is not head}
    return out, tied


@contextmanager
def _hooks(model: nn.Module, linears: dict[str, nn.Module], accs: dict[str, _Acc],
           emb_energy: torch.Tensor) -> Iterator[None]:
    """Forward hooks: each Linear adds its input to C and a gradient hook on its output to G; the input
    embedding's output becomes a leaf that requires grad, so the backward pass reaches every layer
    without weight gradients, and its gradient is added to the looked-up rows' energy."""
    handles = []
    grams: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # this window's (input, X^T X) by input tensor

    def linear_hook(name: str):
        def hook(_m: nn.Module, args: tuple, out: torch.Tensor) -> None:
            accs[name].add_input(args[0], grams)
            if out.requires_grad:
                out.register_hook(lambda g: accs[name].add_grad(g))
        return hook

    def emb_hook(_m: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        grams.clear()  # a new window: its inputs are new tensors (a freed one's address may be reused)
        ids = args[0].reshape(-1)
        leaf = out.detach().requires_grad_(True)
        def add(g: torch.Tensor) -> None:  # a hook that returned the sum would replace the gradient
            emb_energy.index_add_(0, ids, g.detach().reshape(len(ids), -1).double().pow(2))

        leaf.register_hook(add)
        return leaf

    try:
        for name, mod in linears.items():
            handles.append(mod.register_forward_hook(linear_hook(name)))
        handles.append(model.get_input_embeddings().register_forward_hook(emb_hook))
        yield
    finally:
        for h in handles:
            h.remove()
        grams.clear()


def collect_fisher(model: nn.Module, windows: torch.Tensor, seed: int = 0) -> Fisher:
    """Factored Fisher statistics of a causal LM over ``windows`` (n, L) token ids: one forward and one
    backward pass per window (no weight gradients), labels sampled from the model's own predictions at
    the positions the KL metric scores (0..L-2)."""
    if not hasattr(model, "get_output_embeddings") or model.get_output_embeddings() is None:
        raise InputError("--budget needs a causal language model (its sensitivity is the KL of its next-token "
                         "predictions); this model has no output head")
    t0 = time.perf_counter()
    targets, tied = _targets(model)
    linears = {base: mod for base, mod in targets.values()}
    head = model.get_output_embeddings()
    if tied:
        linears["<head>"] = head
    accs = {name: _Acc() for name in linears}
    emb = model.get_input_embeddings()
    emb_energy = torch.zeros(emb.weight.shape, dtype=torch.float64)
    grads = [p.requires_grad for p in model.parameters()]
    gen = torch.Generator().manual_seed(seed)
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        with _hooks(model, linears, accs, emb_energy), torch.enable_grad():
            for i in track(range(len(windows)), f"sensitivity: {len(windows)} x {windows.shape[1]} tokens"):
                logp = F.log_softmax(model(input_ids=windows[i : i + 1]).logits[0, :-1].float(), dim=-1)
                F.nll_loss(logp, _sample(logp.detach(), gen), reduction="sum").backward()
    finally:
        for p, r in zip(model.parameters(), grads, strict=True):
            p.requires_grad_(r)
    emb_name = next(n for n, p in model.named_parameters() if p is emb.weight)  # the first name of a shared weight
    return _assemble(targets, emb_name, tied, accs, emb_energy, windows, time.perf_counter() - t0)


def _sample(logp: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One label per position drawn from exp(logp) (n, vocab) by inverting its running sum: a tenth of
    the time torch.multinomial takes on a 50k vocabulary (it draws an exponential per entry)."""
    cdf = logp.exp().cumsum(-1)
    u = torch.rand(len(cdf), 1, generator=gen, dtype=cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, u)[:, 0].clamp_(max=cdf.shape[1] - 1)


def _assemble(targets: dict[str, tuple[str, nn.Module]], emb_name: str, tied: bool, accs: dict[str, _Acc],
              emb_energy: torch.Tensor, windows: torch.Tensor, seconds: float) -> Fisher:
    fisher = Fisher(tokens=int(windows.shape[0] * (windows.shape[1] - 1)), seconds=seconds)
    for g, (base, _mod) in targets.items():
        a = accs[base]
        if a.g is None or a.xtx is None:
            continue  # never reached by the forward pass (an unused layer): no sensitivity to report
        fisher.tensors[g] = TensorFisher(a.g.numpy(), (a.xtx / max(a.rows, 1)).numpy())
    groups: dict[int, list[str]] = {}
    for g, (base, _mod) in targets.items():
        if accs[base].input_ptr is not None:
            groups.setdefault(accs[base].input_ptr, []).append(g)
    fisher.shared = [v for v in groups.values() if len(v) > 1]
    e = fisher.tensors.setdefault(emb_name, TensorFisher())
    e.emb = emb_energy.numpy()
    if tied:
        a = accs["<head>"]
        e.g, e.cov = a.g.numpy(), (a.xtx / max(a.rows, 1)).numpy()
    return fisher
