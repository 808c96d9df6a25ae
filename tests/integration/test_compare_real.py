"""`lowbit compare` and `lowbit plan` on the real models: every family runs on smollm2 and is scored on
the same windows; the bar moves the recommendation; the calibration-domain check runs on code; minilm
is compared by cosine."""

from __future__ import annotations

import json
import re

import pytest

from lowbit.compare import CompareSettings, compare
from lowbit.compare.domain import DOMAIN_WARN, token_distance
from lowbit.plan import Inputs, ModelInfo, make_plan


@pytest.fixture(scope="module")
def smollm2_run(smollm2, tmp_path_factory):
    rep = tmp_path_factory.mktemp("cmp")
    s = CompareSettings(methods=["rtn-w8", "gguf-q8_0", "rtn-w4g64", "hqq-w4g64", "gptq-w4g64", "awq-w4g64",
                                 "gguf-q4_k_m", "bnb-nf4-dq"],
                        windows=1, calib_samples=4, bar="kl=0.05")
    return compare(smollm2, s, rep), rep, s


def test_every_family_runs_on_smollm2(smollm2_run) -> None:
    out, rep, _ = smollm2_run
    rows = {r["id"]: r for r in out["candidates"]}
    assert {r["family"] for r in rows.values()} == {"rtn", "gguf", "hqq", "gptq", "awq", "bitsandbytes"}
    assert abs(rows["bnb-nf4-dq"]["bits_per_weight"] - 4.127) < 0.01
    assert all(r["kl_mean"] is not None and r["size_bytes"] > 0 for r in rows.values())
    assert rows["rtn-w8"]["kl_mean"] < 0.01 and rows["gguf-q8_0"]["kl_mean"] < 0.01
    assert rows["gptq-w4g64"]["kl_mean"] < rows["rtn-w4g64"]["kl_mean"]
    assert rows["gptq-w4g64"]["calib_seconds"] > rows["rtn-w4g64"]["calib_seconds"]
    assert any(r["pareto"] for r in rows.values())
    assert all(r["speed_ratio_vs_fp32"] is not None for r in rows.values() if r["family"] not in ("gguf", "bitsandbytes"))
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:  # no figure from lowbit's slow torch layer
        assert rows["bnb-nf4-dq"]["speed_ratio_vs_fp32"] is None
        assert "`pip install bitsandbytes`" in rows["bnb-nf4-dq"]["speed_note"]
    res = json.loads((rep / "results.json").read_text())
    assert res["recommendation"]["method"] in rows and res["recommendation"]["reasons"]


def test_the_bar_moves_the_recommendation(smollm2, smollm2_run) -> None:
    out, rep, s = smollm2_run  # rerun from the cache with a strict and a loose bar
    strict = compare(smollm2, CompareSettings(**{**s.__dict__, "bar": "kl=0.005"}), rep)
    loose = compare(smollm2, CompareSettings(**{**s.__dict__, "bar": "kl=0.5"}), rep)
    bits = {r["id"]: r["bits"] for r in out["candidates"]}
    assert bits[strict["recommendation"]["method"]] == 8 and bits[loose["recommendation"]["method"]] == 4


def test_code_eval_calib_check(smollm2, tmp_path) -> None:
    """Code-domain eval: stdlib vs pydoc calibration for GPTQ, and the distance that warns about it."""
    assert token_distance("pydoc:calib", "stdlib:eval", smollm2.tokenizer) > DOMAIN_WARN
    assert token_distance("stdlib:calib", "stdlib:eval", smollm2.tokenizer) < DOMAIN_WARN
    s = CompareSettings(calib="stdlib:calib", eval="stdlib:eval", methods=["gptq-w4g64"], windows=1,
                        calib_samples=4, speed=False, calib_check=True)
    out = compare(smollm2, s, tmp_path)
    cc = out["calib_check"]
    assert cc["generic_calib"] == "pydoc:calib" and cc["candidate"] == "gptq-w4g64"
    assert cc["user_value"] > 0 and cc["generic_value"] > 0 and isinstance(cc["user_calib_better"], bool)
    assert "Calibration-set check" in (tmp_path / "report.md").read_text()
    warned = compare(smollm2, CompareSettings(**{**s.__dict__, "calib": "pydoc:calib", "calib_check": False}), tmp_path)
    assert any("look unlike the eval tokens" in w for w in warned["warnings"])


def test_minilm_by_cosine(minilm, tmp_path) -> None:
    out = compare(minilm, CompareSettings(calib=None, methods=["rtn-w8", "rtn-w4g64"], speed=False), tmp_path)
    rows = {r["id"]: r for r in out["candidates"]}
    assert out["bar"].startswith("cosine")
    assert rows["rtn-w8"]["cosine_mean"] > rows["rtn-w4g64"]["cosine_mean"] > 0.9


def test_plan_on_the_real_models() -> None:
    p = make_plan(Inputs(target="cpu"), ModelInfo.of("smollm2"))
    assert p.model.params == pytest.approx(134.5e6, rel=0.01) and p.rule["id"] == "cpu-edge"
    m = ModelInfo.of("minilm")
    assert m.kind == "encoder" and m.params == pytest.approx(22.7e6, rel=0.02)


def test_the_report_renders_in_a_browser(smollm2_run, tmp_path) -> None:
    """Headless Chromium opens report.html and draws it, plots included (the page is self-contained)."""
    import shutil
    import subprocess

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on this machine (Debian: apt-get install chromium)")
    _, rep, _ = smollm2_run
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1200,1600", (rep / "report.html").as_uri()], capture_output=True, timeout=120, check=False)
    from PIL import Image

    img = Image.open(shot).convert("RGB")
    colors = img.getcolors(maxcolors=1 << 20)
    assert img.size == (1200, 1600) and colors is not None and len(colors) > 500  # text, table and plots, not a blank page
    reds = sum(n for n, (r, g, b) in colors if r > 150 and g < 80 and b < 80)
    assert reds > 50, "the Pareto points and line of the size-vs-quality plot are drawn in red"
    # every image decodes in the browser: a copy of the page records each one's state once loaded
    probe = ("<script>window.addEventListener('load', () => { document.body.dataset.images = [...document.images]"
             ".map(i => i.complete && i.naturalWidth > 0 ? 'ok' : 'broken').join(','); });</script>")
    page = tmp_path / "probe.html"
    page.write_text((rep / "report.html").read_text().replace("</body>", probe + "</body>"))
    dom = subprocess.run([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                          "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=False).stdout
    m = re.search(r'data-images="([^"]*)"', dom)
    assert m and m.group(1) == "ok,ok", f"the size-quality plot and the layer heatmap, both drawn: {m and m.group(1)}"
