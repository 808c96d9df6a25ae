"""Calibrated PTQ on smollm2: GPTQ and AWQ beat RTN on the same eval windows; calibration cost recorded."""

from __future__ import annotations

import pytest

from lowbit import api
from lowbit.spec import QuantSpec


@pytest.fixture(scope="module")
def rtn_kl(smollm2, smollm2_eval):
    out = {}
    for bits in (4, 3):
        q, _ = api.quantize(smollm2, api.make_config("rtn", QuantSpec(bits, False, 64)))
        out[bits] = smollm2_eval.run(q).kl_mean
    return out


def test_gptq_asym_4bit_well_below_rtn(smollm2, smollm2_eval, rtn_kl):
    q, rep = api.quantize(smollm2, api.make_config("gptq", QuantSpec(4, False, 64)), calib="pydoc:calib")
    cal = rep.calibration.to_dict()
    assert cal["samples"] == 16 and cal["tokens"] == 16 * 512 and cal["schedule"] == "fused"
    assert cal["peak_rss_bytes"] > 0 and cal["seconds"] > 0
    kl = smollm2_eval.run(q).kl_mean
    assert kl <= 0.40 * rtn_kl[4], (kl, rtn_kl[4])


def test_gptq_asym_3bit_well_below_rtn(smollm2, smollm2_eval, rtn_kl):
    q, _ = api.quantize(smollm2, api.make_config("gptq", QuantSpec(3, False, 64)), calib="pydoc:calib")
    kl = smollm2_eval.run(q).kl_mean
    assert kl <= 0.50 * rtn_kl[3], (kl, rtn_kl[3])


def test_awq_below_rtn(smollm2, smollm2_eval, rtn_kl):
    calib = api.CalibSettings("pydoc:calib", n_samples=4, seq_len=256)  # small: AWQ's grid search is the cost
    cfg = api.make_config("awq", QuantSpec(3, False, 64), n_grid=10, clip_grid=10)  # a coarser search, for time
    q, rep = api.quantize(smollm2, cfg, calib=calib)
    assert rep.calibration.to_dict()["schedule"] == "two-pass"
    assert smollm2_eval.run(q).kl_mean < rtn_kl[3]


def test_hqq_below_rtn_without_calibration(smollm2, smollm2_eval, rtn_kl):
    q, rep = api.quantize(smollm2, api.make_config("hqq", QuantSpec(3, False, 64)))
    assert rep.calibration.to_dict()["tokens"] == 0  # data-free
    assert smollm2_eval.run(q).kl_mean < rtn_kl[3]
