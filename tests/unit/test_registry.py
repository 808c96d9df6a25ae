"""registry.py: name tables with case-insensitive lookup and "did you mean" errors."""

from __future__ import annotations

import pytest

from lowbit.errors import InputError
from lowbit.formats import FORMATS
from lowbit.methods import METHODS
from lowbit.registry import Registry


def test_add_get_case_insensitive() -> None:
    r: Registry[int] = Registry("widget")
    r.add("Alpha", 1)
    assert r.get("alpha") == 1 and r.get("ALPHA") == 1
    assert "alpha" in r and "Alpha" in r and "beta" not in r and 3 not in r


def test_register_decorator_returns_the_entry() -> None:
    r: Registry[object] = Registry("thing")

    @r.register("fn")
    def fn() -> int:
        return 7

    assert r.get("fn") is fn and fn() == 7


def test_duplicate_name_is_rejected() -> None:
    r: Registry[int] = Registry("widget")
    r.add("a", 1)
    with pytest.raises(ValueError, match="registered twice"):
        r.add("A", 2)
    assert r.get("a") == 1


def test_unknown_name_lists_known_and_suggests() -> None:
    r: Registry[int] = Registry("widget")
    for n in ("gptq", "awq", "rtn"):
        r.add(n, 0)
    with pytest.raises(InputError) as ei:
        r.get("gtpq")
    msg = str(ei.value)
    assert "unknown widget 'gtpq'" in msg and "known: awq, gptq, rtn" in msg and "did you mean 'gptq'" in msg
    with pytest.raises(InputError) as ei:
        r.get("zzzzzz")
    assert "did you mean" not in str(ei.value)


def test_names_and_iteration_sorted() -> None:
    r: Registry[int] = Registry("widget")
    for n in ("b", "C", "a"):
        r.add(n, 0)
    assert r.names() == ["a", "b", "c"] and list(r) == ["a", "b", "c"]


def test_builtin_registries() -> None:
    assert "rtn" in METHODS.names()
    assert "intpack" in FORMATS.names()
    with pytest.raises(InputError, match="unknown method"):
        METHODS.get("nope")
    with pytest.raises(InputError, match="unknown storage format"):
        FORMATS.get("nope")
