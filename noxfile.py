"""Developer tasks. `python3 -m pip install "nox[uv]" && python3 -m nox -s <session>`."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "typing", "tests"]

PYPROJECT = nox.project.load_toml("pyproject.toml")


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite, against real MLflow stores (SQLite, `mlflow server`) and Kedro."""
    session.install("-e", ".[kedro]", *nox.project.dependency_groups(PYPROJECT, "test"))
    session.run("pytest", *(session.posargs or ["-q"]))


@nox.session
def lint(session: nox.Session) -> None:
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typing(session: nox.Session) -> None:
    session.install("-e", ".[kedro]", *nox.project.dependency_groups(PYPROJECT, "typing"))
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks, each against its baseline in the same run; writes benchmarks/results.md."""
    session.install("-e", ".[kedro]")
    session.run("python", "benchmarks/run_all.py", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """The main job: a tracked run in the embedded default store, and how to view it."""
    session.install("-e", ".")
    session.run("python", "examples/demo.py", *session.posargs)
