"""Run one fuzz case the way the CLI would, in a forked child of this process (the same code, no new
interpreter), under an address-space limit and a timeout: ``lowbit inspect``'s reader, then the load
path of ``lowbit quantize`` (block by block where it streams: every tensor read), then ``load_model``;
an importance matrix is read and applied to a GGUF export of the tiny Llama. The outcome is ``ok``
(loaded), ``error`` (one LowbitError line), ``traceback`` (any other exception), ``hang`` (timeout)
or ``crash`` (killed: a signal, the memory limit)."""

from __future__ import annotations

import json
import os
import resource
import signal
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from fuzz.cases import Case

MEMORY_LIMIT = 1 << 30  # address space a case may add to this process
TIMEOUT = 60.0


@dataclass
class Outcome:
    id: str
    category: str
    status: str
    message: str
    seconds: float
    peak_mib: float  # the child's peak resident memory (what it shares with this process included)


def exercise(path: Path, seeds: dict[str, Path], work: Path) -> None:
    """What the CLI does with ``path`` before any quantizing (raises what it raises)."""
    from lowbit.calib.imatrix import load_imatrix
    from lowbit.loaders import load_model
    from lowbit.report.inspect import inspect_path

    if path.name.startswith("imatrix"):
        from lowbit.writers.gguf import export_gguf

        im = load_imatrix(path).weights()
        export_gguf(load_model(seeds["llama_dir"]), work / "out.gguf", "Q4_0", imatrix=im)
        return
    inspect_path(path)
    from lowbit.loaders.lazy import open_lazy
    from lowbit.pipeline.stream import can_stream

    if can_stream(str(path), "rtn"):
        lazy = open_lazy(path)
        for name in lazy.files:
            lazy.read(name)
    load_model(path)


def _child(case: Case, seeds: dict[str, Path], work: Path, fd: int) -> None:
    from lowbit.errors import LowbitError

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    import torch

    torch.set_num_threads(1)
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + MEMORY_LIMIT, vm + MEMORY_LIMIT))
    os.environ["LOWBIT_CACHE"] = str(work / "cache")
    try:
        exercise(case.build(seeds, work), seeds, work)
        result = {"status": "ok", "message": ""}
    except LowbitError as e:
        result = {"status": "error", "message": str(e)}
    except MemoryError:
        result = {"status": "crash", "message": "MemoryError: over the memory limit"}
    except BaseException as e:  # noqa: BLE001 (the fuzz records every escape)
        tb = traceback.extract_tb(e.__traceback__)
        result = {"status": "traceback", "message": f"{type(e).__name__}: {str(e)[:300]} at {tb[-1].filename}:{tb[-1].lineno}"}
    os.write(fd, json.dumps(result).encode())
    os.close(fd)
    os._exit(0)


def run(case: Case, seeds: dict[str, Path], timeout: float = TIMEOUT) -> Outcome:
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lowbit-fuzz-") as tmp:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                _child(case, seeds, Path(tmp), w)
            finally:
                os._exit(3)
        os.close(w)
        status, usage = _wait(pid, timeout)
        data = b""
        while chunk := os.read(r, 1 << 16):
            data += chunk
        os.close(r)
    seconds = time.perf_counter() - t0
    peak = usage.ru_maxrss / 1024 if usage else 0.0
    if status == "hang":
        return Outcome(case.id, case.category, "hang", f"no result in {timeout:.0f} s", seconds, peak)
    try:
        result = json.loads(data)
    except ValueError:
        return Outcome(case.id, case.category, "crash", f"child ended without a result ({status})", seconds, peak)
    return Outcome(case.id, case.category, result["status"], result["message"], seconds, peak)


def _wait(pid: int, timeout: float) -> tuple[str, resource.struct_rusage | None]:
    end = time.monotonic() + timeout
    while True:
        done, code, usage = os.wait4(pid, os.WNOHANG)
        if done:
            return (f"signal {os.WTERMSIG(code)}" if os.WIFSIGNALED(code) else f"exit {os.WEXITSTATUS(code)}"), usage
        if time.monotonic() > end:
            os.kill(pid, signal.SIGKILL)
            _, _, usage = os.wait4(pid, 0)
            return "hang", usage
        time.sleep(0.01)
