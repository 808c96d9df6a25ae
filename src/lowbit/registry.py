"""Name -> entry tables with "did you mean ..." errors.

Methods, storage formats and metrics register themselves here with a decorator, so adding one is
one file plus one ``@register`` line.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from lowbit.errors import InputError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of entries of one kind (``what`` is used in error messages)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(entry: T) -> T:
            self.add(name, entry)
            return entry

        return deco

    def add(self, name: str, entry: T) -> None:
        key = name.lower()
        if key in self._entries:
            raise ValueError(f"{self.what} {name!r} is registered twice")
        self._entries[key] = entry

    def get(self, name: str) -> T:
        key = name.lower()
        if key in self._entries:
            return self._entries[key]
        close = difflib.get_close_matches(key, list(self._entries), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        known = ", ".join(sorted(self._entries))
        raise InputError(f"unknown {self.what} {name!r} (known: {known}){hint}")

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def names(self) -> list[str]:
        return sorted(self._entries)
