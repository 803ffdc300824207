"""The ``trackcfg`` command line: what a user sees (output, exit codes, files written).

Each command runs once as a real subprocess (``python -m trackcfg``, the console script's
click group), ``ui`` included: it starts the one real ``mlflow server`` of this file, which
the HTTP ``check`` tests reuse.  The details run in-process through click's ``CliRunner``.
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import mlflow
import pytest
from click.testing import CliRunner, Result
from helpers import (
    REPO,
    TRACKING_SETTINGS,
    copy_store,
    line_of,
    project_folder,
    read_runs,
    run_python,
    store_uri,
    subprocess_env,
    write,
)

from trackcfg import (
    TrackingConfig,
    TrackingSession,
    load_config,
)
from trackcfg._cli import cli
from trackcfg._cli.init import render_template
from trackcfg._loading import SCHEMA, SECTIONS
from trackcfg.exceptions import ConfigError

TEMPLATE = REPO / "trackcfg" / "templates" / "mlflow.yml"
SECRET = "s3cr3t-Zq9-do-not-print"
UI_HEALTH_TIMEOUT = 90.0


def invoke(*args: str) -> Result:
    """Run the CLI in-process; an unexpected exception fails the test with its traceback."""
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert "Traceback" not in result.output
    return result


def run_trackcfg(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run_python("-m", "trackcfg", *args, cwd=cwd, timeout=timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def post_json(url: str, payload: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        data: dict[str, Any] = json.loads(response.read() or b"{}")
        return data


# --------------------------------------------------------------------------------------------
# The command line itself.


def test_help_is_fast_and_does_not_import_mlflow(tmp_path: Path) -> None:
    """`trackcfg --help` and `trackcfg <command> --help` load no mlflow module, and of
    trackcfg only the command declarations: no configuration, store or attrs module (the
    start-up budget of issue 24)."""
    light = {
        "trackcfg",
        "trackcfg.exceptions",
        "trackcfg._lazy",  # the packages' PEP 562 loader: the standard library only
        "trackcfg._cli",
        "trackcfg._cli.commands",
    }
    for args in (["--help"], *([c, "--help"] for c in ("init", "show", "check", "ui", "sync"))):
        started = time.monotonic()
        done = run_python("-X", "importtime", "-m", "trackcfg", *args, cwd=tmp_path, timeout=60)
        elapsed = time.monotonic() - started
        assert done.returncode == 0, done.stderr
        assert "Usage: trackcfg" in done.stdout
        imported = [line.rpartition("|")[2].strip() for line in done.stderr.splitlines()]
        assert not [m for m in imported if m == "mlflow" or m.startswith("mlflow.")]
        assert {m for m in imported if m.startswith("trackcfg")} == light, args
        assert not [m for m in imported if m in ("attr", "attrs", "cattrs")], args
        assert elapsed < 5, f"trackcfg {' '.join(args)} took {elapsed:.1f} s"


def test_help_lists_every_command() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("init", "show", "check", "ui"):
        assert f"  {command} " in result.stdout


def test_unknown_option_is_a_usage_error() -> None:
    result = invoke("show", "--no-such-option")
    assert result.exit_code == 2
    assert "No such option" in result.stderr


def test_missing_path_is_one_message_and_exit_1(tmp_path: Path) -> None:
    result = invoke("show", str(tmp_path / "nowhere.yml"))
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith("Error: ")
    assert "no such file or folder" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------------------------
# init


def test_init_as_a_subprocess_writes_mlflow_yml_in_the_current_folder(project: Path) -> None:
    done = run_trackcfg("init", cwd=project)
    assert done.returncode == 0, done.stderr
    assert "wrote mlflow.yml" in done.stdout
    config = load_config(project / "mlflow.yml")
    assert config.tracking.experiment.name == "proj"


def test_init_writes_into_conf_env_when_a_conf_folder_exists(project: Path) -> None:
    (project / "conf" / "base").mkdir(parents=True)
    result = invoke("init")
    assert result.exit_code == 0
    target = project / "conf" / "local" / "mlflow.yml"
    assert f"wrote {Path('conf/local/mlflow.yml')}" in result.stdout
    assert target.is_file()
    assert not (project / "mlflow.yml").exists()
    assert load_config(project / "conf", env="local").files == (target,)


def test_init_env_option_picks_the_conf_folder(project: Path) -> None:
    (project / "conf").mkdir()
    result = invoke("init", "--env", "staging")
    assert result.exit_code == 0
    assert (project / "conf" / "staging" / "mlflow.yml").is_file()


def test_init_env_option_without_conf_folder_says_it_is_not_used(project: Path) -> None:
    result = invoke("init", "--env", "staging")
    assert result.exit_code == 0
    assert (project / "mlflow.yml").is_file()
    assert "--env staging is not used" in result.stderr


def test_init_file_loads_with_the_documented_defaults(project: Path) -> None:
    assert invoke("init").exit_code == 0
    config = load_config(project / "mlflow.yml")
    defaults = TrackingConfig()
    expected = attrs.evolve(
        defaults,
        tracking=attrs.evolve(
            defaults.tracking,
            experiment=attrs.evolve(defaults.tracking.experiment, name="proj"),
        ),
    )
    assert config == expected


def test_init_file_spells_out_every_key(project: Path) -> None:
    """Every key of the schema is written (and so documented) in the file."""
    assert invoke("init").exit_code == 0
    config = load_config(project / "mlflow.yml")
    leaves = {key for key in SCHEMA if key not in SECTIONS}
    # Written as null ("not set here"): MLFLOW_TRACKING_URI, else the default, fills it.
    leaves.discard("server.mlflow_tracking_uri")
    assert "  mlflow_tracking_uri: null\n" in (project / "mlflow.yml").read_text(encoding="utf-8")
    not_in_file = sorted(key for key in leaves if config.sources[key].kind != "file")
    assert not_in_file == []


def test_init_keeps_the_template_comments_and_only_fills_the_name(project: Path) -> None:
    assert invoke("init").exit_code == 0
    written = (project / "mlflow.yml").read_text(encoding="utf-8").splitlines()
    template = TEMPLATE.read_text(encoding="utf-8").splitlines()
    changed = [(old, new) for old, new in zip(template, written, strict=True) if old != new]
    assert changed == [("    name: null", "    name: proj")]
    # kedro-mlflow users recognise their keys, each explained by a comment nearby.
    for key in ("mlflow_tracking_uri", "credentials", "restore_if_deleted", "long_params_strategy"):
        number = line_of(project / "mlflow.yml", f"{key}:")
        around = written[max(0, number - 4) : number]
        assert any("#" in line for line in around), key


@pytest.mark.parametrize(
    ("pyproject", "expected"),
    [
        ('[project]\nname = "pkg-dist"\n[tool.kedro]\npackage_name = "kedro_pkg"\n', "kedro_pkg"),
        ('[project]\nname = "pkg-dist"\n', "pkg-dist"),
        ("[tool.other]\nx = 1\n", "named-folder"),
    ],
)
def test_init_names_the_experiment_after_the_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pyproject: str, expected: str
) -> None:
    folder = tmp_path / "named-folder"
    write(folder / "pyproject.toml", pyproject)
    monkeypatch.chdir(folder)
    assert invoke("init").exit_code == 0
    assert load_config(folder / "mlflow.yml").tracking.experiment.name == expected
    assert f"name: {expected}" in (folder / "mlflow.yml").read_text(encoding="utf-8")


def test_init_refuses_to_overwrite_without_force(project: Path) -> None:
    existing = write(project / "mlflow.yml", "tracking:\n  run:\n    name: mine\n")
    result = invoke("init")
    assert result.exit_code == 1
    assert "mlflow.yml exists already" in result.stderr
    assert "--force" in result.stderr
    assert existing.read_text(encoding="utf-8") == "tracking:\n  run:\n    name: mine\n"


def test_init_force_overwrites(project: Path) -> None:
    write(project / "mlflow.yml", "tracking:\n  run:\n    name: mine\n")
    result = invoke("init", "--force")
    assert result.exit_code == 0
    assert load_config(project / "mlflow.yml").tracking.run.name is None


FLATTEN_BASE = """
tracking:
  params:
    dict_params:
      flatten: true
"""


def effective(config: TrackingConfig) -> list[tuple[str, Any, str]]:
    """Every key's value and where it came from."""
    return [(key, value, str(source)) for key, value, source in config.provenance()]


# --------------------------------------------------------------------------------------------
# init over other files


def test_init_in_an_environment_over_a_base_file_keeps_the_effective_config(
    project: Path,
) -> None:
    base = write(project / "conf" / "base" / "mlflow.yml", FLATTEN_BASE)
    before = load_config()

    result = invoke("init")

    assert result.exit_code == 0, result.output
    target = project / "conf" / "local" / "mlflow.yml"
    assert result.stdout.splitlines()[0] == (
        f"wrote {Path('conf/local/mlflow.yml')}: every key commented out, so "
        f"{Path('conf/base/mlflow.yml')} keeps its values (uncomment a key to change it here)"
    )
    after = load_config()
    assert after.files == (base, target)
    assert effective(after) == effective(before)
    assert after.tracking.params.dict_params.flatten is True


def test_the_commented_file_is_the_template_with_each_key_line_commented(project: Path) -> None:
    """Deleting the "# " of a key line gives back the template's line: every key is there to
    uncomment, none is active."""
    write(project / "conf" / "base" / "mlflow.yml", FLATTEN_BASE)
    assert invoke("init").exit_code == 0
    target = project / "conf" / "local" / "mlflow.yml"
    written = target.read_text(encoding="utf-8").splitlines()
    template = render_template("proj").splitlines()
    assert written[0] == template[0]
    note = written[1 : len(written) - len(template) + 1]
    assert all(line.startswith("#") for line in note)
    assert "conf/base/mlflow.yml" in " ".join(note)
    body = written[1 + len(note) :]
    commented = [(w, t) for w, t in zip(body, template[1:], strict=True) if w != t]
    assert all(w == f"# {t}" for w, t in commented)
    keys = [t for t in template[1:] if t.strip() and not t.lstrip().startswith("#")]
    assert [t for _w, t in commented] == keys  # every key and section line, and only those
    assert all(source.kind == "default" for _k, _v, source in load_config(target).provenance())


def test_init_over_a_user_file_keeps_its_values(project: Path, user_config_dir: Path) -> None:
    user = write(user_config_dir / "mlflow.yml", "server:\n  request_timeout: 30\n")
    before = load_config()

    result = invoke("init")

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == (
        f"wrote mlflow.yml: every key commented out, so {user} keeps its values "
        "(uncomment a key to change it here)"
    )
    after = load_config()
    assert after.files == (user, project / "mlflow.yml")
    assert effective(after) == effective(before)
    assert after.server.request_timeout == 30


def test_init_with_nothing_below_writes_active_keys_and_says_so(project: Path) -> None:
    result = invoke("init")
    assert result.exit_code == 0, result.output
    assert (
        result.stdout.splitlines()[0] == "wrote mlflow.yml: every key active, at its default value"
    )
    config = load_config()
    assert config.sources["tracking.params.dict_params.flatten"].kind == "file"


# --------------------------------------------------------------------------------------------
# show


@pytest.fixture
def configured(project: Path) -> Path:
    """conf/base + conf/local files, a credentials entry holding a distinctive secret."""
    write(
        project / "conf" / "base" / "mlflow.yml",
        """
        server:
          mlflow_tracking_uri: mlruns
        tracking:
          run:
            nested: false
        """,
    )
    write(
        project / "conf" / "local" / "mlflow.yml",
        """
        server:
          credentials: my_store
        tracking:
          experiment:
            name: from-local
        """,
    )
    write(
        project / "conf" / "local" / "credentials.yml",
        f"""
        my_store:
          AWS_ACCESS_KEY_ID: key-id-{SECRET}
          AWS_SECRET_ACCESS_KEY: {SECRET}
        """,
    )
    return project


def show_rows(stdout: str) -> dict[str, tuple[str, str]]:
    rows: dict[str, tuple[str, str]] = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and "." in parts[0] and not parts[0].endswith(":"):
            rows[parts[0]] = (parts[1], " ".join(parts[2:]))
    return rows


def test_show_as_a_subprocess_masks_credentials(configured: Path) -> None:
    done = run_trackcfg("show", cwd=configured)
    assert done.returncode == 0, done.stderr
    assert SECRET not in done.stdout + done.stderr
    assert "AWS_SECRET_ACCESS_KEY=***" in done.stdout
    assert "from-local" in done.stdout


def test_show_gives_each_key_its_value_and_source(
    configured: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRACKCFG_TRACKING__RUN__NAME", "nightly")
    result = invoke("show")
    assert result.exit_code == 0
    rows = show_rows(result.stdout)
    base = Path("conf/base/mlflow.yml")
    local = Path("conf/local/mlflow.yml")
    assert rows["tracking.run.nested"] == ("false", f"{base}:5")
    assert rows["tracking.experiment.name"] == ("from-local", f"{local}:5")
    assert rows["tracking.run.name"] == ("nightly", "env TRACKCFG_TRACKING__RUN__NAME")
    assert rows["tracking.experiment.create"] == ("true", "default")
    assert rows["tracking.params.long_params_strategy"] == ("fail", "default")
    assert f"files: {base}, {local}" in result.stdout
    assert f"tracking store: sqlite:///{configured / 'mlruns' / 'mlflow.db'}" in result.stdout
    # Every schema key gets exactly one line.
    assert {key for key in SCHEMA if key not in SECTIONS} <= set(rows)


def test_show_lists_credentials_by_key_never_by_value(configured: Path) -> None:
    for args in (["show"], ["show", "--json"]):
        result = invoke(*args)
        assert result.exit_code == 0
        assert SECRET not in result.output
        assert "AWS_ACCESS_KEY_ID" in result.stdout
        assert "AWS_SECRET_ACCESS_KEY" in result.stdout


def test_show_masks_a_password_inside_a_uri(project: Path) -> None:
    write(
        project / "mlflow.yml",
        f"""
        server:
          mlflow_tracking_uri: postgresql+psycopg2://alice:{SECRET}@db.example:5432/mlflow
        """,
    )
    for args in (["show"], ["show", "--json"]):
        result = invoke(*args)
        assert result.exit_code == 0
        assert SECRET not in result.output
        assert "postgresql+psycopg2://alice:***@db.example:5432/mlflow" in result.stdout


def test_show_json_shape(configured: Path) -> None:
    result = invoke("show", "--json", "--env", "local")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert set(data) == {"env", "project_root", "files", "keys", "resolved", "credentials"}
    assert data["env"] == "local"
    assert data["project_root"] == str(configured)
    assert data["files"] == [
        str(configured / "conf" / "base" / "mlflow.yml"),
        str(configured / "conf" / "local" / "mlflow.yml"),
    ]
    assert data["keys"]["tracking.run.nested"] == {
        "value": False,
        "source": "file",
        "where": f"{Path('conf/base/mlflow.yml')}:5",
    }
    assert data["keys"]["tracking.experiment.create"] == {
        "value": True,
        "source": "default",
        "where": None,
    }
    assert data["keys"]["tracking.disable_tracking.pipelines"]["value"] == []
    assert data["resolved"] == {
        "tracking_uri": f"sqlite:///{configured / 'mlruns' / 'mlflow.db'}",
        "experiment_name": "from-local",
        "run": "a new run",
    }
    assert data["credentials"] == {
        "name": "my_store",
        "file": str(configured / "conf" / "local" / "credentials.yml"),
        "keys": {"AWS_ACCESS_KEY_ID": "***", "AWS_SECRET_ACCESS_KEY": "***"},
    }


def test_show_env_option_selects_the_environment(configured: Path) -> None:
    write(configured / "conf" / "prod" / "mlflow.yml", "tracking:\n  run:\n    name: prod-run\n")
    result = invoke("show", "--env", "prod")
    assert result.exit_code == 0
    assert "env: prod" in result.stdout
    assert show_rows(result.stdout)["tracking.run.name"] == (
        "prod-run",
        f"{Path('conf/prod/mlflow.yml')}:3",
    )


def test_show_without_any_file_shows_defaults_and_the_project_name(project: Path) -> None:
    result = invoke("show")
    assert result.exit_code == 0
    assert "files: none (built-in defaults)" in result.stdout
    assert "experiment: proj" in result.stdout
    assert show_rows(result.stdout)["server.mlflow_tracking_uri"] == ("mlruns", "default")


def test_show_malformed_config_is_one_error_with_file_and_line(project: Path) -> None:
    write(project / "mlflow.yml", "tracking:\n  run:\n    nested: [unclosed\n")
    result = invoke("show")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert f"{project / 'mlflow.yml'}:" in result.stderr
    assert "malformed YAML" in result.stderr


# --------------------------------------------------------------------------------------------
# check: local stores


def test_check_as_a_subprocess_passes_on_a_fresh_project(project: Path) -> None:
    """A new project: nothing exists yet, a run would create it all; check creates nothing."""
    done = run_trackcfg("check", cwd=project)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "[ ok ] config: valid (no mlflow.yml found: built-in defaults)"
    assert lines[1].startswith("[ ok ] store: ")
    assert "created at the first run" in lines[1]
    assert lines[2] == "[skip] credentials: none configured (server.credentials: null)"
    assert lines[3] == (
        "[ ok ] experiment: 'proj' does not exist; it will be created "
        "(tracking.experiment.create: true)"
    )
    assert lines[-1] == "a run would start"
    assert not (project / "mlruns").exists()


def test_check_existing_experiment_in_a_local_store(store_with_db: Path) -> None:

    db = store_with_db / "mlruns" / "mlflow.db"
    experiment_id = mlflow.MlflowClient(f"sqlite:///{db}").create_experiment("proj")
    result = invoke("check")
    assert result.exit_code == 0, result.output
    assert f"[ ok ] experiment: 'proj' exists (id {experiment_id})" in result.stdout
    assert f"{Path('mlruns/mlflow.db')} opens (SQLite, MLflow store)" in result.stdout


def test_check_create_false_and_missing_experiment_fails_naming_the_setting(
    store_with_db: Path,
) -> None:
    write(store_with_db / "mlflow.yml", "tracking:\n  experiment:\n    create: false\n")
    result = invoke("check")
    assert result.exit_code == 1
    assert (
        "[FAIL] experiment: experiment 'proj' does not exist and tracking.experiment.create "
        "is false" in result.stdout
    )
    assert "a run would not start" in result.stderr
    assert "set tracking.experiment.create: true" in result.stderr


@pytest.mark.parametrize("restore", [True, False])
def test_check_deleted_experiment_follows_restore_if_deleted(
    store_with_db: Path, restore: bool
) -> None:

    client = mlflow.MlflowClient(f"sqlite:///{store_with_db / 'mlruns' / 'mlflow.db'}")
    experiment_id = client.create_experiment("proj")
    client.delete_experiment(experiment_id)
    write(
        store_with_db / "mlflow.yml",
        f"tracking:\n  experiment:\n    restore_if_deleted: {str(restore).lower()}\n",
    )
    result = invoke("check")
    if restore:
        assert result.exit_code == 0, result.output
        assert f"'proj' (id {experiment_id}) is deleted; it will be restored" in result.stdout
    else:
        assert result.exit_code == 1
        assert "is deleted and tracking.experiment.restore_if_deleted is false" in result.stdout
        assert "set tracking.experiment.restore_if_deleted: true" in result.stderr
    # check only looks: the experiment is still deleted.
    assert client.get_experiment(experiment_id).lifecycle_stage == "deleted"


def test_check_missing_run_id_fails_naming_the_setting(store_with_db: Path) -> None:
    write(store_with_db / "mlflow.yml", "tracking:\n  run:\n    id: 0123456789abcdef\n")
    result = invoke("check")
    assert result.exit_code == 1
    assert "[FAIL] run: run '0123456789abcdef' (tracking.run.id) does not exist" in result.stdout
    assert "set tracking.run.id: null" in result.stderr


def test_check_a_file_that_is_not_sqlite_fails(project: Path) -> None:
    write(project / "mlruns" / "mlflow.db", "this is not a database\n" * 100)
    result = invoke("check")
    assert result.exit_code == 1
    assert "does not open as an SQLite database" in result.stdout
    assert "server.mlflow_tracking_uri" in result.stderr


def test_check_malformed_config_fails_with_file_and_line(project: Path) -> None:
    file = write(project / "mlflow.yml", "tracking:\n  experiment:\n    craete: false\n")
    result = invoke("check")
    assert result.exit_code == 1
    assert result.stdout.startswith("[FAIL] config: ")
    assert f"{file}:3" in result.stdout
    assert "did you mean 'create'?" in result.stdout
    assert "a run would not start: config:" in result.stderr


def test_check_missing_credentials_entry_fails(project: Path) -> None:
    write(project / "mlflow.yml", "server:\n  credentials: nowhere\n")
    result = invoke("check")
    assert result.exit_code == 1
    assert "no credentials entry named 'nowhere'" in result.stdout


def test_check_lists_credentials_masked(configured: Path) -> None:
    result = invoke("check")
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    assert (
        "[ ok ] credentials: entry 'my_store' in "
        f"{Path('conf/local/credentials.yml')}: AWS_ACCESS_KEY_ID=***, AWS_SECRET_ACCESS_KEY=***"
    ) in result.stdout


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


# --------------------------------------------------------------------------------------------
# check and show: every problem at once, each with the fix it needs


def test_check_with_several_problems_lists_them_all_on_stderr(project: Path) -> None:
    config = write(
        project / "mlflow.yml",
        """
        server:
          max_retries: -1
        tracking:
          run:
            nestd: true
          params:
            long_params_strategy: truncat
        """,
    )
    result = invoke("check")
    assert result.exit_code == 1
    errors = result.stderr.splitlines()
    assert errors[0] == (
        "Error: a run would not start: config: invalid trackcfg configuration (3 problems):"
    )
    expected = {
        f"{config.resolve()}:{line_of(config, 'nestd')}: 'tracking.run.nestd': unknown key; "
        "did you mean 'nested'?",
        f"{config.resolve()}:{line_of(config, 'max_retries')}: 'server.max_retries': "
        "must be 0 or more, got -1",
        f"{config.resolve()}:{line_of(config, 'truncat')}: "
        "'tracking.params.long_params_strategy': must be one of 'fail', 'truncate', 'tag', "
        "got 'truncat'",
    }
    assert {line.removeprefix("  - ") for line in errors[1:4]} == expected
    assert errors[4:] == ["fix: fix each file and line named above"]


def test_check_of_a_missing_file_says_to_create_it(project: Path) -> None:
    result = invoke("check", "nowhere.yml")
    assert result.exit_code == 1
    assert "file and line" not in result.output
    error = result.stderr.strip()
    assert len(error.splitlines()) == 1
    assert f"no such file or folder: {project.resolve() / 'nowhere.yml'}" in error
    assert error.endswith("; fix: create it with `trackcfg init`, or pass the right path")


def test_check_of_a_folder_without_config_names_no_file_and_line(project: Path) -> None:
    (project / "empty").mkdir()
    result = invoke("check", "empty")
    assert result.exit_code == 1
    assert "file and line" not in result.output
    assert f"no conf/ folder or mlflow.yml in {project.resolve() / 'empty'}" in result.stderr
    assert "write one with `trackcfg init` there, or pass the right path" in result.stderr


def _psycopg2_note() -> str:
    return (
        ", or write the URI as postgresql+psycopg2:// (installed)" if installed("psycopg2") else ""
    )


DRIVER_CASES = [
    pytest.param(
        "mysql",
        "SQLAlchemy's default mysql driver, mysqldb (Python module MySQLdb)",
        "pip install mysqlclient, or write the URI as mysql+pymysql:// and pip install pymysql",
        marks=pytest.mark.skipif(
            installed("MySQLdb") or installed("pymysql"), reason="a MySQL driver is installed"
        ),
        id="mysql",
    ),
    pytest.param(
        "mssql+pymssql",
        "the driver it names, pymssql (Python module pymssql)",
        "pip install pymssql",
        marks=pytest.mark.skipif(
            installed("pymssql") or installed("pyodbc"), reason="an MSSQL driver is installed"
        ),
        id="mssql+pymssql",
    ),
    pytest.param(
        "postgresql+psycopg",
        "the driver it names, psycopg (Python module psycopg)",
        f"pip install 'psycopg[binary]'{_psycopg2_note()}",
        marks=pytest.mark.skipif(installed("psycopg"), reason="psycopg is installed"),
        id="postgresql+psycopg",
    ),
]


@pytest.mark.parametrize(("scheme", "needs", "fix"), DRIVER_CASES)
def test_a_database_uri_without_its_driver_names_the_package_to_install(
    project: Path, scheme: str, needs: str, fix: str
) -> None:
    config = write(
        project / "mlflow.yml", f"server:\n  mlflow_tracking_uri: {scheme}://bob:{SECRET}@db/runs\n"
    )
    masked = f"{scheme}://bob:***@db/runs"
    problem = f"{masked} needs {needs}, which is not installed here"

    result = invoke("check")
    assert result.exit_code == 1
    assert SECRET not in result.output
    assert f"[FAIL] store: {problem}" in result.stdout
    assert result.stderr.strip() == (
        f"Error: a run would not start: store: {problem}; fix: {fix}; "
        "set by server.mlflow_tracking_uri (mlflow.yml:2)"
    )

    with pytest.raises(ConfigError) as caught, TrackingSession.from_yaml(None, name="train"):
        pass
    assert str(caught.value) == (
        f"invalid trackcfg configuration: {config.resolve()}:2: 'server.mlflow_tracking_uri': "
        f"{problem}: {fix}"
    )
    assert "MLFLOW_TRACKING_URI" not in os.environ


def test_the_init_template_leaves_the_store_to_mlflow_tracking_uri(
    project: Path, tmp_path: Path, migrated_sqlite_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The template's comment says null means $MLFLOW_TRACKING_URI, else mlruns: so it is."""
    assert invoke("init").exit_code == 0
    text = (project / "mlflow.yml").read_text(encoding="utf-8")
    assert "  mlflow_tracking_uri: null\n" in text
    assert "null: $MLFLOW_TRACKING_URI when it is set, else\n  # mlruns." in text
    assert load_config().server.mlflow_tracking_uri == "mlruns"  # the default store

    elsewhere = copy_store(migrated_sqlite_db, tmp_path / "elsewhere")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{elsewhere}")
    with TrackingSession.from_yaml(None, name="from-env"):
        pass
    assert [r.info.run_name for r in read_runs(f"sqlite:///{elsewhere}")] == ["from-env"]
    assert not (project / "mlruns").exists()


def test_show_help_puts_the_json_shape_where_it_says(project: Path) -> None:
    result = invoke("show", "--help")
    assert result.exit_code == 0
    description, _, options = result.stdout.partition("\nOptions:\n")
    option = next(line for line in options.splitlines() if line.lstrip().startswith("--json"))
    assert option.endswith("Print one JSON object (its shape is shown above).")
    assert '{"env": "local"' in description


def test_a_missing_credentials_entry_lists_the_entries_there(project: Path) -> None:
    write(project / "mlflow.yml", "server:\n  credentials: team_c\n")
    write(
        project / "credentials.yml",
        f"team_a:\n  MLFLOW_TRACKING_TOKEN: {SECRET}\nteam_b:\n  MLFLOW_TRACKING_TOKEN: x\n",
    )
    for command in ("check", "show"):
        result = invoke(command)
        assert result.exit_code == 1, command
        assert "'server.credentials'" in result.stderr
        assert "team_c" in result.stderr
        assert "entries there: team_a, team_b" in result.stderr, command
        assert SECRET not in result.output


# --------------------------------------------------------------------------------------------
# check: http(s) servers that fail.


def test_check_closed_port_fails_fast(project: Path) -> None:
    port = free_port()
    write(project / "mlflow.yml", f"server:\n  mlflow_tracking_uri: http://127.0.0.1:{port}\n")
    started = time.monotonic()
    result = invoke("check", "--timeout", "2")
    elapsed = time.monotonic() - started
    assert result.exit_code == 1
    assert f"[FAIL] store: http://127.0.0.1:{port} not reachable" in result.stdout
    assert "server.mlflow_tracking_uri" in result.stderr
    assert elapsed < 2 + 5


def test_check_silent_server_fails_after_the_timeout(project: Path) -> None:
    """A server that accepts the connection but never answers: no retry loop."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        write(project / "mlflow.yml", f"server:\n  mlflow_tracking_uri: http://127.0.0.1:{port}\n")
        started = time.monotonic()
        result = invoke("check", "--timeout", "1")
        elapsed = time.monotonic() - started
    assert result.exit_code == 1
    assert "not reachable: no answer" in result.stdout
    assert "--timeout 1" in result.stdout
    assert 1 <= elapsed < 1 + 5


class _StubHandler(http.server.BaseHTTPRequestHandler):
    """Answers like a token-protected MLflow server, or like any web server (``html``)."""

    token = f"tok-{SECRET}"
    html = False
    team: str | None = None  # when set: requires an X-Team header of this value instead

    def do_GET(self) -> None:
        if self.html:
            self._send(404, b"<html>not here</html>", "text/html")
        elif self.team is not None and self.headers.get("X-Team") != self.team:
            self._send(403, b'{"error_code": "PERMISSION_DENIED"}', "application/json")
        elif self.team is None and self.headers.get("Authorization") != f"Bearer {self.token}":
            self._send(401, b'{"error_code": "UNAUTHENTICATED"}', "application/json")
        else:
            body = b'{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no"}'
            self._send(404, body, "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def stub_server() -> Iterator[tuple[str, type[_StubHandler]]]:
    handler = type("Handler", (_StubHandler,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def test_check_sends_the_credentials_token_and_reports_a_refusal(
    project: Path, stub_server: tuple[str, type[_StubHandler]]
) -> None:
    url, handler = stub_server
    write(project / "mlflow.yml", f"server:\n  mlflow_tracking_uri: {url}\n  credentials: srv\n")
    creds = project / "credentials.yml"
    write(creds, f"srv:\n  MLFLOW_TRACKING_TOKEN: tok-{SECRET}\n")
    accepted = invoke("check")
    assert accepted.exit_code == 0, accepted.output
    assert "[ ok ] credentials: entry 'srv'" in accepted.stdout
    assert "MLFLOW_TRACKING_TOKEN=***" in accepted.stdout

    write(creds, "srv:\n  MLFLOW_TRACKING_TOKEN: wrong\n")
    refused = invoke("check")
    assert refused.exit_code == 1
    assert "[FAIL] credentials: the server refused them (HTTP 401)" in refused.stdout
    assert "server.credentials" in refused.stderr
    assert SECRET not in accepted.output + refused.output
    assert handler.html is False


def test_check_a_web_server_that_is_not_mlflow_fails(
    project: Path, stub_server: tuple[str, type[_StubHandler]]
) -> None:
    url, handler = stub_server
    handler.html = True
    write(project / "mlflow.yml", f"server:\n  mlflow_tracking_uri: {url}\n")
    result = invoke("check")
    assert result.exit_code == 1
    assert "answered HTTP 404, not like an MLflow tracking server" in result.stdout


# --------------------------------------------------------------------------------------------
# ui without a server of its own.


def test_ui_for_an_http_store_prints_the_url_and_opens_a_browser(
    project: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    stub_server: tuple[str, type[_StubHandler]],
) -> None:
    """The server answers (with the credentials entry's token) but holds no experiment
    'proj': its home page, and a note saying why."""
    url, _handler = stub_server
    opened = tmp_path / "opened.txt"
    browser = write(tmp_path / "browser.sh", f'#!/bin/sh\necho "$1" > {opened}\n')
    browser.chmod(0o755)
    monkeypatch.setenv("BROWSER", f"{browser} %s")
    write(project / "mlflow.yml", f"server:\n  mlflow_tracking_uri: {url}/\n  credentials: srv\n")
    write(project / "credentials.yml", f"srv:\n  MLFLOW_TRACKING_TOKEN: tok-{SECRET}\n")

    quiet = invoke("ui", "--no-browser")
    assert quiet.exit_code == 0
    assert quiet.stdout.strip() == f"MLflow UI: {url}"
    assert quiet.stderr.strip() == (
        f"experiment 'proj' is not in {url} yet, so the URL below is MLflow's home page"
    )
    assert not opened.exists()

    result = invoke("ui")
    assert result.exit_code == 0
    assert opened.read_text().strip() == url
    assert SECRET not in result.output


def test_ui_without_a_display_does_not_try_a_browser(
    project: Path, monkeypatch: pytest.MonkeyPatch, stub_server: tuple[str, type[_StubHandler]]
) -> None:
    """(The stub refuses the missing token: the home page, which may ask to log in.)"""
    for name in ("BROWSER", "DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    url, _handler = stub_server
    write(project / "mlflow.yml", f"server:\n  mlflow_tracking_uri: {url}\n")
    result = invoke("ui")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"MLflow UI: {url}"
    assert f"{url} refused the credentials (server.credentials)" in result.stderr
    assert "no browser available" in result.stderr


def test_ui_for_an_http_store_that_does_not_answer_exits_1_with_the_reason(
    project: Path,
) -> None:
    """Nothing listens (refused at once), or something accepts and never answers (after
    --timeout): no URL, exit 1, the reason and where the URI was set."""
    port = free_port()
    config = write(
        project / "mlflow.yml", f"server:\n  mlflow_tracking_uri: http://127.0.0.1:{port}\n"
    )
    started = time.monotonic()
    refused = invoke("ui", "--no-browser")
    assert time.monotonic() - started < 5
    assert refused.exit_code == 1
    assert refused.stdout == ""
    assert f"http://127.0.0.1:{port} not reachable: " in refused.stderr
    assert "refused" in refused.stderr.lower()
    assert "fix server.mlflow_tracking_uri" in refused.stderr
    assert f"{config}:2" in refused.stderr

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        write(
            config,
            f"server:\n  mlflow_tracking_uri: http://127.0.0.1:{listener.getsockname()[1]}\n",
        )
        started = time.monotonic()
        silent = invoke("ui", "--no-browser", "--timeout", "1")
        elapsed = time.monotonic() - started
    assert silent.exit_code == 1
    assert silent.stdout == ""
    assert "not reachable" in silent.stderr
    assert 1 <= elapsed < 1 + 5


@pytest.mark.parametrize("where", ["--port", "ui.port"])
def test_ui_refuses_a_port_in_use(project: Path, where: str) -> None:
    """Another server on the port would answer in the place of ours: refuse up front."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        if where == "--port":
            result = invoke("ui", "--no-browser", "--port", str(port))
        else:
            write(project / "mlflow.yml", f"ui:\n  port: {port}\n  host: 127.0.0.1\n")
            result = invoke("ui", "--no-browser")
    assert result.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "choose another --port (or ui.port)" in result.stderr
    assert not (project / "mlruns").exists()


def test_ui_cannot_serve_databricks(project: Path) -> None:
    write(project / "mlflow.yml", "server:\n  mlflow_tracking_uri: databricks\n")
    result = invoke("ui", "--no-browser")
    assert result.exit_code == 1
    assert "cannot serve databricks" in result.stderr


RUNNER = "\N{RUNNER}"


# --------------------------------------------------------------------------------------------
# Where a local run went


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def test_a_local_run_says_how_to_view_it_and_the_command_runs_as_printed(
    store_with_db: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from conftest import _MlflowServer

    # This interpreter's mlflow first on PATH (as nox or an IDE does): still printed by the
    # interpreter's path, since the user's shell may not have that PATH.
    bin_folder = str(Path(sys.executable).parent)
    monkeypatch.setenv("PATH", os.pathsep.join([bin_folder, os.environ.get("PATH", "")]))
    with TrackingSession.from_yaml(None, name="train") as session:
        session.log_text("notes\n", "notes.md")
        with session.child("trial"):  # a sweep's trials are found under their parent
            pass
    uri = store_uri(store_with_db)
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"{RUNNER} View run train with: {shlex.quote(sys.executable)} -m mlflow ui "
        f"--backend-store-uri {uri}",
        f"   then open http://127.0.0.1:5000/#/experiments/{session.experiment_id}/runs/"
        f"{session.run_id}",
    ]

    # The command as printed (a free port and one worker added: a shared 2-core machine).
    port = _free_port()
    command = shlex.split(lines[0].partition(" with: ")[2])
    logs = Path(tempfile.mkdtemp(prefix="trackcfg-mlflow-ui-logs-"))
    env = subprocess_env(venv_on_path=True, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    with (logs / "stdout.log").open("wb") as out, (logs / "stderr.log").open("wb") as err:
        process = subprocess.Popen(
            [*command, "--port", str(port), "--workers", "1"],
            cwd=logs,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    server = _MlflowServer(url=f"http://127.0.0.1:{port}", folder=logs, process=process)
    try:
        server.wait_healthy(180)
        query = urllib.parse.urlencode({"run_id": session.run_id})
        run = _get(f"{server.url}/api/2.0/mlflow/runs/get?{query}")["run"]
        assert run["info"]["run_name"] == "train"
        files = _get(f"{server.url}/ajax-api/2.0/mlflow/artifacts/list?{query}")["files"]
        assert [f["path"] for f in files] == ["notes.md"]
    finally:
        server.stop()


def test_the_view_line_without_mlflow_on_path_and_silenced_like_mlflows(
    store_with_db: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", os.defpath)
    with TrackingSession.from_yaml(None, name="train"):
        pass
    first = capsys.readouterr().out.splitlines()[0]
    assert first == (
        f"{RUNNER} View run train with: {shlex.quote(sys.executable)} -m mlflow ui "
        f"--backend-store-uri {store_uri(store_with_db)}"
    )

    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    with TrackingSession.from_yaml(None, name="quiet"):
        pass
    assert capsys.readouterr().out == ""
    assert len(read_runs(store_uri(store_with_db))) == 2


# --------------------------------------------------------------------------------------------
# ui with a real mlflow server (the only one this file starts), and check against it over
# HTTP.  test_ui_stops_on_sigint stops it, so it comes last.


@attrs.define
class UiProcess:
    process: subprocess.Popen[bytes]
    port: int
    folder: Path

    @property
    def url(self) -> str:
        assert self.process.poll() is None, "trackcfg ui is not running (stopped by a test?)"
        return f"http://127.0.0.1:{self.port}"

    def stdout(self) -> str:
        return (self.folder / "stdout.log").read_text(errors="replace")

    def stderr(self) -> str:
        return (self.folder / "stderr.log").read_text(errors="replace")

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"trackcfg ui exited early:\n{self.stdout()}\n{self.stderr()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"no /health after {timeout:.0f} s:\n{self.stderr()[-3000:]}")
            time.sleep(0.25)


@pytest.fixture(scope="module")
def _ui_launched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiProcess]:
    """`trackcfg ui --port P --no-browser` on a new project's local store, not waited for.

    Started as a script's background job is (``cmd &``): with SIGINT ignored, which the
    process inherits; Ctrl-C (``test_ui_stops_on_sigint``) must stop it all the same."""
    folder = project_folder(tmp_path_factory.mktemp("ui-project"), name="uiproj")
    env = subprocess_env(
        drop=TRACKING_SETTINGS, XDG_CONFIG_HOME=str(tmp_path_factory.mktemp("ui-xdg"))
    )
    port = free_port()
    ui_command = [sys.executable, "-m", "trackcfg", "ui", "--no-browser", "--port", str(port)]
    with (folder / "stdout.log").open("wb") as out, (folder / "stderr.log").open("wb") as err:
        process = subprocess.Popen(
            ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *ui_command],
            cwd=folder,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
    try:
        yield UiProcess(process, port, folder)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module", autouse=True)
def _start_ui_early(request: pytest.FixtureRequest) -> None:
    """The server takes 13-60 s to start: launch it with this file's first test, so that
    the start overlaps the other tests.  Under pytest-xdist at the first test that needs it
    (only those run on one worker: ``ONE_WORKER_FIXTURES`` in conftest.py)."""
    if "PYTEST_XDIST_WORKER" not in os.environ and any(
        "ui_process" in getattr(item, "fixturenames", ())
        for item in request.session.items
        if getattr(item, "module", None) is request.module
    ):
        request.getfixturevalue("_ui_launched")


@pytest.fixture(scope="module")
def ui_process(_ui_launched: UiProcess) -> UiProcess:
    """The running `trackcfg ui`, once its server answers /health."""
    _ui_launched.wait_healthy(UI_HEALTH_TIMEOUT)
    return _ui_launched


def test_check_over_http_reports_what_the_experiment_settings_do(
    project: Path, ui_process: UiProcess
) -> None:
    url = ui_process.url
    config = project / "mlflow.yml"
    write(
        config, f"server:\n  mlflow_tracking_uri: {url}\ntracking:\n  experiment:\n    name: web\n"
    )
    missing = invoke("check")
    assert missing.exit_code == 0, missing.output
    assert f"[ ok ] store: {url} answers" in missing.stdout
    assert "'web' does not exist; it will be created" in missing.stdout

    write(config, config.read_text() + "    create: false\n")
    refused = invoke("check")
    assert refused.exit_code == 1
    assert "set tracking.experiment.create: true" in refused.stderr

    experiment_id = post_json(f"{url}/api/2.0/mlflow/experiments/create", {"name": "web"})[
        "experiment_id"
    ]
    exists = invoke("check")
    assert exists.exit_code == 0, exists.output
    assert f"[ ok ] experiment: 'web' exists (id {experiment_id})" in exists.stdout

    post_json(f"{url}/api/2.0/mlflow/experiments/delete", {"experiment_id": experiment_id})
    write(config, config.read_text() + "    restore_if_deleted: false\n")
    deleted = invoke("check")
    assert deleted.exit_code == 1
    assert f"'web' (id {experiment_id}) is deleted" in deleted.stdout
    assert "set tracking.experiment.restore_if_deleted: true" in deleted.stderr


def test_ui_prints_the_url_of_the_server_it_started(ui_process: UiProcess) -> None:
    """A new store holds no experiment yet: the home page, and a note saying why (the URL
    of an experiment's runs: test_ui_browser.py)."""
    url = ui_process.url
    line = f"MLflow UI: {url}  (mlflow server pid "
    deadline = time.monotonic() + 10
    while line not in ui_process.stdout() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert line in ui_process.stdout()
    assert (
        "experiment 'uiproj' is not in mlruns/mlflow.db yet, so the URL below is MLflow's home page"
    ) in ui_process.stderr()
    # It serves the configured store: the project's experiment can be created and listed.
    post_json(f"{url}/api/2.0/mlflow/experiments/create", {"name": "uiproj"})
    with urllib.request.urlopen(
        f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=uiproj", timeout=10
    ) as response:
        assert json.loads(response.read())["experiment"]["name"] == "uiproj"
    assert ui_process.process.poll() is None


def test_ui_for_an_http_store_prints_the_url_of_the_experiments_runs(
    project: Path, ui_process: UiProcess
) -> None:
    """The server holds the experiment: its runs page; deleted: the home page and why."""
    url = ui_process.url
    write(
        project / "mlflow.yml",
        f"server:\n  mlflow_tracking_uri: {url}\ntracking:\n  experiment:\n    name: ui-web\n",
    )
    experiment_id = post_json(f"{url}/api/2.0/mlflow/experiments/create", {"name": "ui-web"})[
        "experiment_id"
    ]
    found = invoke("ui", "--no-browser")
    assert found.exit_code == 0, found.output
    assert found.stdout.strip() == f"MLflow UI: {url}/#/experiments/{experiment_id}/runs"
    assert found.stderr == ""

    post_json(f"{url}/api/2.0/mlflow/experiments/delete", {"experiment_id": experiment_id})
    deleted = invoke("ui", "--no-browser")
    assert deleted.exit_code == 0, deleted.output
    assert deleted.stdout.strip() == f"MLflow UI: {url}"
    assert f"experiment 'ui-web' (id {experiment_id}) is deleted in {url}" in deleted.stderr


def test_ui_stops_on_sigint(ui_process: UiProcess) -> None:
    """Ctrl-C, although the process was started with SIGINT ignored (``_ui_launched``): the
    server's whole process group stops and trackcfg exits 0."""
    url = ui_process.url
    deadline = time.monotonic() + 30  # healthy comes before trackcfg ui prints its line
    while "MLflow UI: " not in ui_process.stdout() and time.monotonic() < deadline:
        time.sleep(0.1)
    line = next(x for x in ui_process.stdout().splitlines() if x.startswith("MLflow UI: "))
    server_pid = int(line.split("mlflow server pid ")[1].split(";")[0])
    ui_process.process.send_signal(signal.SIGINT)
    assert ui_process.process.wait(timeout=30) == 0
    assert "stopping the MLflow UI" in ui_process.stderr()
    assert not port_open(ui_process.port), f"{url} still answers"
    with pytest.raises(ProcessLookupError):
        os.kill(server_pid, 0)


def test_check_builds_the_request_header_provider_and_sends_its_headers(
    project: Path,
    stub_server: tuple[str, type[_StubHandler]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from helpers import header_providers_module

    monkeypatch.syspath_prepend(str(header_providers_module(tmp_path / "modules")))
    url, handler = stub_server
    handler.team = "vision"
    config = write(
        project / "mlflow.yml",
        f"""\
        server:
          mlflow_tracking_uri: {url}
          request_header_provider:
            type: trackcfg_test_headers.TeamHeader
            init_kwargs: {{team: vision}}
        """,
    )
    accepted = invoke("check")
    assert accepted.exit_code == 0, accepted.output
    assert "[ ok ] request headers: trackcfg_test_headers.TeamHeader adds: X-Team" in (
        accepted.stdout
    )
    assert "vision" not in accepted.stdout  # names only: values may be tokens

    write(config, config.read_text().replace("TeamHeader", "Broken"))
    broken = invoke("check")
    assert broken.exit_code == 1
    assert "[FAIL] request headers: trackcfg_test_headers.Broken(team) failed: RuntimeError" in (
        broken.stdout
    )
    assert f"fix server.request_header_provider ({config}:4)" in broken.stderr
    assert "the server refused them (HTTP 403)" in broken.stdout  # and so does the server
