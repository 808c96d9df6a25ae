"""One `lowbit compare --cluster` task, on whichever node Ray placed it: the candidate built and scored
exactly as a local run does it, its row returned to the driver (compare/cluster.py).

A task gets a :class:`TaskSpec` (names, settings, ids: nothing that holds a model or a closure). It sets
torch's threads to the CPUs Ray assigned it (a reused worker would keep the count of its first task),
fills this node's reference store with the driver's log-probs where it lacks them (Ray hands them to the
task as an argument, fetched once per node), loads the model, and scores the candidate against float32
timed on this same node. It never blocks on ``ray.get``: a blocked task lends its CPU back to Ray, which
may start another task on it, and two tasks on one CPU would skew each other's speed figures. Its temporary files live
in one directory named after the task's process: a later task on the node (and the driver, at the end)
removes the directories of processes that died, so a retried candidate leaves nothing behind.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lowbit.compare.settings import CompareSettings

SCRATCH = "lowbit-tasks"  # under the node's temp dir: one subdirectory per running task's process


@dataclass(frozen=True)
class TaskSpec:
    """What a task needs, all of it picklable: the model as the user named it (a path every node must
    see, or a built-in name), the sweep's settings, the candidate's id (the reference's log-probs come as
    the task's second argument)."""

    model: str
    settings: CompareSettings
    candidate: str
    tracker: Any = None  # the sweep's Tracker actor (compare/cluster.py), told when an attempt starts

    @property
    def key(self) -> str:
        return f"{self.model} {self.candidate}"


def node_identity() -> dict[str, Any]:
    """The hardware a row's speed was measured on: ratios to float32 compare only within one node."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"host": socket.gethostname(), "ip": _node_ip(), "cpu": cpu, "cores": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _node_ip() -> str | None:
    try:
        import ray

        return ray.util.get_node_ip_address() if ray.is_initialized() else None
    except (ImportError, OSError, RuntimeError):
        return None


def run_task(spec: TaskSpec, logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The task body: ``{"row": Row.to_dict(), "span": (start, end)}`` (wall clock), or ``{"error": one line, "trace": ...}``
    when lowbit raised (an error Ray does not retry: the same input would raise again). ``logprobs``: the
    driver's reference log-probs by window key (None: the task computes them)."""
    start = time.time()
    _set_threads()
    _report_start(spec)
    try:
        with scratch_dir():
            row = _build(spec, logprobs)
    except Exception as e:  # noqa: BLE001 (whatever lowbit raised is the candidate's failure; the sweep goes on)
        return {"error": f"{type(e).__name__}: {e}".splitlines()[0], "trace": traceback.format_exc()}
    row.node = node_identity()
    return {"row": row.to_dict(), "span": (start, time.time())}


def _set_threads() -> None:
    import ray
    import torch

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))


def _report_start(spec: TaskSpec) -> None:
    """Tell the sweep's tracker this attempt began (a second start of a candidate is a retry)."""
    import ray

    if spec.tracker is not None:  # not waited for (see the module's docstring): sent at once all the same
        spec.tracker.started.remote(spec.key, os.getpid(), ray.get_runtime_context().get_node_id())


def _build(spec: TaskSpec, logprobs: dict[str, Any] | None) -> Any:
    from lowbit.compare.run import Comparison

    s = replace(spec.settings, cluster=None)
    comp = Comparison(spec.model, s, Path(tempfile.gettempdir()) / "report")
    if logprobs is not None:
        _seed_store(comp, logprobs)
    c = next((c for c in comp.candidates if c.id == spec.candidate), None)
    if c is None:
        raise LookupError(f"{spec.candidate} is not a candidate of this sweep on this node (a --plugin missing here?)")
    return comp.build_row(c)


def _seed_store(comp: Any, lps: dict[str, Any]) -> None:
    """Copy the driver's reference log-probs into this node's store where it lacks them."""
    from lowbit.metrics.refstore import LogprobStore, store_dir

    store = LogprobStore(store_dir(comp.model_key))
    for win in comp.evaluator.windows(comp.ref.tokenizer):
        if store.get(win) is None:
            lp = lps.get(store.key(win))
            if lp is not None:
                store.put(win, lp)


def reap_scratch() -> int:
    """:func:`reap` on this node's scratch root (the driver runs it on every node at the end)."""
    return reap(Path(tempfile.gettempdir()) / SCRATCH)


@contextmanager
def scratch_dir():
    """A temporary directory for this task's files (``tempfile`` points there while it runs), removed at
    the end; first, the directories of this node's dead task processes."""
    root = Path(tempfile.gettempdir()) / SCRATCH
    reap(root)
    here = root / str(os.getpid())
    shutil.rmtree(here, ignore_errors=True)
    here.mkdir(parents=True)
    before = tempfile.tempdir
    tempfile.tempdir = str(here)
    try:
        yield here
    finally:
        tempfile.tempdir = before
        shutil.rmtree(here, ignore_errors=True)


def reap(root: Path) -> int:
    """Remove the scratch directories under ``root`` whose process is gone; returns how many."""
    n = 0
    for d in root.glob("*") if root.is_dir() else ():
        if d.name.isdigit() and not _alive(int(d.name)):
            shutil.rmtree(d, ignore_errors=True)
            n += 1
    return n


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
