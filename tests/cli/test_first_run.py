"""A new user's first hour (issue 17): what ``trackcfg init`` writes over other files and
says, what a relative config path means, where the store goes when nothing marks a project,
what ``trackcfg check`` says, and how a run in a local store says where it went.

Real components: files in temporary folders, real SQLite stores (copies of a migrated one),
the real CLI through click's runner, and the ``mlflow ui`` command a run prints, run as a
process.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from helpers import (
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

from trackcfg import TrackingConfig, TrackingSession, load_config
from trackcfg._cli import cli
from trackcfg._cli.init import render_template
from trackcfg._discovery import find_project_root
from trackcfg.exceptions import ConfigError

SECRET = "pw-Zq9-do-not-print"
RUNNER = "\N{RUNNER}"
FLATTEN_BASE = """
tracking:
  params:
    dict_params:
      flatten: true
"""


def invoke(*args: str) -> Result:
    """The CLI in this process; an unexpected exception fails the test with its traceback."""
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert "Traceback" not in result.output
    return result


def effective(config: TrackingConfig) -> list[tuple[str, Any, str]]:
    """Every key's value and where it came from."""
    return [(key, value, str(source)) for key, value, source in config.provenance()]


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


# --------------------------------------------------------------------------------------------
# init over other files (item 3)


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
# A relative config path (item 4)


def test_a_relative_path_from_a_subfolder_names_the_folder_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = project_folder(tmp_path / "proj", config="tracking:\n  run:\n    name: nightly\n")
    sub = root / "notebooks"
    sub.mkdir()
    monkeypatch.chdir(sub)

    with pytest.raises(ConfigError) as from_yaml:
        TrackingSession.from_yaml("mlflow.yml")
    with pytest.raises(ConfigError) as loaded:
        load_config("mlflow.yml")

    message = str(from_yaml.value)
    assert message == str(loaded.value)
    here = sub.resolve()
    assert f"no such file or folder: {here / 'mlflow.yml'}" in message
    assert f"a relative path is taken from the current folder, {here}," in message
    assert "TrackingSession.from_yaml(None)" in message
    assert "load_config()" in message
    assert 'Path(__file__).parent / "mlflow.yml"' in message
    # The fixes it names work.
    assert TrackingSession.from_yaml(None).config.files == (root.resolve() / "mlflow.yml",)
    assert load_config(sub.parent / "mlflow.yml").tracking.run.name == "nightly"


# --------------------------------------------------------------------------------------------
# No config, no pyproject.toml, no .git (item 5)


@pytest.fixture
def bare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with nothing at or above it marking a project, the current folder."""
    if find_project_root(tmp_path) is not None:
        pytest.skip(f"{find_project_root(tmp_path)} marks a project above the test's folders")
    folder = tmp_path / "bare"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder.resolve()


def notices(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "it is the project root" in r.getMessage()
    ]


def test_a_root_chosen_by_the_current_folder_is_said_once(
    bare: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="trackcfg")
    first, second = load_config(), load_config()
    assert first.project_root == second.project_root == bare
    (said,) = notices(caplog)
    assert said == (
        f"no mlflow.yml, pyproject.toml or .git in {bare} or above: it is the project root, so "
        f"runs go to {bare / 'mlruns'}, which depends on the folder the program starts in; to "
        "pin it, add a pyproject.toml, .git or mlflow.yml to the project folder, or set "
        "server.mlflow_tracking_uri to an absolute path"
    )


def test_no_notice_where_the_store_does_not_depend_on_the_current_folder(
    bare: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="trackcfg")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'runs.db'}")
    assert load_config().project_root == bare
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    project = project_folder(tmp_path / "proj")
    assert load_config(cwd=project).project_root == project.resolve()
    assert notices(caplog) == []


def test_a_script_in_a_bare_folder_is_told_once_where_its_runs_go(
    bare: Path, migrated_sqlite_db: Path
) -> None:
    """As a user runs it: no logging set up, a session from discovery and one from a config
    built in code; the notice reaches stderr once, and the runs are where it says."""
    copy_store(migrated_sqlite_db, bare / "mlruns")
    script = write(
        bare / "train.py",
        """
        from trackcfg import TrackingConfig, TrackingSession

        with TrackingSession.from_yaml(None, name="first"):
            pass
        with TrackingSession(TrackingConfig(), name="second"):
            pass
        """,
    )
    done = run_python(str(script), cwd=bare, env=subprocess_env(drop=TRACKING_SETTINGS))
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("it is the project root") == 1, done.stderr
    assert f"runs go to {bare / 'mlruns'}," in done.stderr
    assert sorted(r.info.run_name for r in read_runs(store_uri(bare))) == ["first", "second"]


# --------------------------------------------------------------------------------------------
# trackcfg check and show (item 7)


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
# Where a local run went (item 10)


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
