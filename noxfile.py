"""Developer tasks. `python3 -m pip install "nox[uv]" && python3 -m nox -s <session>`."""

from __future__ import annotations

import configparser
import re
import shutil
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "typing", "tests"]

PYPROJECT = nox.project.load_toml("pyproject.toml")


# pytest-xdist: the suite mostly waits on child processes (mlflow servers, `kedro run`, child
# Pythons), so more workers than the 2 cores of the machines we measure on pay off; each
# worker starts its own session-scoped servers.  `--dist loadgroup` keeps a module that
# starts a server of its own on one worker (tests/conftest.py).  `-- -n 0` runs in-process.
PARALLEL = ("-n", "4", "--dist", "loadgroup")


def _test_environment(session: nox.Session) -> None:
    session.install("-e", ".[kedro]", *nox.project.dependency_groups(PYPROJECT, "test"))
    # kedro-mlflow 2.0.3, the reference trackcfg's Kedro datasets are compared with, kept out
    # of the test environment (its hooks would track every Kedro test's pipeline too): the
    # tests that compare put this folder on a subprocess's PYTHONPATH.
    reference = Path(session.virtualenv.location) / "kedro-mlflow-2.0.3"
    if not (reference / "kedro_mlflow").is_dir():
        session.run_install(
            "uv", "pip", "install", "--quiet", "--no-deps", "--target", str(reference),
            "kedro-mlflow==2.0.3", external=True,
        )  # fmt: skip
    session.env["TRACKCFG_TEST_KEDRO_MLFLOW_PATH"] = str(reference)
    # Bytecode for every installed module, and written for the repository's own: uv does not
    # compile at install, and where PYTHONDONTWRITEBYTECODE is set (some sandboxes, CI
    # images) every child Python of the suite (servers, `kedro run`, scripts: hundreds of
    # them) would compile mlflow from source again: 4.4 s of CPU per `import mlflow` instead
    # of 1.6 s.  compileall skips what is up to date, so a reused environment costs seconds.
    session.env["PYTHONDONTWRITEBYTECODE"] = ""
    folders = [*Path(session.virtualenv.location).glob("lib/python3*/site-packages"), reference]
    session.run(
        # Not in project templates (kedro new would copy their __pycache__ folders).
        "python", "-m", "compileall", "-q", "-j", "0", "-x", "/templates/", *map(str, folders),
        silent=True, success_codes=[0, 1],  # 1: a file that is not Python (a template's)
    )  # fmt: skip


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite, against real MLflow stores (SQLite, `mlflow server`) and Kedro."""
    _test_environment(session)
    session.run("pytest", *PARALLEL, *(session.posargs or ["-q"]))


@nox.session
def quick(session: nox.Session) -> None:
    """The tests not marked slow (no server, Kedro project or child process): the quick
    loop while working; `nox -s tests` before pushing."""
    _test_environment(session)
    session.run("pytest", *PARALLEL, "-m", "not slow", *(session.posargs or ["-q"]))


@nox.session
def lint(session: nox.Session) -> None:
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typing(session: nox.Session) -> None:
    session.install("-e", ".[kedro,hydra]", *nox.project.dependency_groups(PYPROJECT, "typing"))
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks, each against its baseline in the same run; writes benchmarks/results.md."""
    # W&B: the peer for the training loop's figures (bench_loop), here only, never a
    # dependency of the package.
    session.install("-e", ".[kedro]", "wandb")
    session.run("python", "benchmarks/run_all.py", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """The main job: a tracked run in the embedded default store, and how to view it."""
    session.install("-e", ".")
    session.run("python", "examples/demo.py", *session.posargs)


@nox.session
def ui(session: nox.Session) -> None:
    """The MLflow UI of the demo's store, on its experiment's runs (`-- --no-browser`,
    `-- --port 5000`: trackcfg ui's options)."""
    session.install("-e", ".")
    # Ctrl-C reaches nox and `trackcfg ui` together; nox's own default (SIGTERM after 0.3 s,
    # SIGKILL 0.2 s later) would not leave trackcfg the time to stop its mlflow server.
    session.run("trackcfg", "ui", "examples/mlflow.yml", *session.posargs, interrupt_timeout=60)


# What the wheel must hold besides the modules, and the entry points it must declare.
WHEEL_FILES = ("trackcfg/templates/mlflow.yml", "trackcfg/py.typed")
ENTRY_POINTS = {
    "console_scripts": {"trackcfg": "trackcfg._cli:main"},
    "kedro.hooks": {"trackcfg": "trackcfg.kedro:hooks"},
    "kedro.project_commands": {"trackcfg": "trackcfg._kedro_cli:commands"},
}
# Run in the fresh virtualenv after the README's snippet: the runs it made, where it made them.
QUICKSTART_RUNS = """\
import sys
from mlflow import MlflowClient
client = MlflowClient(tracking_uri="sqlite:///mlruns/mlflow.db")
runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
names = sorted((r.info.run_name, r.info.status) for r in runs)
print("runs:", names)
assert ("train", "FINISHED") in names and ("sweep", "FINISHED") in names, names
assert sum(name == "trial" for name, _ in names) == 3, names
"""
# `import trackcfg` must not import mlflow; the Kedro entry points must load.
INSTALLED_CHECKS = """\
import sys
from importlib.metadata import entry_points
import trackcfg
assert "mlflow" not in sys.modules, "import trackcfg imported mlflow"
for group in ("kedro.hooks", "kedro.project_commands"):
    (ep,) = [ep for ep in entry_points(group=group) if ep.name == "trackcfg"]
    print(group, ep.value, "->", type(ep.load()).__name__)
"""


def _readme_block(language: str) -> str:
    """The first fenced ```language block of README.md."""
    found = re.search(rf"^```{language}\n(.*?)^```", Path("README.md").read_text(), re.M | re.S)
    if found is None:
        raise ValueError(f"README.md has no ```{language} block")
    return found.group(1)


def _check_distributions(session: nox.Session, dist: Path) -> Path:
    """The sdist and the wheel hold the templates, py.typed and the entry points."""
    (wheel,) = dist.glob("trackcfg-*.whl")
    (sdist,) = dist.glob("trackcfg-*.tar.gz")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points_txt,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        parser = configparser.ConfigParser(delimiters=("=",))
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read_string(archive.read(entry_points_txt).decode())
    missing = [name for name in WHEEL_FILES if name not in names]
    for group, expected in ENTRY_POINTS.items():
        declared = dict(parser[group]) if parser.has_section(group) else {}
        missing += [f"{group}: {k} = {v}" for k, v in expected.items() if declared.get(k) != v]
    with tarfile.open(sdist) as archive:
        in_sdist = {name.partition("/")[2] for name in archive.getnames()}
    missing += [f"sdist: {n}" for n in (*WHEEL_FILES, "pyproject.toml") if n not in in_sdist]
    if missing:
        session.error(f"{wheel.name} / {sdist.name} lack: {', '.join(missing)}")
    session.log(f"{wheel.name}: templates, py.typed and the 3 entry points are there")
    return wheel


@nox.session
def package(session: nox.Session) -> None:
    """Build the sdist and (from it) the wheel; install the wheel with the kedro extra in a
    fresh virtualenv and run, from there, `trackcfg --help` and the README's quick example."""
    session.install("uv")
    dist = Path(session.create_tmp()) / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    session.run("uv", "build", "--out-dir", str(dist))
    wheel = _check_distributions(session, dist)

    # Outside the repository: its .git would make the repository the quick example's
    # project root (and its mlruns/ the store).
    work = Path(tempfile.mkdtemp(prefix="trackcfg-package-"))
    try:
        venv = work / "venv"
        session.run("uv", "venv", "--quiet", "--python", sys.executable, str(venv))
        python = str(venv / "bin" / "python")
        session.run("uv", "pip", "install", "--quiet", "--python", python, f"{wheel}[kedro]")
        project = work / "project"
        project.mkdir()
        (project / "mlflow.yml").write_text(_readme_block("yaml"))
        (project / "quickstart.py").write_text(_readme_block("python"))
        with session.chdir(project):
            session.run(str(venv / "bin" / "trackcfg"), "--help", external=True)
            session.run(python, "-c", INSTALLED_CHECKS, external=True)
            session.run(python, "quickstart.py", external=True)
            session.run(python, "-c", QUICKSTART_RUNS, external=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
