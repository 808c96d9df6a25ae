"""One module selector for every architecture: ``targets`` / ``ignore`` regexes over module names.

No per-model code: a module is quantized when it is an ``nn.Linear``, its qualified name matches a
``targets`` pattern (``re.search``), and matches no ``ignore`` pattern. By default the output head
stays in full precision (embeddings are ``nn.Embedding``, never selected here).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

DEFAULT_TARGETS: tuple[str, ...] = (r".*",)
DEFAULT_IGNORE: tuple[str, ...] = (r"(^|\.)lm_head$", r"(^|\.)(embed_out|output|classifier|score)$")


def select_linears(
    model: nn.Module,
    targets: Sequence[str] | None = None,
    ignore: Sequence[str] | None = None,
) -> tuple[dict[str, nn.Linear], list[str]]:
    """Return (selected {name: Linear}, skipped names) in module order.

    >>> m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> sel, skipped = select_linears(m, ignore=[r"^2$"])
    >>> list(sel), skipped
    (['0'], ['2'])
    """
    tpat = [re.compile(p) for p in (targets or DEFAULT_TARGETS)]
    ipat = [re.compile(p) for p in (DEFAULT_IGNORE if ignore is None else ignore)]
    selected: dict[str, nn.Linear] = {}
    skipped: list[str] = []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        if any(p.search(name) for p in tpat) and not any(p.search(name) for p in ipat):
            selected[name] = mod
        else:
            skipped.append(name)
    return selected, skipped
