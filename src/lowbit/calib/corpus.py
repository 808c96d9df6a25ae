"""Corpora: lists of documents, read lazily.

Accepted data arguments::

    pydoc:calib | pydoc:eval     English prose from pydoc_data.topics (split by document, ~50/50)
    stdlib:calib | stdlib:eval   the standard library's own .py files (split by a hash of the path)
    FILE.txt / FILE.md / ...     one document
    FILE.jsonl                   one document per line, from its "text" field
    DIR                          every text file below it (sorted), .jsonl files as above

The built-in splits never share a document, so calibrating on ``:calib`` and evaluating on
``:eval`` never tests on calibration text.
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lowbit.errors import CalibrationError

Doc = Callable[[], str]
BUILTIN_CORPORA = ("pydoc", "stdlib")
SPLITS = ("calib", "eval")


@dataclass
class Corpus:
    """A named list of lazily read documents."""

    name: str
    docs: list[Doc]

    def __len__(self) -> int:
        return len(self.docs)


def _const(text: str) -> Doc:
    return lambda: text


def _pydoc(split: str | None) -> Corpus:
    from pydoc_data.topics import topics

    docs = [topics[k] for k in sorted(topics)]
    total = sum(len(d) for d in docs)
    acc, cut = 0, len(docs)
    for i, d in enumerate(docs):
        acc += len(d)
        if acc >= total / 2:
            cut = i + 1
            break
    chosen = {None: docs, "calib": docs[:cut], "eval": docs[cut:]}[split]
    return Corpus(f"pydoc:{split}" if split else "pydoc", [_const(d) for d in chosen])


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and "dist-packages" not in p.parts)


def _stdlib(split: str | None) -> Corpus:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = _stdlib_files()
    if split is not None:
        want = 0 if split == "calib" else 1
        files = [p for p in files if hashlib.sha1(str(p.relative_to(root)).encode()).digest()[0] % 2 == want]
    return Corpus(f"stdlib:{split}" if split else "stdlib", [_reader(p) for p in files])


def _reader(path: Path) -> Doc:
    def read() -> str:
        try:
            return path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            return ""

    return read


def _jsonl(path: Path) -> list[Doc]:
    docs: list[Doc] = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise CalibrationError(f"{path}:{i}: not valid JSON ({e})") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise CalibrationError(f'{path}:{i}: each JSONL line needs a string "text" field')
            docs.append(_const(row["text"]))
    return docs


def _file_docs(path: Path) -> list[Doc]:
    if path.suffix == ".jsonl":
        return _jsonl(path)
    return [_reader(path)]


def load_corpus(spec: str) -> Corpus:
    """Resolve a data argument (see module doc) to a Corpus; empty data is a CalibrationError."""
    name, _, split = spec.partition(":")
    if name in BUILTIN_CORPORA and not Path(spec).exists():
        if split and split not in SPLITS:
            raise CalibrationError(f"unknown split {split!r} of {name}; use {name}:calib or {name}:eval")
        corpus = _pydoc(split or None) if name == "pydoc" else _stdlib(split or None)
        return corpus
    path = Path(spec).expanduser()
    if not path.exists():
        raise CalibrationError(
            f"data {spec!r} not found: give a text file, a folder, a .jsonl with a 'text' field, "
            "or a built-in corpus (pydoc:calib, pydoc:eval, stdlib:calib, stdlib:eval)"
        )
    if path.is_dir():
        docs = [d for p in sorted(path.rglob("*")) if p.is_file() and not p.name.startswith(".") for d in _file_docs(p)]
    else:
        docs = _file_docs(path)
    if not docs or not any(d().strip() for d in docs):
        raise CalibrationError(f"data {spec!r} holds no text (empty file or folder)")
    return Corpus(str(path), docs)
