"""One module selector for every architecture: ``targets`` / ``ignore`` regexes over module names.

No per-model code: a module is quantized when it is an ``nn.Linear`` (or, with ``embeddings=True``,
an ``nn.Embedding``), its qualified name matches a ``targets`` pattern (``re.search``), and matches no
``ignore`` pattern. By default the output head and the embeddings stay in full precision; an explicit
``ignore`` list replaces the default one (``[]`` quantizes the head too).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

DEFAULT_TARGETS: tuple[str, ...] = (r".*",)
DEFAULT_IGNORE: tuple[str, ...] = (r"(^|\.)lm_head$", r"(^|\.)(embed_out|output|classifier|score)$")


def select_modules(
    model: nn.Module,
    targets: Sequence[str] | None = None,
    ignore: Sequence[str] | None = None,
    embeddings: bool = False,
) -> tuple[dict[str, nn.Module], list[str]]:
    """Like :func:`select_linears`, and with ``embeddings=True`` ``nn.Embedding`` modules too.

    Embeddings left out (the default) are listed among the skipped names, so reports show them.
    """
    tpat = [re.compile(p) for p in (targets or DEFAULT_TARGETS)]
    ipat = [re.compile(p) for p in (DEFAULT_IGNORE if ignore is None else ignore)]
    selected: dict[str, nn.Module] = {}
    skipped: list[str] = []
    for name, mod in model.named_modules():
        if not isinstance(mod, (nn.Linear, nn.Embedding)):
            continue
        if isinstance(mod, nn.Embedding) and not embeddings:
            skipped.append(name)
        elif any(p.search(name) for p in tpat) and not any(p.search(name) for p in ipat):
            selected[name] = mod
        else:
            skipped.append(name)
    return selected, skipped


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
    selected, skipped = select_modules(model, targets, ignore)
    return selected, [n for n in skipped if isinstance(model.get_submodule(n), nn.Linear)]  # type: ignore[return-value]
