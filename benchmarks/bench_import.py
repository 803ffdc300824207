"""1. Import cost: `import trackcfg, trackcfg.kedro` and `trackcfg --help` against a bare
interpreter and against `import mlflow`. Budget: under 100 ms over a bare interpreter.

Measured with bytecode caches, as a user has them (pip compiles at install, and Python writes
them on first import): each case runs once first with ``PYTHONDONTWRITEBYTECODE`` unset.
Without caches (this sandbox sets that variable and uv does not compile at install) every
import compiles its modules from source, which roughly doubles these figures."""

from __future__ import annotations

import subprocess
import sys

from _common import CACHED_BYTECODE_ENV, QUICK, interleaved, ms, table

CASES = {
    "bare interpreter": [sys.executable, "-c", "pass"],
    "import trackcfg": [sys.executable, "-c", "import trackcfg"],
    "import trackcfg, trackcfg.kedro": [sys.executable, "-c", "import trackcfg, trackcfg.kedro"],
    "trackcfg --help": [sys.executable, "-m", "trackcfg", "--help"],
    "import mlflow": [sys.executable, "-c", "import mlflow"],
}


def run() -> str:
    def runner(cmd: list[str]) -> None:
        subprocess.run(cmd, check=True, capture_output=True, env=CACHED_BYTECODE_ENV)

    for cmd in CASES.values():  # writes the bytecode caches
        runner(cmd)

    medians = interleaved(
        {name: (lambda c=cmd: runner(c)) for name, cmd in CASES.items()},
        repeats=1 if QUICK else 7,
    )
    bare = medians["bare interpreter"]
    rows = [
        (name, ms(t), ms(t - bare), "-" if name == "bare interpreter" else f"{t / bare:.1f}x")
        for name, t in medians.items()
    ]
    verdict = max(medians["import trackcfg, trackcfg.kedro"], medians["trackcfg --help"]) - bare
    text = table(
        "Import cost (median of 7, interleaved, with bytecode caches)",
        rows,
        ("case", "wall", "over bare", "ratio"),
    )
    text += f"\nBudget: < 100 ms over a bare interpreter; worst trackcfg case: {ms(verdict)} "
    text += "(" + ("met" if verdict < 0.1 else "MISSED") + ").\n"
    return text


if __name__ == "__main__":
    print(run())
