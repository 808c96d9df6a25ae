"""`lowbit compare`'s outputs: results.json, report.md (with the plots as PNG files beside it) and a
self-contained report.html (the plots embedded), all written atomically into the report directory.
Everything is drawn from the run's :class:`Results`; ``results.json`` is its ``to_dict()``."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lowbit.compare.calib_check import CalibCheck
from lowbit.compare.results import Results
from lowbit.compare.row import Row
from lowbit.report.table import has_value, interval
from lowbit.writers.guard import atomic_write

COLUMNS = [  # (header, Row attribute, format)
    ("candidate", "id", "{}"), ("family", "family", "{}"), ("bits", "bits", "{}"), ("bpw", "bits_per_weight", "{:.2f}"),
    ("MB", "size_bytes", "mb"), ("PPL", "ppl", "{:.3f}"), ("KL", "kl_mean", "{:.4f}"),
    ("KL 95% CI", "ci95", "ci:kl_mean"), ("tokens", "n_tokens", "{}"), ("top-1", "top1_agreement", "{:.3f}"),
    ("cosine", "cosine_mean", "{:.4f}"), ("cosine 95% CI", "ci95", "ci:cosine_mean"), ("acc", "accuracy", "{:.3f}"), ("flips", "flips", "{}"),
    ("quantize s", "calib_seconds", "{:.1f}"), ("prefill x fp32", "speed_ratio_vs_fp32", "{:.2f}"),
    ("decode x fp32", "decode_ratio_vs_fp32", "{:.2f}"), ("Pareto", "pareto", "yn"), ("meets bar", "meets_bar", "yn"),
]


def _cell(row: Row, key: str, fmt: str) -> str:
    v = getattr(row, key)
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if fmt == "mb":
        return f"{v / 1e6:.1f}"
    if fmt == "yn":
        return "yes" if v else "no"
    if fmt.startswith("ci:"):
        return interval(v, fmt)
    return fmt.format(v)


def _columns(rows: Sequence[Row]) -> list[tuple[str, str, str]]:
    return [c for c in COLUMNS if any(has_value(getattr(r, c[1]), c[2]) for r in rows)]


def size_quality_png(res: Results) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = res.candidates
    lm = any(r.kl_mean is not None for r in rows)
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    labels: list[tuple[float, float, str]] = []
    rec = res.recommendation.id
    for r in rows:
        q = r.kl_mean if lm else (1 - r.cosine_mean if r.cosine_mean is not None else None)
        if q is None or r.size_bytes is None:
            continue
        style = {"marker": "*" if r.id == rec else "o", "s": 180 if r.id == rec else 50,
                 "c": "tab:red" if r.pareto else "tab:gray", "edgecolors": "black", "linewidths": 0.5, "zorder": 3}
        ax.scatter(r.size_bytes / 1e6, max(q, 1e-6), **style)
        ci = (r.ci95 or {}).get("kl_mean") if lm else None
        if ci is not None:  # the 95% interval of the mean KL (block bootstrap over the scored tokens)
            ax.errorbar(r.size_bytes / 1e6, max(q, 1e-6), yerr=[[max(q - ci[0], 0)], [max(ci[1] - q, 0)]],
                        fmt="none", ecolor="black", elinewidth=0.8, capsize=2, zorder=2)
        labels.append((r.size_bytes / 1e6, max(q, 1e-6), r.id))
    front = sorted((r for r in rows if r.pareto), key=lambda r: r.size_bytes)
    if len(front) > 1:
        ax.plot([r.size_bytes / 1e6 for r in front],
                [max(r.kl_mean if lm else 1 - r.cosine_mean, 1e-6) for r in front], color="tab:red", lw=1, zorder=2)
    from lowbit.compare.budget_report import draw_curves

    curves = draw_curves(ax, rows, lambda r: None if r.kl_mean is None else max(r.kl_mean, 1e-6)) if lm else False
    if lm and res.bar.metric == "kl":
        ax.axhline(res.bar.value, color="tab:blue", ls="--", lw=1, label=str(res.bar))
    if curves or (lm and res.bar.metric == "kl"):
        ax.legend(loc="upper right", fontsize=8)
    ax.set_yscale("log")
    _place_labels(ax, labels)
    ax.set_xlabel("size of the whole model (MB, every tensor as stored)")
    ax.set_ylabel("KL to the reference (log)" if lm else "1 - cosine to the reference (log)")
    ax.set_title(f"{Path(res.model).name}: size vs quality (red: Pareto front, star: recommended)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    return _png(fig)


def layer_grid(names: Sequence[str]) -> tuple[list[str], list[int], dict[str, tuple[int, int]]]:
    """Layer names -> (layer types in model order: q_proj, k_proj, ... down_proj; block indices; name ->
    (type row, block column)). Layers outside the repeated blocks (a head) are left out."""
    from lowbit.loaders.validate import LAYER_INDEX

    types: list[str] = []
    blocks: list[int] = []
    cell: dict[str, tuple[int, int]] = {}
    for n in names:
        m = LAYER_INDEX.search(n)
        if m is None:
            continue
        kind, block = n[m.end():], int(m.group(1))
        if kind not in types:
            types.append(kind)
        if block not in blocks:
            blocks.append(block)
        cell[n] = (types.index(kind), block)
    blocks.sort()
    return types, blocks, {n: (t, blocks.index(b)) for n, (t, b) in cell.items()}


_OFFSETS = [(5, 4), (5, -12), (-6, 4), (-6, -12), (5, 14), (5, -22), (-6, 14), (-6, -22), (5, 24), (5, -32),
            (-6, 24), (-6, -32)]  # points from the marker, tried in order


def _place_labels(ax: Any, labels: list[tuple[float, float, str]], size: float = 7.5) -> None:
    """Each label beside its point where it overlaps no label placed before it (nor the markers), the
    least-overlapping spot when none is free; a thin line joins a label moved away from its point."""
    ax.autoscale_view()
    to_px = ax.transData.transform
    dpi = ax.figure.dpi
    placed: list[tuple[float, float, float, float]] = [
        (px - 4, py - 4, px + 4, py + 4) for px, py in (to_px((x, y)) for x, y, _ in labels)]

    def overlap(b: tuple[float, float, float, float]) -> float:
        return sum(max(0.0, min(b[2], o[2]) - max(b[0], o[0])) * max(0.0, min(b[3], o[3]) - max(b[1], o[1]))
                   for o in placed)

    for x, y, text in sorted(labels, key=lambda t: (t[0], t[1])):
        px, py = to_px((x, y))
        w, h = 0.6 * size * len(text) * dpi / 72, size * dpi / 72
        best = None
        for dx, dy in _OFFSETS:
            x0 = px + dx * dpi / 72 - (w if dx < 0 else 0)
            box = (x0, py + dy * dpi / 72, x0 + w, py + dy * dpi / 72 + h)
            cost = overlap(box)
            if best is None or cost < best[0]:
                best = (cost, (dx, dy), box)
            if cost == 0:
                break
        _, (dx, dy), box = best
        placed.append(box)
        far = abs(dy) > 12
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=size,
                    ha="right" if dx < 0 else "left",
                    arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "0.4"} if far else None)


def _short(kind: str) -> str:
    """q_proj for self_attn.q_proj; attention.output.dense keeps its last two parts."""
    parts = kind.split(".")
    return ".".join(parts[-2:]) if parts[-1] == "dense" else parts[-1]


def layer_error_png(res: Results) -> bytes:
    """Per-layer output error as heatmaps, one per candidate: layer type (rows) by block (columns), one
    shared log color scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import LogNorm

    rows = [r for r in res.candidates if r.layer_errors]
    names = list(dict.fromkeys(n for r in rows for n in r.layer_errors))
    types, blocks, cell = layer_grid(names)
    if not rows or not cell:
        fig, ax = plt.subplots(figsize=(6, 1.5), dpi=110)
        ax.axis("off")
        ax.text(0.5, 0.5, "no per-layer errors", ha="center", va="center")
        return _png(fig)
    vals = [v for r in rows for n, v in r.layer_errors.items() if n in cell and v > 0]
    norm = LogNorm(vmin=max(min(vals), 1e-6), vmax=max(max(vals), 2e-6)) if vals else None
    ncol = 2 if len(rows) > 3 else 1
    nrow = -(-len(rows) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.2 * ncol, 0.32 * len(types) * nrow + 0.8 * nrow), dpi=110,
                             squeeze=False)
    im = None
    for ax, r in zip(axes.flat, rows):
        grid = np.full((len(types), len(blocks)), np.nan)
        for n, v in r.layer_errors.items():
            if n in cell:
                grid[cell[n]] = max(v, 1e-6)
        im = ax.imshow(grid, aspect="auto", norm=norm, cmap="viridis", interpolation="nearest")
        ax.set_title(r.id, fontsize=8)
        ax.set_yticks(range(len(types)), [_short(t) for t in types], fontsize=6)
        ax.set_xticks(range(0, len(blocks), max(1, len(blocks) // 8)),
                      [str(blocks[i]) for i in range(0, len(blocks), max(1, len(blocks) // 8))], fontsize=6)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="output error ||y_q - y|| / ||y||")
    fig.suptitle("per-layer output error (layer type by block; the candidate's own forward pass)", fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def markdown_table(rows: Sequence[Row | dict[str, Any]]) -> str:
    """The rows as a markdown table, with only the columns some row fills; rows may be given as
    :class:`Row` or as their ``to_dict()`` (what :func:`lowbit.compare.compare` returns)."""
    rows = [r if isinstance(r, Row) else Row.from_dict(r) for r in rows]
    cols = _columns(rows)
    lines = ["| " + " | ".join(c[0] for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r, k, f) for _, k, f in cols) + " |" for r in rows]
    return "\n".join(lines)


def _summary(res: Results) -> list[str]:
    ref, s = res.reference, res.settings
    lines = [f"Model: `{res.model}` ({res.kind}). Eval: `{s.eval}`"
             + (f" (KL/PPL on `{s.eval_text}`)" if res.task else "")
             + f", {s.windows} x {s.seq_len} tokens" + (f" (window seed {s.seed})" if s.protocol == "windows" else "")
             + f". Calibration: `{s.calib}` ({s.calib_samples} x {s.seq_len} tokens)."]
    if res.kind == "causal-lm":
        from lowbit.metrics.result import PROTOCOLS

        lines.append(f"Protocol (`--protocol {s.protocol}`): {PROTOCOLS[s.protocol]}.")
    if ref.ppl is not None:
        lines.append(f"Reference (float32): PPL {ref.ppl:.3f}" + (f", accuracy {ref.accuracy:.3f}" if ref.accuracy is not None else "")
                     + (f", prefill {ref.prefill_tok_s:.0f} tok/s, decode {ref.decode_tok_s:.1f} tok/s" if ref.prefill_tok_s else "") + ".")
    if res.until_decided is not None:
        u = res.until_decided
        steps = "; ".join(f"{r['windows']} windows, open: {', '.join(r['open']) or 'none'}" for r in u.rounds)
        lines.append(f"`--until-decided {u.budget_seconds:g}` ({u.seconds:.0f} s, {u.why}): {steps}. Candidates "
                     "never open keep their first sample (their token count is in the table).")
    lines.append(f"Machine: {res.machine.platform}, {res.machine.threads} threads.")
    from lowbit.compare.settings import EMBEDDINGS
    from lowbit.metrics.stats import BLOCK

    lines.append(f"Embeddings and head (`--embeddings {s.embeddings}`): {EMBEDDINGS[s.embeddings]}. Sizes (MB) are the "
                 f"whole model as stored; the recommendation walks them, not nominal bits.")
    lines.append(f"Intervals: 95%, a bootstrap over blocks of {BLOCK} scored tokens; two candidates are "
                 f"indistinguishable when the interval of their paired difference (same tokens) includes 0. Speed: "
                 f"interleaved with full precision, median of the pairs' ratios.")
    return lines


def markdown(res: Results) -> str:
    rec = res.recommendation
    parts = ["# lowbit compare", "", *_summary(res), "",
             f"## Recommendation: `{rec.id}`" + ("" if rec.met_bar else " (the bar is not met)"), "",
             *[f"- {r}" for r in rec.reasons], ""]
    if res.axes:
        parts += [f"On the guide's five axes (hardware for `{res.settings.target}`):", "",
                  *[f"- **{k}**: {v}" for k, v in res.axes.items()], ""]
    if res.warnings:
        parts += ["## Warnings", "", *[f"- {w}" for w in res.warnings], ""]
    parts += ["## Candidates", "", markdown_table([res.reference, *res.candidates]), "",
              ("KL: mean KL(reference || candidate) per token; bpw: bits per quantized weight (GGUF: every quantized 2-D "
              "tensor; embeddings and head included where quantized); tokens: scored tokens; quantize s: quantization including calibration; prefill/decode x fp32: speed on "
              "this machine as a ratio to full precision (below 1: slower than not quantizing at all, the guide's "
              "portability trap); flips: answers that changed from the reference's."), "",
              "![size vs quality](size_quality.png)", "", "![per-layer error](layer_error.png)", ""]
    axes_rows = [r for r in res.candidates if r.axes]
    if axes_rows:
        keys = list(axes_rows[0].axes)
        parts += [f"## The five axes (hardware for `{res.settings.target}`)", "",
                  "| candidate | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys),
                  *["| " + r.id + " | " + " | ".join(str(r.axes.get(k, "")).replace("|", "/") for k in keys) + " |"
                    for r in axes_rows], ""]
    from lowbit.compare.budget_report import markdown_sections

    parts += markdown_sections(res.candidates)
    cc = res.calib_check
    if isinstance(cc, CalibCheck):
        verdict = "beats" if cc.user_calib_better else "does NOT beat"
        parts += ["## Calibration-set check", "",
                  (f"{cc.candidate} calibrated on `{cc.user_calib}` {verdict} the same method calibrated on "
                  f"`{cc.generic_calib}`: {cc.metric} {cc.user_value:.4f} vs {cc.generic_value:.4f} on the eval set. "
                  f"Token distance to the eval data (Jensen-Shannon): yours {cc.distance_user_calib_to_eval:.2f}, "
                  f"generic {cc.distance_generic_to_eval:.2f}."), ""]
    return "\n".join(parts)


def html_report(res: Results, plots: dict[str, bytes]) -> str:
    rec = res.recommendation
    rows = [res.reference, *res.candidates]
    cols = _columns(rows)
    head = "".join(f"<th>{html.escape(c[0])}</th>" for c in cols)
    body = "".join("<tr" + (' class="rec"' if r.id == rec.id else "") + ">"
                   + "".join(f"<td>{html.escape(_cell(r, k, f))}</td>" for _, k, f in cols) + "</tr>" for r in rows)
    imgs = "".join(f'<figure><img alt="{html.escape(n)}" src="data:image/png;base64,{base64.b64encode(b).decode()}">'
                   f"<figcaption>{html.escape(n)}</figcaption></figure>" for n, b in plots.items())
    warn = "".join(f"<li>{html.escape(w)}</li>" for w in res.warnings)
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in rec.reasons)
    summary = "".join(f"<p>{html.escape(x)}</p>" for x in _summary(res))
    axes = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in (res.axes or {}).items())
    name = html.escape(Path(res.model).name)
    from lowbit.compare.budget_report import html_sections

    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lowbit compare: {name}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }}
table {{ border-collapse: collapse; font-size: 13px; }} th, td {{ border: 1px solid #ccc; padding: 3px 7px; text-align: right; }}
th {{ background: #f3f3f3; }} td:first-child, td:nth-child(2) {{ text-align: left; }} tr.rec {{ background: #fff3c4; font-weight: 600; }}
figure {{ display: inline-block; margin: 1em 1em 0 0; }} img {{ max-width: 100%; border: 1px solid #ddd; }}
.warn li {{ color: #a33; }}
</style></head><body>
<h1>lowbit compare: {name}</h1>
{summary}
<h2>Recommendation: {html.escape(str(rec.id))}{'' if rec.met_bar else ' (the bar is not met)'}</h2>
<ul>{reasons}</ul>
{f'<p>On the guide&#39;s five axes (hardware for {html.escape(res.settings.target)}):</p><ul>{axes}</ul>' if axes else ''}
{f'<h2>Warnings</h2><ul class="warn">{warn}</ul>' if warn else ''}
<h2>Candidates</h2>
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
{imgs}
{_html_axes_table(res)}
{html_sections(res.candidates)}
{_html_calib_check(res)}
</body></html>
"""


def _html_axes_table(res: Results) -> str:
    axes_rows = [r for r in res.candidates if r.axes]
    if not axes_rows:
        return ""
    keys = list(axes_rows[0].axes)
    return ("<h2>The five axes</h2><table><thead><tr><th>candidate</th>"
            + "".join(f"<th>{html.escape(k)}</th>" for k in keys) + "</tr></thead><tbody>"
            + "".join("<tr><td>" + html.escape(r.id) + "</td>"
                      + "".join(f'<td style="text-align:left">{html.escape(str(r.axes.get(k, "")))}</td>' for k in keys)
                      + "</tr>" for r in axes_rows) + "</tbody></table>")


def _html_calib_check(res: Results) -> str:
    cc = res.calib_check
    if not isinstance(cc, CalibCheck):
        return ""
    return (f"<h2>Calibration-set check</h2><p>{html.escape(cc.candidate)} calibrated on {html.escape(cc.user_calib)}: "
            f"{cc.metric} {cc.user_value:.4f}; on {html.escape(cc.generic_calib)}: {cc.generic_value:.4f} "
            f"({'yours is better' if cc.user_calib_better else 'yours is NOT better'}).</p>")


def write_report(res: Results, report_dir: Path) -> None:
    report_dir.mkdir(parents=True, exist_ok=True)
    plots = {"size vs quality": size_quality_png(res), "per-layer weight error": layer_error_png(res)}
    atomic_write(report_dir / "size_quality.png", plots["size vs quality"])
    atomic_write(report_dir / "layer_error.png", plots["per-layer weight error"])
    atomic_write(report_dir / "results.json", json.dumps(res.to_dict(), indent=1, default=str))
    atomic_write(report_dir / "report.md", markdown(res))
    atomic_write(report_dir / "report.html", html_report(res, plots))
