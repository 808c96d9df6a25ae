"""`lowbit compare --cluster`: a two-node Ray cluster on loopback (head 127.0.0.2, worker 127.0.0.3, one
CPU each, token auth, private HOME and temp dirs), started and stopped by process id by this module.

A sweep's rows equal a local run's; a worker killed mid-task is retried; a lost node's task runs on the
other node; a candidate that raises is reported while the others finish; a driver killed mid-sweep resumes from the cache; bad input (an
unreachable address, a node without the package, a path only this machine has) is one line, exit 2."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

TOKEN = secrets.token_hex(32)  # this module's cluster's: Ray reads its auth settings once, when it is imported
os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN, "RAY_USAGE_STATS_ENABLED": "0"})
ray = pytest.importorskip("ray", reason="the cluster tests need Ray: make test installs lowbit[ray]")

from lowbit.compare import CompareSettings
from lowbit.compare.local_cluster import LocalCluster
from lowbit.compare.run import compare_models
from lowbit.errors import InputError

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
QUALITY = ("kl_mean", "kl_p99", "ppl", "top1_agreement", "bits_per_weight", "size_bytes", "n_tokens", "layer_errors")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray")
    hold = root / "hold"
    hold.mkdir()
    (root / "tmp").mkdir()
    env = {"PYTHONPATH": os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")]),
           "LOWBIT_TEST_HOLD_DIR": str(hold), "TMPDIR": str(root / "tmp"), "LOWBIT_PROGRESS": "0"}
    c = LocalCluster(root, cpus=(1, 1), env=env, object_store_bytes=300_000_000, token=TOKEN)
    sys.path.insert(0, str(PLUGINS))
    os.environ["LOWBIT_TEST_HOLD_DIR"] = str(hold)
    try:
        with c:
            yield c
    finally:
        if ray.is_initialized():
            ray.shutdown()
        sys.path.remove(str(PLUGINS))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from tests.conftest import make_tiny_llama

    path = tmp_path_factory.mktemp("model") / "tiny-llama"
    h = make_tiny_llama()
    h.model.save_pretrained(path)
    h.tokenizer.save_pretrained(path)
    text = path.parent / "text.txt"
    text.write_text("\n\n".join(f"Paragraph {i}: the quick brown fox jumps over the lazy dog, {i * 7} times. Quantization "
                                "maps real weights onto a small integer grid." for i in range(40)))
    return path, text


def _settings(text: Path, methods: list[str], cluster: str | None, **kw) -> CompareSettings:
    return CompareSettings(calib=str(text), eval=str(text), eval_text=str(text), methods=methods, windows=2, seq_len=64,
                           calib_samples=2, speed=False, cluster=cluster, plugins=["ray_plugin"], **kw)


def _quality(res) -> dict:
    return {r.id: {k: getattr(r, k) for k in QUALITY} for r in res.candidates}


def test_sweep_rows_equal_the_local_run(cluster, tiny_dir, tmp_path) -> None:
    import torch

    model, text = tiny_dir
    methods = ["rtn-w8", "rtn-w4g64", "hqq-w4g64", "gptq-w4g64"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each one-CPU task runs (numpy's BLAS too: Ray sets OMP_NUM_THREADS=1)
    try:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            local = compare_models([str(model)], _settings(text, methods, None), tmp_path / "local")[0]
    finally:
        torch.set_num_threads(threads)
    from lowbit.compare.cluster import sweep
    from lowbit.compare.run import Comparison

    results, stats = sweep([Comparison(str(model), _settings(text, methods, cluster.address), tmp_path / "ray")])
    res = results[0]
    assert [r.id for r in res.candidates] == methods and not res.failed
    assert len(stats.spans) == 4 and not stats.overlaps()  # one task at a time on each one-CPU node
    assert _quality(res) == _quality(local)
    nodes = {r.node["ip"] for r in res.candidates}
    assert nodes <= {"127.0.0.2", "127.0.0.3"} and all(r.node["threads"] == 1 for r in res.candidates)
    assert res.recommendation.id == local.recommendation.id
    assert (tmp_path / "ray" / "report.md").exists() and len(list((tmp_path / "ray" / ".cache").glob("*.json"))) == 4


def test_a_raising_candidate_fails_alone_and_a_killed_worker_is_retried(cluster, tiny_dir, tmp_path) -> None:
    from lowbit.compare.cluster import sweep
    from lowbit.compare.run import Comparison

    model, text = tiny_dir
    hold = Path(os.environ["LOWBIT_TEST_HOLD_DIR"])
    comp = Comparison(str(model), _settings(text, ["test-hold", "test-raise", "rtn-w8"], cluster.address), tmp_path)
    out: dict = {}
    t = threading.Thread(target=lambda: out.update(zip(("results", "stats"), sweep([comp]))))
    t.start()
    first = _wait_for(lambda: list(hold.glob("started-*")), 120)[0]
    os.kill(int(first.name.split("-")[1]), signal.SIGKILL)  # the worker process, mid-task
    _wait_for(lambda: len(list(hold.glob("started-*"))) >= 2, 120)  # Ray started it again
    (hold / "release").touch()
    t.join(300)
    assert not t.is_alive()
    res, stats = out["results"][0], out["stats"]
    assert [r.id for r in res.candidates] == ["test-hold", "rtn-w8"]
    assert "deliberate failure" in res.failed["test-raise"] and stats.failed == 1
    assert stats.retried >= 1
    assert any("test-raise failed" in w for w in res.warnings)
    scratch = Path(cluster.root) / "tmp" / "lowbit-tasks"
    assert not scratch.exists() or not list(scratch.iterdir())  # the killed attempt's files are gone
    for f in hold.iterdir():
        f.unlink()


def test_a_killed_driver_resumes_from_the_cache(cluster, tiny_dir, tmp_path) -> None:
    model, text = tiny_dir
    hold = Path(os.environ["LOWBIT_TEST_HOLD_DIR"])
    report = tmp_path / "r"
    args = [str(Path(sys.executable).with_name("lowbit")), "compare", str(model), "--calib", str(text), "--eval", str(text),
            "--eval-text", str(text), "--methods", "rtn-w8,rtn-w4g64,test-hold", "--windows", "2", "--seq-len", "64",
            "--calib-samples", "2", "--no-speed", "--cluster", cluster.address, "--plugin", "ray_plugin",
            "--report", str(report)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")])}
    driver = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _wait_for(lambda: len(list((report / ".cache").glob("*.json"))) >= 2 and list(hold.glob("started-*")), 180)
    driver.kill()
    driver.wait(30)
    (hold / "release").touch()
    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("finished in an earlier run, cached") == 2 and "test-hold: done on" in again.stdout
    assert len(list((report / ".cache").glob("*.json"))) == 3
    for f in hold.iterdir():
        f.unlink()


def test_a_lost_node_s_task_runs_on_another(cluster, tiny_dir, tmp_path) -> None:
    from lowbit.compare.cluster import sweep
    from lowbit.compare.run import Comparison

    model, text = tiny_dir
    hold = Path(os.environ["LOWBIT_TEST_HOLD_DIR"])
    comp = Comparison(str(model), _settings(text, ["test-hold", "test-hold2"], cluster.address), tmp_path)
    out: dict = {}
    t = threading.Thread(target=lambda: out.update(zip(("results", "stats"), sweep([comp]))))
    t.start()
    try:
        _wait_for(lambda: len(list(hold.glob("started-*"))) >= 2, 120)  # one CPU a node: one on each
        cluster.kill_node(1)  # the worker node, raylet and all, mid-task
        (hold / "release").touch()
        t.join(300)
    finally:
        (hold / "release").touch()
        t.join(300)
        for f in hold.iterdir():
            f.unlink()
        cluster.start_node(1)  # for the tests after this one
    res, stats = out["results"][0], out["stats"]
    assert [r.id for r in res.candidates] == ["test-hold", "test-hold2"] and not res.failed
    assert stats.retried == 1 and {r.node["ip"] for r in res.candidates} == {"127.0.0.2"}


def test_bad_cluster_input_is_one_line(cluster, tiny_dir) -> None:
    from lowbit.compare import cluster as cl

    model, text = tiny_dir
    with pytest.raises(InputError, match="cannot reach the Ray cluster at 127.0.0.2:9"):
        cl.connect("ray://127.0.0.2:9")
    with pytest.raises(InputError, match="--cluster 'ray:/x'"):
        _settings(text, ["rtn-w8"], "ray:/x").check()
    cl.connect(cluster.address)
    with pytest.raises(InputError, match="has no lowbit_not_installed package"):  # the probe runs on every node
        cl.check_nodes([str(model)], [], [], package="lowbit_not_installed")
    with open(text) as f:  # a path that resolves in this process only: its own open file
        fd = os.dup2(f.fileno(), 987)
        try:
            with pytest.raises(InputError, match=f"/proc/self/fd/{fd} exists only on this machine"):
                cl.check_nodes([f"/proc/self/fd/{fd}"], [], [])
        finally:
            os.close(fd)


def test_cli_bad_cluster_exits_2(tiny_dir, tmp_path) -> None:
    model, _ = tiny_dir
    r = subprocess.run([str(Path(sys.executable).with_name("lowbit")), "compare", str(model), "--methods", "rtn-w8",
                        "--cluster", "ray://127.0.0.2:9", "--report", str(tmp_path / "x"), "--no-speed"],
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 2 and "cannot reach the Ray cluster" in r.stdout + r.stderr
    assert not (tmp_path / "x").exists()


def _wait_for(cond, seconds: float):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"condition not met within {seconds} s")
