"""report/table.py, progress.py, demo._reading and the top-level exports."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

import lowbit
from lowbit.metrics.result import EvalResult, Protocol
from lowbit.report import results_table, write_json


def render(table) -> str:
    c = Console(width=200, record=True)
    c.print(table)
    return c.export_text()


def test_results_table_keeps_only_filled_columns() -> None:
    a = EvalResult("ref", "causal-lm", None, ppl=12.3456, size_bytes=4_000_000)
    b = EvalResult("q4", "causal-lm", None, ppl=13.0, kl_mean=0.01234, size_bytes=1_000_000)
    text = render(results_table([a, b], title="t", extra={"q4": {"quantize s": "1.5"}}))
    assert "PPL" in text and "KL mean" in text and "size MB" in text and "quantize s" in text
    assert "cosine" not in text and "decode" not in text
    assert "12.346" in text and "0.0123" in text and "4.0" in text and "1.5" in text
    assert "–" in text  # missing values (ref has no KL, no "quantize s")


def test_write_json_atomic(tmp_path) -> None:
    p = write_json({"a": 1, "b": [1.5, None]}, tmp_path / "sub" / "r.json")
    assert json.loads(p.read_text()) == {"a": 1, "b": [1.5, None]}
    assert [x.name for x in p.parent.iterdir()] == ["r.json"]


def test_write_json_failure_leaves_nothing(tmp_path, monkeypatch) -> None:
    def boom(*a, **kw):
        raise OSError("disk full")

    monkeypatch.setattr(json, "dump", boom)
    with pytest.raises(OSError):
        write_json({"a": 1}, tmp_path / "r.json")
    assert list(tmp_path.iterdir()) == []


def test_eval_result_protocol_dict() -> None:
    from lowbit.metrics.result import PROTOCOLS

    d = EvalResult("m", "causal-lm", Protocol("pydoc:eval", 4, 512, 0)).to_dict()
    assert d["protocol"] == {"data": "pydoc:eval", "windows": 4, "seq_len": 512, "seed": 0, "stride": 512,
                             "counted": "tokens 2..seq_len of each window", "name": "windows",
                             "description": PROTOCOLS["windows"]}


@pytest.mark.parametrize("flag, shown", [("0", False), ("false", False), ("1", True)])
def test_progress_flag_and_items(monkeypatch, flag: str, shown: bool) -> None:
    from lowbit import progress

    monkeypatch.setenv("LOWBIT_PROGRESS", flag)
    assert progress.enabled() is shown
    assert list(progress.track(range(5), "x")) == [0, 1, 2, 3, 4]
    assert list(progress.track(iter("abc"), "y")) == ["a", "b", "c"]


def test_top_level_exports(tiny_llama_dir) -> None:
    import lowbit.loaders, lowbit.metrics, lowbit.writers  # noqa: F401  (subpackages never shadow the verbs)
    assert callable(lowbit.load) and callable(lowbit.evaluate) and callable(lowbit.export) and callable(lowbit.save)
    h = lowbit.load(str(tiny_llama_dir))
    assert isinstance(h, lowbit.ModelHandle) and h.kind == "causal-lm"
    for name in lowbit.__all__:
        assert hasattr(lowbit, name), name
