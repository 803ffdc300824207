"""5. `kedro run` of a one-node pipeline with the trackcfg hook against the same project with
no tracking plugin (`DISABLE_HOOKS_FOR_PLUGINS`), and where the extra time goes."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import CACHED_BYTECODE_ENV, QUICK, interleaved, ms, table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import kedro_example

ONE_NODE = """\
from kedro.pipeline import Pipeline, node


def identity(lr: float) -> float:
    return lr


def register_pipelines() -> dict[str, Pipeline]:
    return {"__default__": Pipeline([node(identity, "params:lr", "out", name="identity")])}
"""


def _kedro(
    project: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    exe = str(Path(sys.executable).with_name("kedro"))
    return subprocess.run(
        [exe, *args],
        cwd=project,
        capture_output=True,
        text=True,
        check=True,
        env={**CACHED_BYTECODE_ENV, "KEDRO_DISABLE_TELEMETRY": "1", **(env or {})},
    )


def _top_imports(stderr: str, n: int = 6) -> list[tuple[str, float]]:
    """Slowest top-level packages by cumulative import time in `-X importtime` output."""
    rows = []
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if m and len(m[2]) <= 1:
            rows.append((m[3], int(m[1]) / 1e6))
    return sorted(rows, key=lambda r: -r[1])[:n]


def run() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        tracked = kedro_example.make_project(Path(tmp))
        (tracked / "src" / kedro_example.PACKAGE / "pipeline_registry.py").write_text(ONE_NODE)
        plain = Path(shutil.copytree(tracked, Path(tmp) / "plain"))
        settings = plain / "src" / kedro_example.PACKAGE / "settings.py"
        settings.write_text(settings.read_text() + '\nDISABLE_HOOKS_FOR_PLUGINS = ("trackcfg",)\n')
        _kedro(tracked, "run")  # first run creates the store and the experiment
        medians = interleaved(
            {
                "with trackcfg hook": lambda: _kedro(tracked, "run"),
                "no tracking plugin": lambda: _kedro(plain, "run"),
            },
            repeats=2 if QUICK else 5,
        )
        profile = _kedro(tracked, "run", env={"PYTHONPROFILEIMPORTTIME": "1"})
    extra = medians["with trackcfg hook"] - medians["no tracking plugin"]
    rows = [(name, ms(t)) for name, t in medians.items()]
    rows.append(
        (
            "extra",
            f"{ms(extra)} ({medians['with trackcfg hook'] / medians['no tracking plugin']:.2f}x)",
        )
    )
    text = table("kedro run, one node (median, interleaved)", rows, ("case", "wall"))
    text += "\nSlowest imports of the tracked run (`-X importtime`, cumulative):\n\n"
    text += "\n".join(f"- `{name}`: {ms(sec)}" for name, sec in _top_imports(profile.stderr)) + "\n"
    text += (
        "\nThe extra time is importing mlflow (needed to log) and the run's requests; trackcfg "
        "imports mlflow only when a pipeline run starts (not for `kedro --help`, `kedro ipython` "
        "or a disabled pipeline).\n"
    )
    return text


if __name__ == "__main__":
    print(run())
