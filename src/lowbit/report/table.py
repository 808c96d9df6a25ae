"""Result tables (rich) and atomic JSON output."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from lowbit.metrics.result import EvalResult

COLUMNS: list[tuple[str, str, str]] = [
    # (header, attribute, format)
    ("PPL", "ppl", "{:.3f}"),
    ("KL mean", "kl_mean", "{:.4f}"),
    ("KL 95% CI", "ci95", "ci:kl_mean"),
    ("KL p99", "kl_p99", "{:.3f}"),
    ("top-1", "top1_agreement", "{:.3f}"),
    ("cosine", "cosine_mean", "{:.5f}"),
    ("cosine 95% CI", "ci95", "ci:cosine_mean"),
    ("bpw", "bits_per_weight", "{:.3f}"),
    ("size MB", "size_bytes", "{:.1f}"),
    ("prefill tok/s", "prefill_tok_s", "{:.0f}"),
    ("decode tok/s", "decode_tok_s", "{:.1f}"),
]


def has_value(v: Any, fmt: str) -> bool:
    """Whether a cell has something to show: a value, and for an interval column (``ci:STAT``) that stat's."""
    return v is not None and (not fmt.startswith("ci:") or fmt[3:] in v)


def interval(v: dict[str, list[float]], fmt: str) -> str:
    """The ``ci:STAT`` cell of a ``ci95`` dict: "lo–hi", or "–"."""
    lo_hi = v.get(fmt[3:])
    return "–" if lo_hi is None else f"{lo_hi[0]:.4f}–{lo_hi[1]:.4f}"


def _fmt(attr: str, fmt: str, v: Any) -> str:
    if v is None:
        return "–"
    if fmt.startswith("ci:"):
        return interval(v, fmt)
    if attr == "size_bytes":
        v = v / 1e6
    return fmt.format(v)


def results_table(results: Sequence[EvalResult], title: str = "", extra: dict[str, dict[str, str]] | None = None) -> Table:
    """One row per result; columns with no value in any row are left out."""
    cols = [c for c in COLUMNS if any(has_value(getattr(r, c[1]), c[2]) for r in results)]
    extra = extra or {}
    extra_cols = sorted({k for v in extra.values() for k in v})
    table = Table(title=title or None)
    table.add_column("model")
    for h, _, _ in cols:
        table.add_column(h, justify="right")
    for h in extra_cols:
        table.add_column(h, justify="right")
    for r in results:
        row = [r.model] + [_fmt(a, f, getattr(r, a)) for _, a, f in cols]
        row += [extra.get(r.model, {}).get(h, "–") for h in extra_cols]
        table.add_row(*row)
    return table


def write_json(obj: Any, path: str | os.PathLike[str]) -> Path:
    """Write JSON atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
