"""Candidates for the cluster tests (`--plugin ray_plugin`, importable on every node through the
nodes' PYTHONPATH): one that raises, and one that holds until released, to be killed mid-task."""

from __future__ import annotations

import os
import time
from pathlib import Path

from lowbit.compare.candidates import CANDIDATES, Candidate, register_candidate
from lowbit.errors import InputError

HOLD_DIR = "LOWBIT_TEST_HOLD_DIR"  # the hold candidate writes started-PID there and waits for a file "release"


def _raise(ref, ctx):
    raise InputError("a deliberate failure (tests/plugins/ray_plugin.py)")


def _hold(ref, ctx):
    where = Path(os.environ[HOLD_DIR])
    (where / f"started-{os.getpid()}").touch()
    deadline = time.monotonic() + 120
    while not (where / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return CANDIDATES.get("rtn-w8").build(ref, ctx)


if "test-raise" not in CANDIDATES:
    register_candidate(Candidate("test-raise", "rtn", 8, "raises", "int8-weight", _raise, default=False))
    for name in ("test-hold", "test-hold2"):  # two, to hold both one-CPU nodes at once
        register_candidate(Candidate(name, "rtn", 8, "RTN 8-bit, once released", "int8-weight", _hold,
                                     config=name, default=False))
