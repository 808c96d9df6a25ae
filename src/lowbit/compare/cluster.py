"""`lowbit compare MODEL [MODEL...] --cluster ray | ray://HOST:PORT`: the candidates as Ray tasks.

    driver: join the cluster (one clear error if it is unreachable, a node lacks lowbit or cannot
      see the model or data) -> per model: the reference's row, its log-probs put in the object store
      once -> one task per (model, candidate) not in the cache (compare/cluster_task.py: a TaskSpec of
      names and settings, ``num_cpus`` and ``memory`` requests) -> each row written to the model's cache
      as it arrives -> per model: the Pareto front, the recommendation and the report, as a local run.

Faults: a task whose worker process or node dies runs again (``MAX_RETRIES``), elsewhere if the node is
gone; an exception inside lowbit is that candidate's failure (reported, never retried: the same input
raises again) and the sweep goes on; a driver restarted on the same report directory skips the rows
already cached. Speed ratios are measured inside each task against float32 on the same node, and each
row names its node. ``ray://HOST:PORT`` is the head's address as ``ray start --head --port PORT``
prints it: lowbit joins as a driver (the Ray Client server is not used).
"""

from __future__ import annotations

import logging
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lowbit.compare import cache
from lowbit.compare.cluster_task import TaskSpec, node_identity, reap_scratch, run_task
from lowbit.compare.row import Row
from lowbit.errors import InputError

log = logging.getLogger(__name__)
MAX_RETRIES = 3  # re-runs of a task whose worker died (not of one that raised)
PROBE_TIMEOUT = 120.0  # seconds for every node to answer the set-up check


def parse_address(text: str) -> str | None:
    """``ray`` -> None (Ray's own default: RAY_ADDRESS, a running local cluster, or a new one);
    ``ray://HOST:PORT`` -> ``HOST:PORT``."""
    if text == "ray":
        return None
    m = re.fullmatch(r"ray://([A-Za-z0-9_.\-]+):(\d{1,5})", text)
    if not m:
        raise InputError(f"--cluster {text!r}: expected ray (Ray's default cluster) or ray://HOST:PORT (the head's "
                         "address, as `ray start --head --port PORT` prints it)")
    return f"{m[1]}:{m[2]}"


def connect(cluster: str) -> None:
    """Join the cluster as a driver; one clear error if Ray is missing or the address does not answer."""
    address = parse_address(cluster)
    try:
        import ray
    except ImportError:
        raise InputError("--cluster needs Ray on this machine: pip install 'lowbit[ray]'") from None
    kw: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address is not None:
        host, port = address.rsplit(":", 1)
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except OSError as e:
            raise InputError(f"cannot reach the Ray cluster at {address} ({e.strerror or e}): is `ray start --head "
                             f"--port {port}` running there?") from None
        kw["address"] = address
    if ray.is_initialized():  # this process already joined (an API caller's own ray.init)
        return
        if host.startswith("127."):  # a cluster on loopback: the driver stays there too (Ray rewrites 127.0.0.1)
            kw["_node_ip_address"] = host
    try:
        ray.init(**kw)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:  # Ray's own (auth token, versions): one line
        raise InputError(f"cannot join the Ray cluster at {address or 'the default address'}: "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def check_nodes(models: list[str], data: list[str | None], plugins: list[str], package: str = "lowbit") -> int:
    """Every alive node has ``package`` (the version here) and the plugins, and sees every model and data
    path that exists here; one clear error naming the node otherwise. Returns the number of nodes."""
    import ray

    from lowbit import __version__

    paths = [p for p in [*models, *data] if p and Path(p).exists()]

    def probe(package: str, paths: list[str], plugins: list[str]) -> dict[str, Any]:  # sent by value: no lowbit needed
        import importlib.metadata
        import importlib.util
        import os as _os

        have = importlib.util.find_spec(package) is not None
        return {"version": importlib.metadata.version(package) if have else None,
                "missing": [p for p in paths if not _os.path.exists(p)],
                "plugins": [m for m in plugins if importlib.util.find_spec(m.split(".")[0]) is None]}

    try:
        nodes, answers = on_every_node(probe, package, [str(Path(p).absolute()) for p in paths], plugins)
    except ray.exceptions.RayError as e:
        raise InputError(f"the cluster's nodes did not answer lowbit's set-up check: {type(e).__name__}") from None
    for n, a in zip(nodes, answers, strict=True):
        where = f"node {n.get('NodeManagerAddress')}"
        if a["version"] is None:
            raise InputError(f"{where} has no {package} package: install it on every node (pip install '{package}"
                             f"[ray]=={__version__}' in the Python that runs `ray start`)")
        if package == "lowbit" and a["version"] != __version__:
            raise InputError(f"{where} has lowbit {a['version']}, this machine {__version__}: install the same one")
        if a["plugins"]:
            raise InputError(f"{where} cannot import --plugin {', '.join(a['plugins'])}")
        if a["missing"]:
            raise InputError(f"{a['missing'][0]} exists only on this machine: {where} cannot read it (put models and "
                             "data on storage every node mounts, at the same path)")
    return len(nodes)


def on_every_node(fn: Any, *args: Any, timeout: float = PROBE_TIMEOUT) -> tuple[list[dict], list[Any]]:
    """``fn(*args)`` once on every alive node (no CPU asked, no retry): the nodes and their answers."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    remote = ray.remote(num_cpus=0, max_retries=0)(fn)
    refs = [remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(*args)
            for n in nodes]
    return nodes, ray.get(refs, timeout=timeout)


class Tracker:
    """A Ray actor (no CPU) that counts each task's attempts: a second start of a candidate is a retry."""

    def __init__(self) -> None:
        self.starts: dict[str, int] = {}
        self.running: dict[str, tuple[int, str]] = {}

    def started(self, key: str, pid: int, node: str) -> None:
        self.starts[key] = self.starts.get(key, 0) + 1
        self.running[key] = (pid, node)

    def finished(self, key: str) -> None:
        self.running.pop(key, None)

    def snapshot(self) -> dict[str, Any]:
        return {"starts": dict(self.starts), "running": dict(self.running)}


def _tracker() -> Any:
    """A :class:`Tracker` on the driver's node, alive before any task reports to it (a lost worker node
    must not take the counts with it)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    tracker = ray.remote(num_cpus=0)(Tracker).options(scheduling_strategy=here).remote()
    ray.get(tracker.snapshot.remote())
    return tracker


@dataclass
class SweepStats:
    """What the sweep did: tasks run, retried (attempts beyond the first), failed; each task's seconds
    inside its worker; the nodes it used."""

    tasks: int = 0
    retried: int = 0
    failed: int = 0
    nodes: int = 0
    spans: dict[str, tuple[str, float, float]] = field(default_factory=dict)  # key: (node ip, start, end), wall clock

    @property
    def task_seconds(self) -> dict[str, float]:
        return {k: end - start for k, (_, start, end) in self.spans.items()}

    def overlaps(self) -> list[tuple[str, str]]:
        """Pairs of tasks that ran at the same time on one node (none when every task had its node's only
        CPU, as the bench's and the tests' one-CPU nodes must)."""
        out = []
        spans = sorted(self.spans.items(), key=lambda kv: kv[1][1])
        for i, (a, (node_a, _, end_a)) in enumerate(spans):
            out += [(a, b) for b, (node_b, start_b, _) in spans[i + 1:] if node_b == node_a and start_b < end_a]
        return out


@dataclass
class _Job:
    comp: Any  # the model's Comparison (compare/run.py)
    spec: TaskSpec
    path: Path  # its cache file
    logprobs: Any = None  # ObjectRef of the model's reference log-probs: the task's second argument


def sweep(comps: list[Any], nodes: int | None = None) -> tuple[list[Any], SweepStats]:
    """Every candidate of every comparison in ``comps`` (one per model, same settings) as Ray tasks; the
    driver writes the rows and each model's report (progress on each comparison's console). Returns the Results per model and the sweep's stats.
    ``nodes``: the cluster was joined and checked already (:func:`connect`, :func:`check_nodes`)."""
    s = comps[0].s
    if nodes is None:
        connect(s.cluster)
        nodes = check_nodes([c.model_arg for c in comps], [s.calib, s.eval, s.eval_text, s.train_data], s.plugins)
    stats = SweepStats(nodes=nodes)
    tracker = _tracker()
    starts, rows, failed, jobs = {}, {}, {}, []
    for comp in comps:
        starts[id(comp)] = comp.start()
        lp = _put_logprobs(comp)
        for c in comp.candidates:
            path = comp.row_path(c)
            cached = cache.read_row(path)
            if cached is not None:
                comp.say(f"[dim]{c.id}: finished in an earlier run, cached ({path.name})[/]")
                rows[id(comp), c.id] = cached
            else:
                jobs.append(_Job(comp, TaskSpec(comp.model_arg, s, c.id, tracker), path, lp))
    _run(jobs, rows, failed, tracker, stats)
    here = node_identity()
    results = []
    for comp in comps:
        warnings, ref_row = starts[id(comp)]
        done = [rows[id(comp), c.id] for c in comp.candidates if (id(comp), c.id) in rows]
        results.append(comp.finish(ref_row, done, warnings, failed.get(id(comp)), local_node=here))
    _reap_everywhere()
    return results, stats


def _run(jobs: list[_Job], rows: dict, failed: dict, tracker: Any, stats: SweepStats) -> None:
    """Submit every job, then take the results as they come: rows into the cache, errors into ``failed``."""
    import ray

    from lowbit.progress import Steps

    remote = ray.remote(run_task)
    pending = {}
    for j in jobs:
        pending[remote.options(num_cpus=j.spec.settings.task_cpus, memory=_memory(j.comp), max_retries=MAX_RETRIES,
                               retry_exceptions=False).remote(j.spec, j.logprobs)] = j
    stats.tasks = len(jobs)
    with Steps(len(jobs), "sweep") as bar:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                j = pending.pop(ref)
                _collect(j, ref, rows, failed, stats)
                tracker.finished.remote(j.spec.key)
            snap = ray.get(tracker.snapshot.remote())
            stats.retried = sum(max(0, n - 1) for n in snap["starts"].values())
            bar.update(len(jobs) - len(pending), f"{len(snap['running'])} running, {stats.retried} retried, "
                                                 f"{stats.failed} failed")


def _collect(j: _Job, ref: Any, rows: dict, failed: dict, stats: SweepStats) -> None:
    import ray

    key = (id(j.comp), j.spec.candidate)
    try:
        out = ray.get(ref)
    except ray.exceptions.RayError as e:  # its worker or node was lost more times than it may be retried
        out = {"error": f"its worker was lost {MAX_RETRIES + 1} times ({type(e).__name__})"}
    if "error" in out:
        log.debug("%s failed:\n%s", j.spec.key, out.get("trace", ""))
        stats.failed += 1
        failed.setdefault(id(j.comp), {})[j.spec.candidate] = out["error"]
        j.comp.say(f"[red]{j.spec.candidate}: failed: {out['error']}[/]")
        return
    row = Row.from_dict(out["row"])
    where = row.node.get("ip") or row.node.get("host")
    stats.spans[j.spec.key] = (where, *out["span"])
    cache.write_row(j.path, row)
    rows[key] = row
    j.comp.say(f"{j.spec.candidate}: done on {where} ({stats.task_seconds[j.spec.key]:.0f} s)")


def _memory(comp: Any) -> int:
    """Bytes a task asks for: three float32 copies of the model (reference, candidate, work) and 1.5 GiB."""
    params = sum(p.numel() for p in comp.ref.model.parameters())
    return int(12 * params + 1.5 * 2**30)


def _put_logprobs(comp: Any) -> Any:
    """The reference's stored log-probs on the eval windows, put in the object store once (None when
    there are none: an encoder, or a reference scored block by block)."""
    import ray

    from lowbit.loaders.handle import CAUSAL_LM
    from lowbit.metrics.refstore import LogprobStore, store_dir

    if comp.kind != CAUSAL_LM or comp.ref.lazy is not None:
        return None
    store = LogprobStore(store_dir(comp.model_key))
    lps = {store.key(w): store.get(w) for w in comp.evaluator.windows(comp.ref.tokenizer)}
    lps = {k: v for k, v in lps.items() if v is not None}
    return ray.put(lps) if lps else None


def _reap_everywhere() -> None:
    """Remove dead tasks' scratch directories on every alive node (a retried candidate leaves none)."""
    import ray

    try:
        on_every_node(reap_scratch, timeout=60)
    except ray.exceptions.RayError as e:  # a node that went away meanwhile: nothing of ours left to clean there
        log.warning("could not clean every node's scratch directories: %s", type(e).__name__)
