"""The parts of `compare --cluster` that need no cluster: the address, the settings it refuses, cache
keys that every node computes alike, and the scratch directories of dead tasks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from lowbit.compare import CompareSettings
from lowbit.compare.cache import data_key
from lowbit.compare.cluster import parse_address
from lowbit.compare.cluster_task import reap, scratch_dir
from lowbit.errors import InputError


@pytest.mark.parametrize(("text", "want"), [("ray", None), ("ray://127.0.0.2:6390", "127.0.0.2:6390"),
                                            ("ray://head.example-1:10001", "head.example-1:10001")])
def test_parse_address(text, want) -> None:
    assert parse_address(text) == want


@pytest.mark.parametrize("text", ["ray:/h:1", "ray://h", "http://h:1", "ray://h:port", ""])
def test_parse_address_rejects(text) -> None:
    with pytest.raises(InputError, match="expected ray .* or ray://HOST:PORT"):
        parse_address(text)


def test_cluster_refuses_the_local_only_settings() -> None:
    with pytest.raises(InputError, match="not with --cluster"):
        CompareSettings(cluster="ray", until_decided=60).check()
    with pytest.raises(InputError, match="not with --cluster"):
        CompareSettings(cluster="ray", calib_check=True).check()
    with pytest.raises(InputError, match="--task-cpus 0"):
        CompareSettings(cluster="ray", task_cpus=0).check()


def test_data_keys_hold_no_path_or_time(tmp_path) -> None:
    a = tmp_path / "a"
    a.mkdir()
    (a / "x.txt").write_text("hello")
    (a / "sub").mkdir()
    (a / "sub" / "y.bin").write_bytes(b"\0" * 100)
    b = tmp_path / "elsewhere" / "b"
    shutil.copytree(a, b)
    os.utime(b / "x.txt", (1, 1))
    assert data_key(str(a)) == data_key(str(b))  # another node's copy, another mount point, other times
    assert data_key(str(a / "x.txt")) == data_key(str(b / "x.txt"))
    (b / "x.txt").write_text("hellp")
    assert data_key(str(a)) != data_key(str(b)) and data_key(str(a / "x.txt")) != data_key(str(b / "x.txt"))
    assert data_key("pydoc:eval") == f"pydoc:eval:{sys.version_info[:2]}"


def test_scratch_dirs_of_dead_tasks_are_reaped(tmp_path, monkeypatch) -> None:
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    root = tmp_path / "lowbit-tasks"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    (root / dead.stdout.strip()).mkdir(parents=True)  # a task process that died mid-task
    (root / dead.stdout.strip() / "half.gguf").write_bytes(b"x")
    (root / "1").mkdir()  # init: alive
    with scratch_dir() as here:
        assert tempfile.gettempdir() == str(here) and here.name == str(os.getpid())
        (here / "work").write_text("x")
        assert sorted(p.name for p in root.iterdir()) == sorted(["1", str(os.getpid())])
    assert not here.exists() and tempfile.gettempdir() == str(tmp_path)
    assert reap(root) == 0 and (root / "1").exists()
