"""The one check every writer and every API verb that writes runs first: an output that exists is
replaced only when the caller asks (``overwrite=True``). The API verbs run it before loading a model,
so ``lowbit quantize --out taken`` fails at once; the writers run it again just before writing."""

from __future__ import annotations

from pathlib import Path

from lowbit.errors import ExportError


def check_output(path: str | Path, overwrite: bool) -> Path:
    """``path`` as a Path; an ExportError if it exists and ``overwrite`` is false.

    >>> check_output("/tmp", overwrite=False)  # doctest: +SKIP
    ExportError: /tmp already exists; choose another --out or pass --overwrite
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise ExportError(f"{path} already exists; choose another --out or pass --overwrite")
    return path
