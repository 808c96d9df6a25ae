"""calib/: corpora from files, folders, JSONL and the built-in splits; seeded token windows."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from lowbit.calib import Corpus, load_corpus, sample_texts, token_windows
from lowbit.calib.corpus import _stdlib_files
from lowbit.errors import CalibrationError


def texts(corpus: Corpus) -> list[str]:
    return [d() for d in corpus.docs]


def doc_path(doc) -> Path:
    """The file a lazily read stdlib document reads (the closure's ``path``)."""
    cells = [c.cell_contents for c in doc.__closure__ or ()]
    paths = [c for c in cells if isinstance(c, Path)]
    assert len(paths) == 1
    return paths[0]


# --- user data -----------------------------------------------------------------------------------
def test_txt_file_is_one_document(text_file) -> None:
    c = load_corpus(str(text_file))
    assert len(c) == 1 and texts(c) == [text_file.read_text()]
    assert c.name == str(text_file)


def test_folder_reads_every_file_sorted_and_skips_hidden(tmp_path) -> None:
    (tmp_path / "b.txt").write_text("second document")
    (tmp_path / "a.md").write_text("first document")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("third document")
    (tmp_path / ".hidden.txt").write_text("never read")
    (tmp_path / "d.jsonl").write_text(json.dumps({"text": "jsonl one"}) + "\n" + json.dumps({"text": "jsonl two"}))
    c = load_corpus(str(tmp_path))
    assert texts(c) == ["first document", "second document", "jsonl one", "jsonl two", "third document"]


def test_jsonl_one_document_per_line(tmp_path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps({"text": f"doc {i}", "id": i}) for i in range(5)) + "\n\n")
    assert texts(load_corpus(str(p))) == [f"doc {i}" for i in range(5)]


@pytest.mark.parametrize("content", ["", "   \n\n\t  "])
def test_empty_file_is_calibration_error(tmp_path, content: str) -> None:
    p = tmp_path / "empty.txt"
    p.write_text(content)
    with pytest.raises(CalibrationError, match="holds no text"):
        load_corpus(str(p))


def test_empty_folder_is_calibration_error(tmp_path) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(CalibrationError, match="holds no text"):
        load_corpus(str(tmp_path / "d"))


def test_jsonl_without_text_names_the_line(tmp_path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"body": "no text field"}) + "\n")
    with pytest.raises(CalibrationError) as ei:
        load_corpus(str(p))
    assert f"{p}:2" in str(ei.value) and '"text"' in str(ei.value)


def test_jsonl_non_string_text_and_bad_json(tmp_path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"text": 3}) + "\n")
    with pytest.raises(CalibrationError, match=r":1: each JSONL line"):
        load_corpus(str(p))
    p.write_text(json.dumps({"text": "ok"}) + "\n{not json\n")
    with pytest.raises(CalibrationError, match=r":2: not valid JSON"):
        load_corpus(str(p))


def test_missing_path_is_calibration_error(tmp_path) -> None:
    with pytest.raises(CalibrationError, match="not found") as ei:
        load_corpus(str(tmp_path / "nope.txt"))
    assert "\n" not in str(ei.value)


def test_unknown_builtin_split() -> None:
    with pytest.raises(CalibrationError, match="unknown split 'train'"):
        load_corpus("pydoc:train")


def test_existing_file_shadows_builtin_name(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("pydoc:calib").write_text("my own file")
    assert texts(load_corpus("pydoc:calib")) == ["my own file"]


# --- built-in splits ------------------------------------------------------------------------------
def test_pydoc_splits_are_disjoint_and_cover_everything() -> None:
    cal, ev, full = load_corpus("pydoc:calib"), load_corpus("pydoc:eval"), load_corpus("pydoc")
    tc, te = texts(cal), texts(ev)
    assert cal.name == "pydoc:calib" and ev.name == "pydoc:eval"
    assert len(tc) > 10 and len(te) > 10
    assert not set(tc) & set(te)
    assert sorted(tc + te) == sorted(texts(full))
    # split roughly in half by characters
    assert 0.35 < sum(map(len, tc)) / sum(map(len, tc + te)) < 0.65


def test_stdlib_splits_share_no_file() -> None:
    cal, ev = load_corpus("stdlib:calib"), load_corpus("stdlib:eval")
    pc, pe = {doc_path(d) for d in cal.docs}, {doc_path(d) for d in ev.docs}
    assert len(pc) > 100 and len(pe) > 100
    assert not pc & pe
    assert pc | pe == set(_stdlib_files())
    assert all(p.suffix == ".py" and "site-packages" not in p.parts for p in pc | pe)


# --- token windows --------------------------------------------------------------------------------
@pytest.fixture
def many_docs(tmp_path) -> Corpus:
    d = tmp_path / "docs"
    d.mkdir()
    for i in range(40):
        (d / f"{i:02d}.txt").write_text(f"Document number {i} says something different: {'xyz'[i % 3] * (i + 5)}.")
    return load_corpus(str(d))


def test_windows_shape_dtype_and_tokens(many_docs, tiny_tokenizer) -> None:
    w = token_windows(many_docs, tiny_tokenizer, n=4, seq_len=32, seed=0)
    assert w.shape == (4, 32) and w.dtype == torch.long
    assert int(w.min()) >= 0 and int(w.max()) < len(tiny_tokenizer)
    assert tiny_tokenizer.eos_token_id in w.view(-1).tolist()  # documents joined by EOS
    assert tiny_tokenizer.unk_token_id not in w.view(-1).tolist()


def test_windows_are_consecutive_tokens_of_the_corpus(tiny_tokenizer, tmp_path) -> None:
    p = tmp_path / "one.txt"
    p.write_text("abcdefghij" * 5)
    w = token_windows(load_corpus(str(p)), tiny_tokenizer, n=3, seq_len=10, seed=None)
    expect = tiny_tokenizer("abcdefghij", add_special_tokens=False)["input_ids"]
    assert all(row == expect for row in w.tolist())


def test_same_seed_same_windows_different_seed_different(many_docs, tiny_tokenizer) -> None:
    a = token_windows(many_docs, tiny_tokenizer, n=3, seq_len=40, seed=0)
    b = token_windows(many_docs, tiny_tokenizer, n=3, seq_len=40, seed=0)
    c = token_windows(many_docs, tiny_tokenizer, n=3, seq_len=40, seed=1)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_seed_none_keeps_corpus_order(many_docs, tiny_tokenizer) -> None:
    w = token_windows(many_docs, tiny_tokenizer, n=1, seq_len=16, seed=None)
    first = tiny_tokenizer(many_docs.docs[0](), add_special_tokens=False)["input_ids"]
    assert w[0].tolist() == first[:16]


def test_short_corpus_gives_fewer_windows_with_a_warning(tmp_path, tiny_tokenizer, caplog) -> None:
    p = tmp_path / "short.txt"
    p.write_text("x" * 49)  # 49 chars + EOS = 50 tokens
    with caplog.at_level(logging.WARNING, logger="lowbit.calib.sample"):
        w = token_windows(load_corpus(str(p)), tiny_tokenizer, n=10, seq_len=16)
    assert w.shape == (3, 16)
    assert any("only 3 windows" in r.getMessage() for r in caplog.records)


def test_less_than_one_window_is_calibration_error(tmp_path, tiny_tokenizer) -> None:
    p = tmp_path / "short.txt"
    p.write_text("tiny")
    with pytest.raises(CalibrationError, match="fewer than one window of 64"):
        token_windows(load_corpus(str(p)), tiny_tokenizer, n=2, seq_len=64)


@pytest.mark.parametrize("n, seq_len", [(0, 16), (2, 1)])
def test_window_argument_checks(many_docs, tiny_tokenizer, n: int, seq_len: int) -> None:
    with pytest.raises(CalibrationError, match="at least 1 window"):
        token_windows(many_docs, tiny_tokenizer, n=n, seq_len=seq_len)


def test_windows_need_a_tokenizer(many_docs) -> None:
    with pytest.raises(CalibrationError, match="no tokenizer"):
        token_windows(many_docs, None, n=1, seq_len=8)


def test_windows_from_builtin_corpus(tiny_tokenizer) -> None:
    w = token_windows(load_corpus("pydoc:eval"), tiny_tokenizer, n=2, seq_len=64, seed=0)
    assert w.shape == (2, 64)


# --- passages for encoders ------------------------------------------------------------------------
def test_sample_texts(text_file) -> None:
    c = load_corpus(str(text_file))
    out = sample_texts(c, n=5, max_chars=60)
    assert len(out) == 5 and all(40 <= len(t) <= 60 for t in out)
    assert out[0].startswith("Paragraph 0:")


def test_sample_texts_without_long_paragraphs(tmp_path) -> None:
    p = tmp_path / "short.txt"
    p.write_text("too short\n\nalso short")
    with pytest.raises(CalibrationError, match="no passages"):
        sample_texts(load_corpus(str(p)), n=3)
