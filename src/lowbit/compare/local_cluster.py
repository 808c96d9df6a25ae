"""A throwaway Ray cluster on this machine's loopback, for tests and `bench/sweep.py`: a head and
worker nodes, each a `ray start --block` process in its own session, on 127.0.0.2, 127.0.0.3, ...
(Ray rewrites 127.0.0.1 to the external address), with token authentication, a private HOME and its
own temp dir. It stops only what it started: each node's process group, by id, never `ray stop`
(which kills every Ray process on the machine).

    with LocalCluster(tmp, cpus=(1, 1)) as c:
        compare_models([...], CompareSettings(cluster=c.address), ...)   # c.address: ray://127.0.0.2:PORT
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

START_TIMEOUT = 90.0


def free_port(host: str = "127.0.0.2") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LocalCluster:
    """``cpus[i]`` CPUs on node i (node 0 the head); ``env`` added to every node's environment (e.g.
    PYTHONPATH for a --plugin); the driver joins with :meth:`driver_env` set."""

    def __init__(self, root: Path, cpus: tuple[int, ...] = (1, 1), env: dict[str, str] | None = None,
                 object_store_bytes: int = 1_000_000_000, token: str | None = None) -> None:
        self.root, self.cpus, self.extra, self.store = Path(root), cpus, dict(env or {}), object_store_bytes
        self.token = token or secrets.token_hex(32)
        self.port = free_port()
        self.ips = [f"127.0.0.{2 + i}" for i in range(len(cpus))]
        self.procs: list[subprocess.Popen | None] = []

    @property
    def address(self) -> str:
        return f"ray://{self.ips[0]}:{self.port}"

    def driver_env(self) -> dict[str, str]:
        """What a driver process needs in its environment to join (token authentication). Ray reads it
        once, when it is imported: set it before (or give the token to the cluster: ``token=``)."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token, "RAY_USAGE_STATS_ENABLED": "0"}

    def _env(self) -> dict[str, str]:
        home = self.root / "home"
        home.mkdir(parents=True, exist_ok=True)
        return {**os.environ, **self.driver_env(), "HOME": str(home), **self.extra}

    def start(self) -> Self:
        self.root.mkdir(parents=True, exist_ok=True)
        for i in range(len(self.cpus)):
            self.start_node(i)
        return self

    def start_node(self, i: int) -> subprocess.Popen:
        """Start node ``i`` (again, after :meth:`kill_node`) and wait until the cluster counts it."""
        ray = str(Path(sys.executable).with_name("ray"))
        args = [ray, "start", "--block", f"--node-ip-address={self.ips[i]}", f"--num-cpus={self.cpus[i]}",
                f"--object-store-memory={self.store}", "--disable-usage-stats"]
        if i == 0:
            args += ["--head", f"--port={self.port}", "--include-dashboard=false", f"--temp-dir={self.root / 'ray'}"]
        else:
            args += [f"--address={self.ips[0]}:{self.port}"]
        path = self.root / f"node{i}.log"
        offset = path.stat().st_size if path.exists() else 0  # a restarted node appends: read only what it adds
        log = open(path, "ab")  # noqa: SIM115 (the node's output, for as long as it runs)
        p = subprocess.Popen(args, env=self._env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        while len(self.procs) <= i:
            self.procs.append(None)
        self.procs[i] = p
        self._wait_for(i, p, path, offset)
        return p

    def _wait_for(self, i: int, p: subprocess.Popen, log: Path, offset: int) -> None:
        """Until the node's `ray start` says it started (its log past ``offset``), without a Ray client here."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if p.poll() is not None:
                raise RuntimeError(f"ray node {i} exited ({p.returncode}): see {log}")
            with open(log, "rb") as f:
                f.seek(offset)
                if b"Ray runtime started" in f.read():
                    return
            time.sleep(0.5)
        raise RuntimeError(f"ray node {i} did not join within {START_TIMEOUT:.0f} s: see {log}")

    def kill_node(self, i: int, sig: int = signal.SIGKILL, grace: float = 5.0) -> None:
        """Stop node ``i``: its whole process group (the `ray start` process and what it spawned); after
        ``grace`` seconds, SIGKILL whatever of the group is left."""
        p = self.procs[i]
        if p is None:
            return
        for s in (sig, signal.SIGKILL):
            try:
                os.killpg(p.pid, s)
            except ProcessLookupError:
                break
            try:
                p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                continue
            if s == signal.SIGKILL:
                break

    def stop(self) -> None:
        """Every node, workers first: SIGTERM lets `ray start --block` stop its processes."""
        for i in reversed(range(len(self.procs))):
            self.kill_node(i, signal.SIGTERM)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
