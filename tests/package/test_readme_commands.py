"""The README's quick start is what CI runs: its test command is ``.ci/run``'s, verbatim."""

from __future__ import annotations

import re

from helpers import REPO


def quick_start_command(row_start: str) -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    (row,) = [line for line in readme.splitlines() if line.startswith(row_start)]
    commands: list[str] = re.findall(r"`([^`]+)`", row)
    return commands[-1]


def test_ci_runs_the_readmes_test_command_verbatim() -> None:
    command = quick_start_command("| the tests (what CI runs")
    assert command.startswith("python3 -m venv .venv && . .venv/bin/activate && ")
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert ci[-1] == command


def test_the_demo_command_starts_with_a_virtual_environment() -> None:
    command = quick_start_command("| the demo: ")
    assert command == (
        'python3 -m venv .venv && . .venv/bin/activate && pip install "nox[uv]" && nox -s demo'
    )
