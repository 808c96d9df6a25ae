"""`lowbit <command> --help` against a stored snapshot per command (tests/unit/snapshots/cli-<cmd>.txt).

The help is rendered the same way everywhere: 100 columns, a dumb terminal, no colour. A change to a
command's options or texts fails here until the snapshot is rewritten on purpose:

    LOWBIT_UPDATE_SNAPSHOTS=1 python -m pytest tests/unit/test_cli_help.py
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from typer import rich_utils
from typer.testing import CliRunner

from lowbit.cli import app

SNAPSHOTS = Path(__file__).parent / "snapshots"
COMMANDS = ["quantize", "export", "imatrix", "eval", "inspect", "qat", "plan", "compare", "hardware", "demo"]
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def render_help(args: list[str], monkeypatch: pytest.MonkeyPatch) -> str:
    # typer reads these at import (TERMINAL_WIDTH, FORCE_COLOR, GITHUB_ACTIONS): pin them for any environment
    monkeypatch.setattr(rich_utils, "MAX_WIDTH", 100)
    monkeypatch.setattr(rich_utils, "FORCE_TERMINAL", False)
    monkeypatch.setattr(rich_utils, "COLOR_SYSTEM", None)
    runner = CliRunner(env={"COLUMNS": "100", "TERM": "dumb", "NO_COLOR": "1", "LOWBIT_PROGRESS": "0"})
    res = runner.invoke(app, [*args, "--help"], prog_name="lowbit")
    assert res.exit_code == 0, res.output
    lines = [ln.rstrip() for ln in _ANSI.sub("", res.stdout).splitlines()]
    return "\n".join(lines).strip("\n") + "\n"


@pytest.mark.parametrize("cmd", ["lowbit", *COMMANDS])
def test_help_matches_snapshot(cmd: str, monkeypatch: pytest.MonkeyPatch) -> None:
    text = render_help([] if cmd == "lowbit" else [cmd], monkeypatch)
    path = SNAPSHOTS / f"cli-{cmd}.txt"
    if os.environ.get("LOWBIT_UPDATE_SNAPSHOTS") == "1":
        path.write_text(text, encoding="utf-8")
    assert path.is_file(), f"no snapshot {path.name}: run with LOWBIT_UPDATE_SNAPSHOTS=1 to write it"
    assert text == path.read_text(encoding="utf-8"), (
        f"`lowbit {cmd} --help` changed; if on purpose, rewrite the snapshot with LOWBIT_UPDATE_SNAPSHOTS=1")


def test_every_command_has_a_snapshot() -> None:
    from typer.main import get_command

    assert sorted(get_command(app).commands) == sorted(COMMANDS)  # type: ignore[attr-defined]
