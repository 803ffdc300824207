"""The Kedro hooks on a real Kedro project, run as a user runs it.

The project is generated once per test session with ``kedro new`` (offline, built-in
template), its pipeline registry replaced by ``kedro_pipelines.py``, and copied for each
test.  CLI behaviours run ``kedro run`` in a subprocess; several-runs-per-process behaviours
run ``KedroSession.create(...).run()`` in this process.  Results are read back from the
project's store with ``MlflowClient``.

Every ``kedro run`` subprocess imports mlflow (seconds on a loaded machine), so the CLI tests
each check several things about one run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    copy_store,
    header_providers_module,
    read_runs,
    run_python,
    store_uri,
    write,
)

kedro = pytest.importorskip("kedro")

PACKAGE = "tracked_demo"
KEDRO = str(Path(sys.executable).with_name("kedro"))
# Runs the command that follows with SIGINT at its default, as a shell runs a foreground job.
FOREGROUND = [
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])",
]
TIMEOUT = 240
PARAMETERS = """\
lr: 0.1
alpha: 2
model:
  depth: 3
  kind: tree
"""


# --------------------------------------------------------------------------------------------
# Fixtures and helpers.


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    # Telemetry would try the network at every command; wide logs keep messages on one line.
    env.update(KEDRO_DISABLE_TELEMETRY="1", COLUMNS="250", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def kedro_template(tmp_path_factory: pytest.TempPathFactory, migrated_sqlite_db: Path) -> Path:
    """A generated Kedro project with the test pipelines and an empty, migrated store."""
    parent = tmp_path_factory.mktemp("kedro-template")
    subprocess.run(
        [KEDRO, "new", "--name", "tracked-demo", "--tools", "none", "--example", "n", "-tc", "no"],
        cwd=parent,
        env=_env(),
        check=True,
        capture_output=True,
        timeout=TIMEOUT,
    )
    project = parent / "tracked-demo"
    shutil.copy(
        Path(__file__).with_name("kedro_pipelines.py"),
        project / "src" / PACKAGE / "pipeline_registry.py",
    )
    (project / "conf" / "base" / "parameters.yml").write_text(PARAMETERS)
    # A fresh SQLite store costs seconds of migrations in every `kedro run`: start migrated.
    copy_store(migrated_sqlite_db, project / "mlruns")
    return project


@pytest.fixture
def project(kedro_template: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(kedro_template, tmp_path / "tracked-demo"))


@pytest.fixture
def in_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Kedro in this process: no telemetry; no MLflow active run or URI left to later tests."""
    import mlflow

    monkeypatch.setenv("KEDRO_DISABLE_TELEMETRY", "1")
    yield
    assert mlflow.active_run() is None
    mlflow.set_tracking_uri(None)  # type: ignore[arg-type]


def kedro_cli(
    project: Path, *args: str, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KEDRO, *args],
        cwd=cwd or project,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def runs(project: Path) -> list[Any]:
    """Every run in the project's store, oldest first."""
    return read_runs(store_uri(project), oldest_first=True)


def only(found: list[Any]) -> Any:
    """The single run without a parent (the pipeline's), after checking there is one."""
    top = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    assert len(top) == 1, [r.info.run_name for r in found]
    return top[0]


def run_in_process(project: Path, *, env: str | None = None, **kwargs: Any) -> Any:
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    runtime_params = kwargs.pop("runtime_params", None)
    with KedroSession.create(project_path=project, env=env, runtime_params=runtime_params) as s:
        return s.run(**kwargs)


# --------------------------------------------------------------------------------------------
# kedro run, as a subprocess.


def test_kedro_run_thread_runner_logs_one_reproducible_run(project: Path) -> None:
    """`kedro run --env --params --runner ThreadRunner` from a subfolder: one FINISHED run in
    <root>/mlruns named after the pipeline, the effective params once each, the command line,
    Kedro version, env and session id as tags, node metrics and child runs from worker
    threads inside it; mlflow.yml read through Kedro's loader, with the project's resolvers
    (Kedro allows ${oc.env:...} outside credentials once settings.py registers it)."""
    settings = project / "src" / PACKAGE / "settings.py"
    settings.write_text(
        settings.read_text()
        + "\nfrom omegaconf.resolvers import oc\n"
        + 'CONFIG_LOADER_ARGS["custom_resolvers"] = {"oc.env": oc.env}\n'
    )
    write(
        project / "conf" / "test" / "mlflow.yml",
        """\
        tracking:
          experiment:
            name: ${oc.env:DEMO_EXPERIMENT}
        """,
    )
    args = ["run", "--pipelines", "train", "--env", "test", "--params", "lr=0.5,model.depth=5"]
    args += ["--runner", "ThreadRunner"]
    result = kedro_cli(project, *args, cwd=project / "src", DEMO_EXPERIMENT="nightly")
    assert result.returncode == 0, result.stderr

    found = runs(project)
    run = only(found)
    assert run.info.run_name == "train"
    assert run.info.status == "FINISHED"
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=store_uri(project))
    assert client.get_experiment(run.info.experiment_id).name == "nightly"
    assert run.data.params == {
        "lr": "0.5",
        "model": str({"depth": 5, "kind": "tree"}),
        "parameters": str({"lr": 0.5, "alpha": 2, "model": {"depth": 5, "kind": "tree"}}),
    }
    tags = run.data.tags
    assert tags["kedro.command"] == "kedro " + " ".join(args)
    assert tags["kedro.version"] == kedro.__version__
    assert tags["kedro.env"] == "test"
    assert tags["kedro.session_id"] not in ("", run.info.run_id)
    assert tags["fit.thread"].startswith("ThreadPoolExecutor")
    # kedro-mlflow's tags too: a migrated project's saved searches keep finding its runs.
    assert tags["kedro_command"] == "kedro run --pipeline=train"
    assert tags["pipeline_names"] == "['train']"
    assert (tags["env"], tags["kedro_version"]) == ("test", kedro.__version__)
    assert tags["run_id"] == tags["kedro.session_id"]
    assert tags["project_path"] == project.as_posix()
    assert "'lr': 0.5" in tags["runtime_params"]
    assert "ThreadRunner" in tags["runner"]
    assert "0x" not in tags["runner"]
    assert not {"tags", "node_names", "from_nodes", "load_versions"} & set(tags)  # empty
    saved = client.search_runs(
        [run.info.experiment_id], filter_string="tags.kedro_command LIKE '%run%'"
    )
    assert [r.info.run_id for r in saved] == [run.info.run_id]
    assert run.data.metrics == pytest.approx({"loss": 1.0, "score": 1.75})
    children = [r for r in found if r is not run]
    assert [(c.info.run_name, c.data.tags["mlflow.parentRunId"]) for c in children] == [
        ("trial", run.info.run_id)
    ]
    assert not (project / "src" / "mlruns").exists()
    assert not (project / "src" / "mlflow.db").exists()


def test_kedro_run_parallel_runner_nodes_log_into_the_pipeline_run(project: Path) -> None:
    """ParallelRunner: nodes run in worker processes and their plain mlflow.log_metric (and
    child runs) land in the pipeline's run, which ends FINISHED."""
    process = subprocess.Popen(
        [KEDRO, "run", "--runner", "ParallelRunner"],
        cwd=project,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output, _ = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 0, output

    found = runs(project)
    run = only(found)
    assert (run.info.run_name, run.info.status) == ("__default__", "FINISHED")
    assert run.data.metrics == pytest.approx({"loss": 0.2, "score": 0.35})
    assert run.data.tags["fit.pid"] != str(process.pid)
    assert run.data.tags["report.pid"] != str(process.pid)
    assert run.data.tags["kedro.command"] == "kedro run --runner ParallelRunner"
    trial = [r for r in found if r is not run]
    assert [t.data.tags["mlflow.parentRunId"] for t in trial] == [run.info.run_id]
    assert trial[0].data.metrics == {"trial_loss": 0.05}


def test_kedro_run_async_node_error_fails_the_run_and_propagates(project: Path) -> None:
    """--async, a node raises: kedro run fails with the node's error, the run ends FAILED
    with the params logged before the failure."""
    result = kedro_cli(project, "run", "--pipelines", "fail", "--async")
    assert result.returncode != 0
    assert "node failed on purpose with 2" in result.stdout + result.stderr

    run = only(runs(project))
    assert (run.info.run_name, run.info.status) == ("fail", "FAILED")
    assert run.data.params == {"alpha": "2"}
    assert run.data.tags["kedro.command"] == "kedro run --pipelines fail --async"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_kedro_run_signal_ends_the_run_killed(
    project: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    """SIGTERM or Ctrl-C while a node runs: kedro run stops promptly, the run ends KILLED.

    ``kedro run`` is started as a terminal's foreground job is, SIGINT at its default, also
    when this test runs as a background job (which inherits SIGINT ignored: Ctrl-C does not
    reach background jobs, and trackcfg's hooks leave the user's process its disposition)."""
    marker = tmp_path / "node-started"
    process = subprocess.Popen(
        [*FOREGROUND, KEDRO, "run", "--pipelines", "slow"],
        cwd=project,
        env=_env(DEMO_MARKER=str(marker)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while not marker.exists():
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "the node never started"
            time.sleep(0.2)
        process.send_signal(sig)
        started = time.monotonic()
        process.wait(timeout=60)
        assert time.monotonic() - started < 60
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    # SIGTERM is handed on once the run has ended: the process dies by it, as without trackcfg
    # (143 in a shell); Ctrl-C ends as click ends it ("Aborted!", 1).
    assert process.returncode == (-signal.SIGTERM if sig == signal.SIGTERM else 1)

    run = only(runs(project))
    assert (run.info.run_name, run.info.status) == ("slow", "KILLED")


# --------------------------------------------------------------------------------------------
# Other kedro commands, as subprocesses (none of them needs mlflow).


def kedro_modules(project: Path, *args: str) -> tuple[int, set[str], str]:
    """Run ``kedro *args`` in a fresh interpreter; its exit code, the modules it imported
    (``-X importtime`` misses modules loaded by entry points), and its output."""
    code = (
        "import sys, runpy\n"
        f"sys.argv = ['kedro', *{list(args)!r}]\n"
        "try:\n"
        "    runpy.run_module('kedro', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "print('MODULES', ' '.join(sorted(sys.modules)))\n"
        "sys.exit(code)\n"
    )
    result = run_python("-c", code, cwd=project, env=_env(), timeout=TIMEOUT)
    lines = result.stdout.splitlines()
    modules = set(lines[-1].removeprefix("MODULES ").split()) if lines else set()
    return result.returncode, modules, result.stdout + result.stderr


def test_kedro_help_in_the_project_lists_the_commands_without_importing_mlflow(
    project: Path,
) -> None:
    code, modules, output = kedro_modules(project, "--help")
    assert code == 0, output
    assert "trackcfg" in output
    assert "trackcfg._kedro_cli" in modules
    assert not {m for m in modules if m.split(".")[0] == "mlflow"}


def test_disable_hooks_for_plugins_turns_tracking_off(project: Path) -> None:
    """DISABLE_HOOKS_FOR_PLUGINS = ("trackcfg",): no run, and mlflow is not even imported
    (Kedro still imports trackcfg.kedro to read the entry point, then unregisters it)."""
    settings = project / "src" / PACKAGE / "settings.py"
    settings.write_text(settings.read_text() + '\nDISABLE_HOOKS_FOR_PLUGINS = ("trackcfg",)\n')
    code, modules, output = kedro_modules(project, "run", "--pipelines", "plain")
    assert code == 0, output
    assert "trackcfg.kedro" in modules  # so importing it does not import mlflow either
    assert not {m for m in modules if m.split(".")[0] == "mlflow"}
    # Nor trackcfg's session, loader or store: the hooks load them when they first run.
    assert {"trackcfg._session", "trackcfg._loading", "trackcfg._backend"} & modules == set()
    assert runs(project) == []


def test_kedro_run_with_a_typo_in_mlflow_yml_prints_the_problem_and_its_line_only(
    project: Path,
) -> None:
    """No traceback: the problem with file:line and the fix, on stderr; exit status 1;
    no run."""
    bad = write(project / "conf" / "base" / "mlflow.yml", "tracking:\n  run:\n    nestd: true\n")
    result = kedro_cli(project, "run", "--pipelines", "plain")
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        f"Error: invalid trackcfg configuration: {bad}:3: 'tracking.run.nestd': unknown key; "
        "did you mean 'nested'?"
    ]
    assert "Traceback" not in result.stdout
    assert runs(project) == []


def test_kedro_trackcfg_show_and_check_read_through_kedros_loader_and_env(
    project: Path,
) -> None:
    """Values resolved by Kedro (``${globals:...}`` of ``--env prod``), each named at its
    file:line; ``check`` on the same config, and a typo refused with its line."""
    write(project / "conf" / "prod" / "globals.yml", "store: prod-runs\n")
    prod = write(
        project / "conf" / "prod" / "mlflow.yml",
        """\
        tracking:
          experiment:
            name: from-prod
        server:
          mlflow_tracking_uri: ${globals:store}
        """,
    )
    shown = kedro_cli(project, "trackcfg", "show", "--env", "prod", "--json")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    # Before the JSON, only Kedro's start-up line (logged by its CLI before any plugin runs;
    # Kedro's default logging writes to stdout): nothing the command's loading logged.
    before = shown.stdout[: shown.stdout.index("{")]
    assert "as logging configuration" in before
    assert "WARNING" not in before
    data = json.loads(shown.stdout[shown.stdout.index("{") :])
    assert data["env"] == "prod"
    assert data["files"] == [str(prod)]
    assert data["keys"]["server.mlflow_tracking_uri"] == {
        "value": "prod-runs",
        "source": "file",
        "where": "conf/prod/mlflow.yml:5",
    }
    assert data["resolved"]["experiment_name"] == "from-prod"

    checked = kedro_cli(project, "trackcfg", "check", "--env", "prod")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "[ ok ] config: valid (conf/prod/mlflow.yml)" in checked.stdout
    assert "[ ok ] experiment: 'from-prod' does not exist; it will be created" in checked.stdout
    assert checked.stdout.rstrip().endswith("a run would start")

    write(prod, "tracking:\n  experiment:\n    nmae: x\n")
    refused = kedro_cli(project, "trackcfg", "check", "--env", "prod")
    assert refused.returncode == 1
    assert refused.stderr.splitlines() == [
        f"Error: a run would not start: config: invalid trackcfg configuration: {prod}:3: "
        "'tracking.experiment.nmae': unknown key; did you mean 'name'?; fix: fix the file "
        "and line named above"
    ]
    assert not (project / "prod-runs").exists()  # nothing created


def test_kedro_trackcfg_show_json_is_all_that_stdout_holds(project: Path) -> None:
    """``kedro trackcfg show --json | jq``: what the project logs or prints while it loads
    goes to stderr.  Its logging.yml writes to stdout (Kedro's own start-up line, logged
    before any plugin runs, is kept out by its ``kedro: WARNING``), and a project hook prints
    and logs a warning while the context is made."""
    write(
        project / "conf" / "logging.yml",
        """\
        version: 1
        disable_existing_loggers: false
        formatters:
          plain: {format: "%(levelname)s %(name)s: %(message)s"}
        handlers:
          console: {class: logging.StreamHandler, formatter: plain, stream: ext://sys.stdout}
        loggers:
          kedro: {level: WARNING}
        root: {level: INFO, handlers: [console]}
        """,
    )
    write(
        project / "src" / PACKAGE / "loud_hooks.py",
        """\
        import logging

        from kedro.framework.hooks import hook_impl


        class LoudHooks:
            @hook_impl
            def after_context_created(self, context):
                print("a project hook prints while the project loads")
                logging.getLogger(__name__).warning("a project hook logs a warning")
        """,
    )
    settings = project / "src" / PACKAGE / "settings.py"
    settings.write_text(
        settings.read_text()
        + f"\nfrom {PACKAGE}.loud_hooks import LoudHooks\n\nHOOKS = (LoudHooks(),)\n"
    )
    prod = write(project / "conf" / "prod" / "mlflow.yml", "tracking:\n  run:\n    name: x\n")

    shown = kedro_cli(project, "trackcfg", "show", "--env", "prod", "--json")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    data = json.loads(shown.stdout)
    assert (data["env"], data["files"]) == ("prod", [str(prod)])
    assert "a project hook prints while the project loads" in shown.stderr
    assert f"WARNING {PACKAGE}.loud_hooks: a project hook logs a warning" in shown.stderr

    # The same project's text report: the lines on stdout are show's own.
    text = kedro_cli(project, "trackcfg", "show", "--env", "prod")
    assert text.returncode == 0, text.stdout + text.stderr
    assert "a project hook" not in text.stdout
    assert "a project hook prints while the project loads" in text.stderr


def test_without_kedro_the_import_names_the_extra_to_install() -> None:
    script = """
        import sys

        class NoKedro:  # as if Kedro were not installed
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] == "kedro":
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)

        sys.meta_path.insert(0, NoKedro())
        for module in ("trackcfg.kedro.datasets", "trackcfg.kedro"):
            try:
                __import__(module)
            except ImportError as exc:
                print(type(exc).__name__, exc)
    """
    result = run_python("-c", textwrap.dedent(script))
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.splitlines()
        == [
            "ModuleNotFoundError trackcfg.kedro needs Kedro, which is not installed: pip install "
            '"trackcfg[kedro]"'
        ]
        * 2
    )


def test_kedro_trackcfg_init_writes_conf_env_mlflow_yml(project: Path) -> None:
    from trackcfg import load_config

    result = kedro_cli(project, "trackcfg", "init", "--env", "staging")
    assert result.returncode == 0, result.stderr
    written = project / "conf" / "staging" / "mlflow.yml"
    config = load_config(project / "conf", env="staging")
    assert config.files[-1] == written
    assert config.tracking.experiment.name == PACKAGE

    again = kedro_cli(project, "trackcfg", "init", "--env", "staging")
    assert again.returncode != 0
    assert "--force" in again.stdout + again.stderr


def test_kedro_trackcfg_ui_reads_the_config_through_kedro(project: Path) -> None:
    """The tracking URI comes from Kedro's loader (its env and resolvers): an http server's
    UI is that server, checked (nothing listens on port 9) without serving anything."""
    write(project / "conf" / "prod" / "globals.yml", "server: http://127.0.0.1:9\n")
    write(
        project / "conf" / "prod" / "mlflow.yml",
        """\
        server:
          mlflow_tracking_uri: ${globals:server}
        """,
    )
    result = kedro_cli(project, "trackcfg", "ui", "--env", "prod", "--no-browser")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "MLflow UI" not in result.stdout
    assert "http://127.0.0.1:9 not reachable" in result.stderr
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------------------------
# KedroSession in this process.


@pytest.mark.usefixtures("in_process")
def test_two_sessions_in_one_process_give_two_runs_and_leave_none_active(project: Path) -> None:
    """Two KedroSession runs: two runs in the experiment named after the package, each
    tagged with the equivalent kedro run command; no active run or URI left behind."""
    run_in_process(project, pipeline_names=["train"], runtime_params={"lr": 0.3})
    run_in_process(project, pipeline_names=["plain"])

    found = [r for r in runs(project) if "mlflow.parentRunId" not in r.data.tags]
    assert [(r.info.run_name, r.info.status) for r in found] == [
        ("train", "FINISHED"),
        ("plain", "FINISHED"),
    ]
    assert found[0].info.run_id != found[1].info.run_id
    assert found[0].data.params["lr"] == "0.3"
    assert found[0].data.tags["kedro.command"] == "kedro run --pipelines train --params lr=0.3"
    assert found[0].data.tags["kedro.env"] == "local"
    import mlflow

    experiment = mlflow.MlflowClient(tracking_uri=store_uri(project)).get_experiment(
        found[0].info.experiment_id
    )
    assert experiment.name == PACKAGE
    assert "MLFLOW_TRACKING_URI" not in os.environ


@pytest.mark.usefixtures("in_process")
def test_loading_a_context_does_not_touch_the_store(project: Path) -> None:
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    shutil.rmtree(project / "mlruns")
    bootstrap_project(project)
    session = KedroSession.create(project_path=project)
    with session:
        context = session.load_context()
        assert context.catalog.load("params:lr") == 0.1
    assert not (project / "mlruns").exists()


@pytest.mark.usefixtures("in_process")
def test_disabled_pipeline_is_not_tracked(project: Path) -> None:
    write(
        project / "conf" / "local" / "mlflow.yml",
        """\
        tracking:
          disable_tracking:
            pipelines: [plain]
        """,
    )
    run_in_process(project, pipeline_names=["plain"])
    assert runs(project) == []


@pytest.mark.usefixtures("in_process")
def test_credentials_come_from_kedro_credentials_for_the_run_only(project: Path) -> None:
    write(
        project / "conf" / "local" / "credentials.yml",
        """\
        demo_server:
          DEMO_API_TOKEN: s3cret
        """,
    )
    write(project / "conf" / "base" / "mlflow.yml", "server:\n  credentials: demo_server\n")
    run_in_process(project, pipeline_names=["secret"])
    run = only(runs(project))
    assert run.data.tags["token.length"] == "6"
    assert "DEMO_API_TOKEN" not in os.environ


@pytest.mark.usefixtures("in_process")
def test_invalid_mlflow_yml_is_reported_with_its_file(project: Path) -> None:
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from trackcfg import ConfigError

    bad = write(project / "conf" / "local" / "mlflow.yml", "tracking:\n  run:\n    nestd: true\n")
    bootstrap_project(project)
    session = KedroSession.create(project_path=project)
    with session, pytest.raises(ConfigError, match="did you mean 'nested'") as caught:
        session.load_context()
    assert f"{bad}:3: 'tracking.run.nestd': unknown key" in str(caught.value)


@pytest.mark.usefixtures("in_process")
def test_active_run_gets_a_child_run_and_stays_open(project: Path) -> None:
    import mlflow

    mlflow.set_tracking_uri(store_uri(project))
    with mlflow.start_run(experiment_id="0") as outer:
        run_in_process(project, pipeline_names=["plain"])
        active = mlflow.active_run()
        assert active is not None
        assert active.info.run_id == outer.info.run_id
        child = [r for r in runs(project) if r.info.run_id != outer.info.run_id]
        assert [(r.info.run_name, r.info.status) for r in child] == [("plain", "FINISHED")]
        assert child[0].data.tags["mlflow.parentRunId"] == outer.info.run_id
        client = mlflow.MlflowClient(tracking_uri=store_uri(project))
        assert client.get_run(outer.info.run_id).info.status == "RUNNING"


@pytest.mark.usefixtures("in_process")
def test_mlflow_run_id_is_attached_to_with_nested_false(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An orchestrator's run (MLFLOW_RUN_ID) with run.nested false: the pipeline logs into
    it and leaves it RUNNING."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=store_uri(project))
    outer = client.create_run("0").info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", outer)
    write(project / "conf" / "local" / "mlflow.yml", "tracking:\n  run:\n    nested: false\n")
    run_in_process(project, pipeline_names=["plain"])

    assert [r.info.run_id for r in runs(project)] == [outer]
    attached = client.get_run(outer)
    assert attached.info.status == "RUNNING"
    assert attached.data.params == {"alpha": "2"}
    assert attached.data.tags["kedro.command"] == "kedro run --pipelines plain"
    assert os.environ["MLFLOW_RUN_ID"] == outer


@pytest.mark.usefixtures("in_process")
def test_interrupted_run_is_killed_when_the_next_pipeline_starts(project: Path) -> None:
    """Ctrl-C in a notebook skips Kedro's end hooks: the next run ends the old one KILLED."""
    with pytest.raises(KeyboardInterrupt):
        run_in_process(project, pipeline_names=["interrupt"])
    run_in_process(project, pipeline_names=["plain"])

    found = runs(project)
    assert [(r.info.run_name, r.info.status) for r in found] == [
        ("interrupt", "KILLED"),
        ("plain", "FINISHED"),
    ]


@pytest.mark.usefixtures("in_process")
def test_request_header_provider_gets_the_kedro_context(
    project: Path,
    mlflow_server: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    http_requests: list[Any],
) -> None:
    """kedro-mlflow's ``pass_context: true``: the provider is built with ``kedro_context=``,
    and every request of the pipeline's run carries its headers."""
    import mlflow

    monkeypatch.syspath_prepend(str(header_providers_module(tmp_path / "modules")))
    write(
        project / "conf" / "local" / "mlflow.yml",
        f"""\
        server:
          mlflow_tracking_uri: {mlflow_server}
          request_header_provider:
            type: trackcfg_test_headers.TeamHeader
            pass_context: true
            init_kwargs:
              team: vision
        tracking:
          experiment:
            name: kedro-headers
        """,
    )
    run_in_process(project, pipeline_names=["plain"])

    sent = [r for r in http_requests if r.url.startswith(mlflow_server)]
    assert len(sent) >= 3
    assert {(r.headers.get("X-Team"), r.headers.get("X-Kedro-Project")) for r in sent} == {
        ("vision", project.name)
    }
    client = mlflow.MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("kedro-headers")
    assert experiment is not None
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"


def test_kedro_trackcfg_init_over_a_base_file_keeps_it_in_effect(project: Path) -> None:
    """Issue 17: `kedro trackcfg init` over a conf/base/mlflow.yml writes conf/local/mlflow.yml
    with every key commented out and says so; the next `kedro run` still flattens `model`,
    and tells where its run went."""
    from trackcfg import load_config

    write(
        project / "conf" / "base" / "mlflow.yml",
        """\
        tracking:
          params:
            dict_params:
              flatten: true
        """,
    )
    before = [(k, v, str(s)) for k, v, s in load_config(project / "conf").provenance()]

    result = kedro_cli(project, "trackcfg", "init")

    assert result.returncode == 0, result.stderr
    assert (
        f"wrote {Path('conf/local/mlflow.yml')}: every key commented out, so "
        f"{Path('conf/base/mlflow.yml')} keeps its values (uncomment a key to change it here)"
    ) in result.stdout.splitlines()
    after = load_config(project / "conf")
    assert after.files[-1] == project / "conf" / "local" / "mlflow.yml"
    assert [(k, v, str(s)) for k, v, s in after.provenance()] == before

    ran = kedro_cli(project, "run", "--pipelines", "train")
    assert ran.returncode == 0, ran.stderr
    run = only(runs(project))
    assert {k: v for k, v in run.data.params.items() if k.startswith("model")} == {
        "model.depth": "3",
        "model.kind": "tree",
    }
    assert "\N{RUNNER} View run train with: " in ran.stdout


# --------------------------------------------------------------------------------------------
# Issue 16: long values trackcfg generates (item 14), SIGTERM with ParallelRunner (item 16).


def test_kedro_run_long_params_command_line_is_shortened_visibly_and_kept_whole(
    project: Path, tmp_path: Path
) -> None:
    """`kedro run --params` of over 9,000 characters (MLflow keeps tags up to 8,000) under
    `long_params_strategy: tag`: the run finishes; `kedro.command` keeps the beginning and
    says where the whole text is (artifact kedro/command.txt), as does the param's tag (artifact
    params/alpha.txt)."""
    import shlex

    import mlflow

    write(
        project / "conf" / "local" / "mlflow.yml",
        "tracking:\n  params:\n    long_params_strategy: tag\n",
    )
    value = "".join(chr(97 + i % 26) for i in range(9000))
    args = ["run", "--pipelines", "plain", "--params", f"alpha={value}"]

    result = kedro_cli(project, *args)

    assert result.returncode == 0, result.stderr[-3000:]
    run = only(runs(project))
    assert (run.info.run_name, run.info.status) == ("plain", "FINISHED")
    command = shlex.join(["kedro", *args])
    note = f"\u2026 ({len(command)} characters; full text in artifact kedro/command.txt)"
    assert run.data.tags["kedro.command"] == command[: 8000 - len(note)] + note
    note = "\u2026 (9000 characters; full text in artifact params/alpha.txt)"
    assert run.data.tags["alpha"] == value[: 8000 - len(note)] + note
    assert "alpha" not in run.data.params
    client = mlflow.MlflowClient(tracking_uri=store_uri(project))
    for path, whole in [("kedro/command.txt", command), ("params/alpha.txt", value)]:
        local = client.download_artifacts(run.info.run_id, path, str(tmp_path))
        assert Path(local).read_text() == whole


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (Linux's /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _processes_with(variable: str, value: str) -> list[int]:
    """The processes whose environment has ``variable=value`` (a run's processes, orphans
    included), read from /proc."""
    entry = f"{variable}={value}".encode()
    found = []
    for folder in Path("/proc").iterdir():
        if folder.name.isdigit():
            try:
                environ = (folder / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if entry in environ and _running(int(folder.name)):
                found.append(int(folder.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_kedro_run_parallel_runner_sigterm_stops_the_workers_and_dies_by_the_signal(
    project: Path, tmp_path: Path
) -> None:
    """ParallelRunner, SIGTERM to `kedro run` while a node runs in a worker (which the signal
    does not reach): the process ends within seconds (the node takes a minute) and dies by
    SIGTERM; the worker is stopped before the node's output is saved; no process of the run
    is left (workers, the runner's manager); the run ends KILLED."""
    output = tmp_path / "result.txt"
    write(
        project / "conf" / "base" / "catalog.yml",
        f"result:\n  type: {PACKAGE}.pipeline_registry.TextFile\n  filepath: {output}\n",
    )
    marker = tmp_path / "node-started"
    with (tmp_path / "output.txt").open("w") as log:
        process = subprocess.Popen(
            [KEDRO, "run", "--pipelines", "slow_output", "--runner", "ParallelRunner"],
            cwd=project,
            env=_env(DEMO_MARKER=str(marker)),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    worker = 0
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (marker.exists() and marker.read_text()):
            assert process.poll() is None, (tmp_path / "output.txt").read_text()
            assert time.monotonic() < deadline, "the node never started"
            time.sleep(0.2)
        worker = int(marker.read_text())
        assert worker != process.pid
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=40)  # the node would end after 60 s
        except subprocess.TimeoutExpired:
            pytest.fail("kedro run still running 40 s after SIGTERM")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if worker and _running(worker):
            os.kill(worker, signal.SIGKILL)
    output_text = (tmp_path / "output.txt").read_text()
    assert process.returncode == -signal.SIGTERM, output_text
    assert not _running(worker)
    assert not output.exists()  # and never will be: its worker is gone
    assert _processes_with("DEMO_MARKER", str(marker)) == []
    run = only(runs(project))
    assert (run.info.run_name, run.info.status) == ("slow_output", "KILLED")


@pytest.mark.usefixtures("in_process")
def test_km_random_name_from_kedro_mlflows_template_names_the_run(project: Path) -> None:
    """kedro-mlflow's template suggests run.name: "${km.random_name:}": under Kedro it is
    a random run name (the resolver is registered with OmegaConf; settings.py unchanged),
    and a resolver Kedro does not know is a ConfigError naming the file."""
    import re

    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from trackcfg import ConfigError

    config = write(
        project / "conf" / "local" / "mlflow.yml", 'tracking:\n  run:\n    name: "${nope:}"\n'
    )
    bootstrap_project(project)
    session = KedroSession.create(project_path=project)
    with session, pytest.raises(ConfigError) as caught:
        session.load_context()
    assert str(caught.value).startswith(
        f"invalid trackcfg configuration: {config}: (top level): Kedro's config loader cannot "
        "read the 'mlflow' config: "
    )

    write(config, 'tracking:\n  run:\n    name: "${km.random_name:}"\n')
    run_in_process(project, pipeline_names=["plain"])
    run_in_process(project, pipeline_names=["plain"])

    names = [r.info.run_name for r in runs(project)]
    assert len(names) == 2
    assert all(re.fullmatch(r"[a-z]+-[a-z]+-\d{1,3}", name) for name in names), names
    assert names[0] != names[1]


def test_kedro_trackcfg_sync_reads_the_journal_folder_through_kedro(project: Path) -> None:
    """``kedro trackcfg sync`` reads ``tracking.logging.journal_dir`` through Kedro's loader
    (its environment and globals): the journal there is listed by ``--dry-run --json`` for the
    project's store, and left as it is."""
    import json

    from trackcfg._journal import FORMAT_VERSION

    write(project / "conf" / "prod" / "globals.yml", "journals: var/journals\n")
    write(
        project / "conf" / "prod" / "mlflow.yml",
        """\
        tracking:
          logging:
            journal_dir: ${globals:journals}
        """,
    )
    run_id = "0123456789abcdef0123456789abcdef"
    journal = project / "var" / "journals" / f"{run_id}.0a1b2c3d4e5f.journal"
    journal.parent.mkdir(parents=True)
    header = {
        "trackcfg_journal": FORMAT_VERSION,
        "run_id": run_id,
        "tracking_uri": store_uri(project),
    }
    record = {"s": 1, "m": [["loss", 0.5, 1_700_000_000_000, 0]]}
    journal.write_text(json.dumps(header) + "\n" + json.dumps(record) + "\n")

    result = kedro_cli(project, "trackcfg", "sync", "--env", "prod", "--dry-run", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout[result.stdout.index("{") :])
    assert data["journal_dir"] == str(project / "var" / "journals")
    assert data["tracking_uri"] == store_uri(project)
    assert [(r["run_id"], r["state"], r["points"]) for r in data["results"]] == [
        (run_id, "would send", 1)
    ]
    assert "Traceback" not in result.stderr
    assert journal.exists()


def test_kedro_mlflow_command_tag_is_rebuilt_as_kedro_mlflow_does() -> None:
    from trackcfg.kedro._tags import kedro_mlflow_tags

    tags = kedro_mlflow_tags(
        {
            "pipeline_names": None,
            "tags": ["a", "b"],
            "node_names": ["n1"],
            "from_nodes": [],
            "from_inputs": ["raw"],
            "load_versions": {"model": "2024-01-01T00.00.00.000Z"},
            "runner": "<kedro.runner.thread_runner.ThreadRunner object at 0x7f00aa>",
            "only_missing_outputs": False,
        }
    )
    assert tags == {
        "tags": "['a', 'b']",
        "node_names": "['n1']",
        "from_inputs": "['raw']",
        "load_versions": "{'model': '2024-01-01T00.00.00.000Z'}",
        "runner": "<kedro.runner.thread_runner.ThreadRunner object>",
        "kedro_command": "kedro run --from-inputs=raw --node=n1 --pipeline=__default__ "
        "--tag=a,b --load-version=model:2024-01-01T00.00.00.000Z",
    }
