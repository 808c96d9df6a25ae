"""The budget candidates in the compare report (`compare --budget`): their curve beside llama.cpp's
fixed mixes on the size-quality plot, and each allocation's table (tensor, type, bytes, predicted dKL),
with the checks of its predictions: measured against predicted total KL (additivity), and the proxy's
rank correlation with single-tensor measurements (``--budget-check``)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from lowbit.compare.row import Row


def draw_curves(ax: Any, rows: Sequence[Row], quality: Any) -> bool:
    """Lines through the fixed GGUF mixes and through the budget files, by size; True if drawn."""
    budget = sorted((r for r in rows if r.family == "gguf-budget" and r.size_bytes), key=lambda r: r.size_bytes)
    if not budget:
        return False
    fixed = sorted((r for r in rows if r.family == "gguf" and r.size_bytes), key=lambda r: r.size_bytes)
    for group, style, label in ((fixed, {"color": "tab:orange", "ls": "--"}, "llama.cpp fixed mixes"),
                                (budget, {"color": "tab:green", "ls": "-"}, "lowbit budget allocation")):
        pts = [(r.size_bytes / 1e6, quality(r)) for r in group if quality(r) is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.2, zorder=1, label=label, **style)
    return True


def _by_type(alloc: list[list[Any]]) -> str:
    shares: dict[str, int] = {}
    for _, t, n, _ in alloc:
        shares[t] = shares.get(t, 0) + int(n)
    total = max(sum(shares.values()), 1)
    return ", ".join(f"{t} {n / total:.0%}" for t, n in sorted(shares.items(), key=lambda kv: -kv[1]))


def _intro(r: Row) -> str:
    measured = "" if r.kl_mean is None else f"; measured {r.kl_mean:.4f}"
    if r.kl_mean is not None and r.predicted_kl:
        measured += f" (the additivity the allocation assumes: measured / predicted {r.kl_mean / r.predicted_kl:.2f})"
    return (f"{r.label}: {r.size_bytes / 1e6:.2f} MB, {r.bits_per_weight:.3f} bpw. Predicted KL (sum of the "
            f"tensors' predicted increases) {r.predicted_kl:.4f}{measured}. Bytes by type: {_by_type(r.allocation)}."
            f"{_proxy(r)}")


def _proxy(r: Row) -> str:
    """The proxy check's sentence (``--budget-check``), or why there is none."""
    p = r.proxy
    if not p:
        return " The predictions were not checked against measured KL (--budget-check 0)."
    within = ", ".join(f"{t} {s:.2f}" for t, s in p["within_type"].items())
    return (f" Proxy check: Spearman's rank correlation between predicted and measured dKL is {p['spearman']:.3f} "
            f"over {len(p['pairs'])} (tensor, type) pairs, each quantized alone and measured on calibration windows"
            f"{f' (within one type: {within})' if within else ''}.")


def markdown_sections(rows: Sequence[Row]) -> list[str]:
    parts: list[str] = []
    for r in rows:
        if not r.allocation:
            continue
        parts += [f"## Allocation of `{r.id}`", "", _intro(r), "", "| tensor | type | bytes | predicted dKL |",
                  "|---|---|---:|---:|", *[f"| {n} | {t} | {int(b):,} | {d:.2e} |" for n, t, b, d in r.allocation], ""]
    return parts


def html_sections(rows: Sequence[Row]) -> str:
    out = []
    for r in rows:
        if not r.allocation:
            continue
        body = "".join(f"<tr><td>{html.escape(n)}</td><td>{html.escape(t)}</td><td>{int(b):,}</td><td>{d:.2e}</td></tr>"
                       for n, t, b, d in r.allocation)
        out.append(f"<h2>Allocation of {html.escape(r.id)}</h2><p>{html.escape(_intro(r))}</p><details><summary>"
                   f"{len(r.allocation)} tensors</summary><table><thead><tr><th>tensor</th><th>type</th><th>bytes</th>"
                   f"<th>predicted dKL</th></tr></thead><tbody>{body}</tbody></table></details>")
    return "".join(out)
