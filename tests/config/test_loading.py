"""``load_config``: files, layering, provenance, errors, credentials, project root."""

from __future__ import annotations

import itertools
import logging
import os
import tempfile
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
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
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from trackcfg import (
    ConfigError,
    LongParamsStrategy,
    TrackcfgError,
    TrackingConfig,
    TrackingSession,
    load_config,
)
from trackcfg._config import LoggingMode, OfflineMode, RankPolicy, ResumePolicy
from trackcfg._discovery import find_project_root
from trackcfg._loading import SCHEMA


def value_at(config: TrackingConfig, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def load_error(*args: Any, **kwargs: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(*args, **kwargs)
    return info.value


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder with a ``pyproject.toml`` (so it is the project root)."""
    return project_folder(tmp_path / "proj")


@pytest.fixture
def markerless(tmp_path: Path) -> Path:
    """A folder with no ``pyproject.toml`` or ``.git`` at or above it."""
    if find_project_root(tmp_path) is not None:
        pytest.skip(f"a project marker exists above {tmp_path}")
    return tmp_path


# --------------------------------------------------------------------------------------------
# Defaults.

SCHEMA_DEFAULTS: dict[str, Any] = {
    "server.mlflow_tracking_uri": "mlruns",
    "server.mlflow_registry_uri": None,
    "server.credentials": None,
    "server.request_header_provider.type": None,
    "server.request_header_provider.pass_context": False,
    "server.request_header_provider.init_kwargs": {},
    "server.request_timeout": 10,
    "server.max_retries": 3,
    "server.offline": OfflineMode.NEVER,
    "tracking.disable_tracking.pipelines": (),
    "tracking.disable_tracking.disable_autologging": True,
    "tracking.experiment.name": None,
    "tracking.experiment.create": True,
    "tracking.experiment.restore_if_deleted": True,
    "tracking.experiment.create_experiment_kwargs.artifact_location": None,
    "tracking.experiment.create_experiment_kwargs.tags": None,
    "tracking.run.id": None,
    "tracking.run.name": None,
    "tracking.run.nested": True,
    "tracking.run.ranks": RankPolicy.ZERO,
    "tracking.run.resume_running": False,
    "tracking.run.resume": ResumePolicy.NEVER,
    "tracking.run.key": None,
    "tracking.params.dict_params.flatten": False,
    "tracking.params.dict_params.recursive": True,
    "tracking.params.dict_params.sep": ".",
    "tracking.params.long_params_strategy": LongParamsStrategy.FAIL,
    "tracking.logging.mode": LoggingMode.BUFFERED,
    "tracking.logging.flush_seconds": 2.0,
    "tracking.logging.max_buffered": 100_000,
    "tracking.logging.journal": True,
    "tracking.logging.journal_dir": None,
    "tracking.logging.exit_timeout": 30.0,
    "ui.port": None,
    "ui.host": None,
}


def test_without_any_file_every_key_has_its_schema_default() -> None:
    config = load_config()

    assert {key: value_at(config, key) for key in SCHEMA_DEFAULTS} == SCHEMA_DEFAULTS
    assert config == TrackingConfig()
    assert config.files == ()


def test_without_any_file_every_key_comes_from_default() -> None:
    config = load_config()

    assert set(config.sources) == set(SCHEMA_DEFAULTS)
    assert {str(source) for source in config.sources.values()} == {"default"}
    assert config.server.mlflow_tracking_uri == "mlruns"
    assert str(config.sources["server.mlflow_tracking_uri"]) == "default"


# --------------------------------------------------------------------------------------------
# Layering: defaults < user file < conf/base < conf/<env> < TRACKCFG_* < overrides.

LAYERS = ("user", "base", "env_file", "env_var", "override")


def _load_with_run_keys(
    settings: dict[str, dict[str, str]],
    project: Path,
    user_config_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[TrackingConfig, dict[str, str]]:
    """Load ``project/conf`` with ``settings[layer] = {run key: value}`` set in each layer.

    Returns the config and, per layer, what ``str(source)`` of a key it set must read
    (``{key}`` stands for the key's name)."""
    files = {
        "user": user_config_dir / "mlflow.yml",
        "base": project / "conf" / "base" / "mlflow.yml",
        "env_file": project / "conf" / "local" / "mlflow.yml",
    }
    # Every file exists, so each layer is read even when it sets nothing under tracking.run.
    for file in files.values():
        write(file, "tracking:\n  experiment:\n    create: true\n")
    overrides: dict[str, Any] = {}
    for layer, keys in settings.items():
        if layer in files:
            lines = "".join(f"    {key}: {value}\n" for key, value in keys.items())
            write(files[layer], f"# {layer}\ntracking:\n  run:\n{lines}")
        for key, value in keys.items():
            if layer == "env_var":
                monkeypatch.setenv(f"TRACKCFG_TRACKING__RUN__{key.upper()}", value)
            elif layer == "override":
                overrides[f"tracking.run.{key}"] = value
    sources = {layer: f"{file}:{{line}}" for layer, file in files.items()} | {
        "env_var": "env TRACKCFG_TRACKING__RUN__{KEY}",
        "override": "override 'tracking.run.{key}'",
    }
    return load_config(project / "conf", overrides=overrides), sources


def _source_text(template: str, key: str) -> str:
    """Fill in a template from ``_load_with_run_keys`` for ``key``."""
    line = 0
    if "{line}" in template:
        line = line_of(Path(template.rpartition(":")[0]), f"{key}:")
    return template.format(key=key, KEY=key.upper(), line=line)


@pytest.mark.parametrize(
    "layers",
    [
        *([layer] for layer in LAYERS),
        *(list(pair) for pair in itertools.combinations(LAYERS, 2)),
        list(LAYERS),
    ],
    ids=lambda layers: "+".join(layers),
)
def test_the_highest_layer_setting_a_key_wins_and_is_its_source(
    layers: list[str], project: Path, user_config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    winner = max(layers, key=LAYERS.index)

    config, sources = _load_with_run_keys(
        {layer: {"name": f"from-{layer}"} for layer in layers},
        project,
        user_config_dir,
        monkeypatch,
    )

    assert config.tracking.run.name == f"from-{winner}"
    assert str(config.sources["tracking.run.name"]) == _source_text(sources[winner], "name")
    assert str(config.sources["tracking.run.nested"]) == "default"


@pytest.mark.parametrize(
    ("lower", "higher"),
    list(itertools.combinations(LAYERS, 2)),
    ids=[f"{a}<{b}" for a, b in itertools.combinations(LAYERS, 2)],
)
def test_a_lower_layer_shows_through_where_a_higher_one_is_silent(
    lower: str,
    higher: str,
    project: Path,
    user_config_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config, sources = _load_with_run_keys(
        {lower: {"name": "low-name", "id": "low-id"}, higher: {"id": "high-id"}},
        project,
        user_config_dir,
        monkeypatch,
    )

    assert config.tracking.run.name == "low-name"
    assert config.tracking.run.id == "high-id"
    assert str(config.sources["tracking.run.name"]) == _source_text(sources[lower], "name")
    assert str(config.sources["tracking.run.id"]) == _source_text(sources[higher], "id")


def test_project_files_merge_key_by_key(project: Path) -> None:
    base = write(
        project / "conf" / "base" / "mlflow.yml",
        """
        tracking:
          run:
            name: nightly
          experiment:
            name: base-exp
        """,
    )
    local = write(
        project / "conf" / "local" / "mlflow.yml",
        """
        tracking:
          run:
            nested: false
        """,
    )

    config = load_config(project / "conf")

    assert config.tracking.run.name == "nightly"
    assert config.tracking.run.nested is False
    assert config.tracking.experiment.name == "base-exp"
    assert str(config.sources["tracking.run.name"]) == f"{base}:3"
    assert str(config.sources["tracking.run.nested"]) == f"{local}:3"
    assert config.files == (base, local)


def test_an_empty_section_in_the_env_file_keeps_the_base_values(project: Path) -> None:
    write(project / "conf" / "base" / "mlflow.yml", "tracking:\n  run:\n    name: nightly\n")
    write(project / "conf" / "local" / "mlflow.yml", "tracking:\n  run: {}\n")

    config = load_config(project / "conf")

    assert config.tracking.run.name == "nightly"


def test_a_null_section_means_its_defaults(project: Path) -> None:
    file = write(
        project / "mlflow.yml",
        """
        tracking:
          run:
          # name: nightly
        ui:
          port: 5000
        """,
    )

    config = load_config(file)

    assert config.tracking.run.nested is True
    assert config.ui.port == 5000


def test_user_file_is_read_from_the_platform_user_config_dir(user_config_dir: Path) -> None:
    user_file = write(user_config_dir / "mlflow.yml", "ui:\n  host: 0.0.0.0\n")

    config = load_config()

    assert user_file == Path(os.environ["XDG_CONFIG_HOME"]) / "trackcfg" / "mlflow.yml"
    assert config.ui.host == "0.0.0.0"
    assert str(config.sources["ui.host"]) == f"{user_file}:2"
    assert config.files == (user_file,)


@pytest.mark.parametrize(
    ("env_arg", "trackcfg_env", "expected"),
    [
        (None, None, "from-local"),
        (None, "prod", "from-prod"),
        ("staging", None, "from-staging"),
        ("staging", "prod", "from-staging"),
        ("base", None, "from-base"),
    ],
)
def test_environment_comes_from_the_argument_then_trackcfg_env_then_local(
    project: Path,
    monkeypatch: pytest.MonkeyPatch,
    env_arg: str | None,
    trackcfg_env: str | None,
    expected: str,
) -> None:
    for env in ("base", "local", "prod", "staging"):
        write(project / "conf" / env / "mlflow.yml", f"tracking:\n  run:\n    name: from-{env}\n")
    if trackcfg_env is not None:
        monkeypatch.setenv("TRACKCFG_ENV", trackcfg_env)

    config = load_config(project / "conf", env=env_arg)

    assert config.tracking.run.name == expected


def test_an_environment_without_its_own_file_uses_base(project: Path) -> None:
    base = write(project / "conf" / "base" / "mlflow.yml", "tracking:\n  run:\n    name: b\n")
    (project / "conf" / "prod").mkdir()

    config = load_config(project / "conf", env="prod")

    assert config.tracking.run.name == "b"
    assert config.files == (base,)


def test_env_var_values_are_yaml_scalars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACKCFG_TRACKING__RUN__NESTED", "false")
    monkeypatch.setenv("TRACKCFG_UI__PORT", "5000")
    monkeypatch.setenv("TRACKCFG_TRACKING__DISABLE_TRACKING__PIPELINES", "[etl, report]")
    monkeypatch.setenv("TRACKCFG_TRACKING__PARAMS__LONG_PARAMS_STRATEGY", "tag")

    config = load_config()

    assert config.tracking.run.nested is False
    assert config.ui.port == 5000
    assert config.tracking.disable_tracking.pipelines == ("etl", "report")
    assert config.tracking.params.long_params_strategy is LongParamsStrategy.TAG
    assert str(config.sources["ui.port"]) == "env TRACKCFG_UI__PORT"


def test_trackcfg_variables_without_double_underscore_are_not_config_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRACKCFG_DISABLE", "1")
    monkeypatch.setenv("TRACKCFG_SOMETHING_ELSE", "x")

    assert load_config() == TrackingConfig()


def test_overrides_take_dotted_keys_enums_and_whole_sections() -> None:
    config = load_config(
        overrides={
            "tracking.run.name": "nightly",
            "tracking.params.long_params_strategy": LongParamsStrategy.TRUNCATE,
            "ui": {"port": 8080},
        }
    )

    assert config.tracking.run.name == "nightly"
    assert config.tracking.params.long_params_strategy is LongParamsStrategy.TRUNCATE
    assert config.ui.port == 8080
    assert str(config.sources["tracking.run.name"]) == "override 'tracking.run.name'"
    assert str(config.sources["ui.port"]) == "override 'ui'"


def test_every_kind_of_source_is_recorded_per_leaf(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = write(
        project / "mlflow.yml",
        """
        # a comment line
        tracking:
          experiment:
            name: exp
        """,
    )
    monkeypatch.setenv("TRACKCFG_UI__HOST", "0.0.0.0")

    config = load_config(file, overrides={"tracking.run.name": "nightly"})

    assert str(config.sources["tracking.experiment.name"]) == f"{file}:4"
    assert str(config.sources["ui.host"]) == "env TRACKCFG_UI__HOST"
    assert str(config.sources["tracking.run.name"]) == "override 'tracking.run.name'"
    assert str(config.sources["tracking.run.nested"]) == "default"
    assert config.sources["tracking.experiment.name"].line == 4


# --------------------------------------------------------------------------------------------
# MLFLOW_TRACKING_URI fills only an unset tracking URI.


def test_mlflow_tracking_uri_fills_an_unset_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")

    config = load_config()

    assert config.server.mlflow_tracking_uri == "http://127.0.0.1:5000"
    assert str(config.sources["server.mlflow_tracking_uri"]) == "env MLFLOW_TRACKING_URI"


def test_mlflow_tracking_uri_fills_a_uri_left_null_in_the_file(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = write(project / "mlflow.yml", "server:\n  mlflow_tracking_uri: null\n")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")

    assert load_config(file).server.mlflow_tracking_uri == "http://127.0.0.1:5000"


def test_null_tracking_uri_without_mlflow_tracking_uri_is_mlruns(project: Path) -> None:
    file = write(project / "mlflow.yml", "server:\n  mlflow_tracking_uri: null\n")

    assert load_config(file).server.mlflow_tracking_uri == "mlruns"


@pytest.mark.parametrize("where", ["project", "user"])
def test_mlflow_tracking_uri_never_replaces_a_uri_set_in_a_file(
    where: str, project: Path, user_config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = project if where == "project" else user_config_dir
    file = write(folder / "mlflow.yml", "server:\n  mlflow_tracking_uri: sqlite:///runs.db\n")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")

    config = load_config(project / "mlflow.yml" if where == "project" else None)

    assert config.server.mlflow_tracking_uri == "sqlite:///runs.db"
    assert str(config.sources["server.mlflow_tracking_uri"]) == f"{file}:2"


def test_trackcfg_variable_and_override_beat_mlflow_tracking_uri(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow-var")
    monkeypatch.setenv("TRACKCFG_SERVER__MLFLOW_TRACKING_URI", "http://trackcfg-var")

    assert load_config().server.mlflow_tracking_uri == "http://trackcfg-var"
    overridden = load_config(overrides={"server.mlflow_tracking_uri": "http://override"})
    assert overridden.server.mlflow_tracking_uri == "http://override"


# --------------------------------------------------------------------------------------------
# Null means default.


def test_null_means_the_default_for_keys_that_have_one(project: Path) -> None:
    file = write(
        project / "mlflow.yml",
        """
        tracking:
          disable_tracking:
            pipelines: null
          run:
            nested: null
          params:
            dict_params:
              sep: null
            long_params_strategy: null
        """,
    )

    config = load_config(file)

    assert config.tracking.params.dict_params.sep == "."
    assert config.tracking.run.nested is True
    assert config.tracking.disable_tracking.pipelines == ()
    assert config.tracking.params.long_params_strategy is LongParamsStrategy.FAIL


# --------------------------------------------------------------------------------------------
# Errors: one ConfigError with every problem, each with where it came from.


def test_config_error_is_a_value_error_and_a_trackcfg_error(project: Path) -> None:
    file = write(project / "mlflow.yml", "ui:\n  port: 70000\n")

    error = load_error(file)

    assert isinstance(error, ValueError)
    assert isinstance(error, TrackcfgError)


def test_malformed_yaml_names_the_file_and_line(project: Path) -> None:
    file = write(
        project / "mlflow.yml",
        """
        tracking:
          run:
            name: a: b
        """,
    )

    error = load_error(file)

    assert len(error.problems) == 1
    assert error.problems[0].where == f"{file}:3"
    assert f"{file}:3" in str(error)
    assert "malformed YAML" in str(error)


def test_duplicate_key_is_malformed_yaml_with_its_line(project: Path) -> None:
    file = write(project / "mlflow.yml", "ui:\n  port: 1\n  port: 2\n")

    error = load_error(file)

    assert f"{file}:3" in str(error)
    assert 'duplicate key "port"' in str(error)


def test_wrong_type_says_what_was_expected_and_where(project: Path) -> None:
    file = write(
        project / "mlflow.yml",
        """
        tracking:
          run:
            nested: "maybe"
        """,
    )

    error = load_error(file)

    assert str(error.problems[0]) == (
        f"{file}:3: 'tracking.run.nested': expected true or false, got 'maybe' (str)"
    )
    assert "expected true or false" in str(error)


def test_unknown_key_names_it_and_suggests_the_closest_valid_key(project: Path) -> None:
    file = write(
        project / "mlflow.yml",
        """
        tracking:
          run:
            nestd: false
        """,
    )

    error = load_error(file)

    assert str(error.problems[0]) == (
        f"{file}:3: 'tracking.run.nestd': unknown key; did you mean 'nested'?"
    )


def test_unknown_key_without_a_close_match_lists_the_valid_keys(project: Path) -> None:
    file = write(project / "mlflow.yml", "ui:\n  colour: blue\n")

    error = load_error(file)

    assert "'ui.colour': unknown key; valid keys in 'ui': host, port" in str(error)


def test_unknown_top_level_key_suggests_the_section(project: Path) -> None:
    file = write(project / "mlflow.yml", "servr:\n  credentials: x\n")

    assert "'servr': unknown key; did you mean 'server'?" in str(load_error(file))


def test_enum_value_error_lists_the_allowed_values(project: Path) -> None:
    file = write(
        project / "mlflow.yml",
        """
        tracking:
          params:
            long_params_strategy: drop
        """,
    )

    error = load_error(file)

    assert str(error.problems[0]) == (
        f"{file}:3: 'tracking.params.long_params_strategy': "
        "must be one of 'fail', 'truncate', 'tag', got 'drop'"
    )


def test_bad_override_key_names_the_override() -> None:
    error = load_error(overrides={"tracking.run.nam": "nightly"})

    assert str(error.problems[0]) == (
        "override 'tracking.run.nam': 'tracking.run.nam': unknown key; did you mean 'name'?"
    )


def test_bad_override_value_names_the_override() -> None:
    error = load_error(overrides={"ui.port": "abc"})

    assert "override 'ui.port'" in str(error)
    assert "expected an integer" in str(error)


def test_unknown_env_var_key_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACKCFG_TRACKING__RUN__NESTD", "false")

    error = load_error()

    assert "env TRACKCFG_TRACKING__RUN__NESTD" in str(error)
    assert "'tracking.run.nestd': unknown key; did you mean 'nested'?" in str(error)


def test_missing_credentials_entry_names_it_and_where_it_looked(
    project: Path, user_config_dir: Path
) -> None:
    file = write(project / "mlflow.yml", "server:\n  credentials: mlflow_creds\n")
    write(project / "credentials.yml", "other_creds:\n  TOKEN: x\n")

    error = load_error(file)

    assert error.problems[0].key == "server.credentials"
    assert error.problems[0].where == f"{file}:2"
    message = str(error)
    assert "no credentials entry named 'mlflow_creds'" in message
    assert str(project / "credentials.yml") in message
    assert str(user_config_dir / "credentials.yml") in message


def test_empty_sep_is_refused_with_its_line(project: Path) -> None:
    file = write(
        project / "mlflow.yml",
        """
        tracking:
          params:
            dict_params:
              sep: ""
        """,
    )

    assert str(load_error(file).problems[0]) == (
        f"{file}:4: 'tracking.params.dict_params.sep': must not be empty"
    )


@pytest.mark.parametrize("port", ["70000", "-1", "'65536'"])
def test_ui_port_out_of_range_is_refused(project: Path, port: str) -> None:
    file = write(project / "mlflow.yml", f"ui:\n  port: {port}\n")

    error = load_error(file)

    assert error.problems[0].where == f"{file}:2"
    assert "'ui.port': must be between 0 and 65535" in str(error)


def test_ui_port_that_is_not_a_number_is_refused(project: Path) -> None:
    file = write(project / "mlflow.yml", "ui:\n  port: http\n")

    assert "'ui.port': expected an integer, got 'http'" in str(load_error(file))


def test_every_problem_of_a_file_is_reported_in_one_error(project: Path) -> None:
    file = write(
        project / "mlflow.yml",
        """
        tracking:
          run:
            nestd: true
            nested: "maybe"
          params:
            long_params_strategy: drop
            dict_params:
              sep: ""
        ui:
          port: 99999
        """,
    )

    error = load_error(file)

    assert len(error.problems) == 5
    assert sorted(p.where or "" for p in error.problems) == sorted(
        f"{file}:{line}" for line in (3, 4, 6, 8, 10)
    )
    assert "invalid trackcfg configuration (5 problems)" in str(error)


def test_problems_from_files_env_vars_and_overrides_come_together(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(project / "conf" / "base" / "mlflow.yml", "ui:\n  port: [1\n")
    write(project / "conf" / "local" / "mlflow.yml", "tracking:\n  run:\n    nestd: true\n")
    monkeypatch.setenv("TRACKCFG_UI__PROT", "1")

    error = load_error(project / "conf", overrides={"tracking.experiment.nam": "x"})

    wheres = [p.where or "" for p in error.problems]
    assert len(error.problems) == 4
    assert any(w.startswith(str(project / "conf" / "base" / "mlflow.yml")) for w in wheres)
    assert f"{project / 'conf' / 'local' / 'mlflow.yml'}:3" in wheres
    assert "env TRACKCFG_UI__PROT" in wheres
    assert "override 'tracking.experiment.nam'" in wheres


def test_tagged_yaml_values_are_refused(project: Path) -> None:
    file = write(
        project / "mlflow.yml",
        """
        tracking:
          run:
            name: !!python/name:os.system
        """,
    )

    error = load_error(file)

    assert str(error.problems[0]).startswith(f"{file}:3: 'tracking.run.name': tagged values")
    assert "are not allowed" in str(error)


def test_a_file_that_is_not_a_mapping_is_refused(project: Path) -> None:
    file = write(project / "mlflow.yml", "- server\n- tracking\n")

    assert "expected a mapping at the top" in str(load_error(file))


def test_a_missing_path_is_a_config_error(tmp_path: Path) -> None:
    error = load_error(tmp_path / "nowhere.yml")

    assert f"no such file or folder: {tmp_path / 'nowhere.yml'}" in str(error)


def test_a_conf_folder_without_mlflow_yml_is_a_config_error(project: Path) -> None:
    (project / "conf" / "base").mkdir(parents=True)

    assert "no mlflow.yml in" in str(load_error(project / "conf"))


def test_a_config_error_is_raised_before_mlflow_is_imported(project: Path) -> None:
    file = write(project / "mlflow.yml", "tracking:\n  run:\n    nestd: true\n")
    code = textwrap.dedent(
        f"""
        import sys
        import trackcfg
        try:
            trackcfg.load_config({str(file)!r})
        except trackcfg.ConfigError as exc:
            print("ConfigError:", exc)
        print("mlflow imported:", "mlflow" in sys.modules)
        """
    )

    result = run_python("-c", code, cwd=project, timeout=60)

    assert result.returncode == 0, result.stderr
    assert "did you mean 'nested'?" in result.stdout
    assert "mlflow imported: False" in result.stdout


def test_loading_a_valid_config_never_imports_mlflow(project: Path) -> None:
    file = write(project / "mlflow.yml", "tracking:\n  run:\n    name: x\n")
    code = (
        "import sys, trackcfg\n"
        f"assert trackcfg.load_config({str(file)!r}).tracking.run.name == 'x'\n"
        "print('mlflow imported:', 'mlflow' in sys.modules)\n"
    )

    result = run_python("-c", code, cwd=project, timeout=60)

    assert result.returncode == 0, result.stderr
    assert "mlflow imported: False" in result.stdout


# --------------------------------------------------------------------------------------------
# kedro-mlflow 2.0.3 compatibility.

# Same keys, nesting and values as the `mlflow.yml` that kedro-mlflow 2.0.3's project template
# writes (its `{{ python_package }}` rendered as my_package); comments are our own.
KEDRO_MLFLOW_TEMPLATE = """
# tracking server
server:
  mlflow_tracking_uri: null  # null: let MLFLOW_TRACKING_URI or the default decide
  mlflow_registry_uri: null
  credentials: null
  request_header_provider:
    type: null
    pass_context: False
    init_kwargs: {}

tracking:
  disable_tracking:
    disable_autologging: True
    pipelines: []

  experiment:
    name: my_package
    create_experiment_kwargs:
      artifact_location: null
      tags: null
    restore_if_deleted: True

  run:
    id: null
    name: null
    nested: True

  params:
    dict_params:
      flatten: False
      recursive: True
      sep: "."
    long_params_strategy: fail

# web UI
ui:
  port: "5000"  # a string in kedro-mlflow
  host: "127.0.0.1"
"""


def test_kedro_mlflow_2_0_3_template_loads_unchanged(project: Path) -> None:
    file = write(project / "conf" / "local" / "mlflow.yml", KEDRO_MLFLOW_TEMPLATE)

    config = load_config(project / "conf")

    assert config.server.mlflow_tracking_uri == "mlruns"
    assert config.server.mlflow_registry_uri is None
    assert config.server.credentials is None
    assert config.server.request_header_provider.type is None
    assert config.server.request_header_provider.pass_context is False
    assert dict(config.server.request_header_provider.init_kwargs) == {}
    assert config.tracking.disable_tracking.disable_autologging is True
    assert config.tracking.disable_tracking.pipelines == ()
    assert config.tracking.experiment.name == "my_package"
    assert config.tracking.experiment.create is True
    assert config.tracking.experiment.restore_if_deleted is True
    assert config.tracking.experiment.create_experiment_kwargs.artifact_location is None
    assert config.tracking.experiment.create_experiment_kwargs.tags is None
    assert (config.tracking.run.id, config.tracking.run.name) == (None, None)
    assert config.tracking.run.nested is True
    assert config.tracking.params.dict_params.flatten is False
    assert config.tracking.params.dict_params.recursive is True
    assert config.tracking.params.dict_params.sep == "."
    assert config.tracking.params.long_params_strategy is LongParamsStrategy.FAIL
    assert config.ui.port == 5000
    assert isinstance(config.ui.port, int)
    assert config.ui.host == "127.0.0.1"
    assert str(config.sources["ui.port"]) == f"{file}:{line_of(file, 'port:')}"
    assert config.project_root == project


def test_kedro_mlflow_template_with_experiment_kwargs_filled_in(project: Path) -> None:
    file = write(
        project / "mlflow.yml",
        """
        tracking:
          experiment:
            create_experiment_kwargs:
              artifact_location: s3://bucket/artifacts
              tags: {team: ml, stage: dev}
        server:
          request_header_provider:
            type: my_package.auth.TokenProvider
            pass_context: true
            init_kwargs: {refresh: 60}
        """,
    )

    config = load_config(file)

    kwargs = config.tracking.experiment.create_experiment_kwargs
    assert kwargs.artifact_location == "s3://bucket/artifacts"
    assert dict(kwargs.tags or {}) == {"team": "ml", "stage": "dev"}
    assert config.server.request_header_provider.type == "my_package.auth.TokenProvider"
    assert dict(config.server.request_header_provider.init_kwargs) == {"refresh": 60}


def test_ui_port_as_an_int_works(project: Path) -> None:
    file = write(project / "mlflow.yml", "ui:\n  port: 5000\n")

    assert load_config(file).ui.port == 5000


# --------------------------------------------------------------------------------------------
# Credentials.

SECRET = "s3cr3t-Value-9f2"  # must never be shown
OTHER_SECRET = "t0ken-Value-7c1"  # must never be shown


def _assert_masked(config: TrackingConfig) -> None:
    assert config.credentials is not None
    for shown in (repr(config), str(config), repr(config.credentials), str(config.credentials)):
        assert SECRET not in shown
        assert OTHER_SECRET not in shown


def test_credentials_beside_the_config_file_are_loaded_and_masked(project: Path) -> None:
    file = write(project / "mlflow.yml", "server:\n  credentials: mlflow_creds\n")
    write(
        project / "credentials.yml",
        f"""
        mlflow_creds:
          AWS_SECRET_ACCESS_KEY: {SECRET}
          MLFLOW_TRACKING_TOKEN: {OTHER_SECRET}
        unrelated:
          PASSWORD: not-ours
        """,
    )

    config = load_config(file)

    assert config.credentials is not None
    assert config.credentials.name == "mlflow_creds"
    assert config.credentials.as_env() == {
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "MLFLOW_TRACKING_TOKEN": OTHER_SECRET,
    }
    _assert_masked(config)


def test_credentials_merge_across_conf_base_and_env(project: Path) -> None:
    write(project / "conf" / "base" / "mlflow.yml", "server:\n  credentials: mlflow_creds\n")
    write(project / "conf" / "local" / "mlflow.yml", "ui:\n  port: 5000\n")
    write(
        project / "conf" / "base" / "credentials.yml",
        "mlflow_creds:\n  AWS_ACCESS_KEY_ID: base-id\n  AWS_SECRET_ACCESS_KEY: base-secret\n",
    )
    write(
        project / "conf" / "local" / "credentials.yml",
        f"mlflow_creds:\n  AWS_SECRET_ACCESS_KEY: {SECRET}\n",
    )

    config = load_config(project / "conf")

    assert config.credentials is not None
    assert config.credentials.as_env() == {
        "AWS_ACCESS_KEY_ID": "base-id",
        "AWS_SECRET_ACCESS_KEY": SECRET,
    }
    _assert_masked(config)


def test_credentials_fall_back_to_the_user_config_dir(project: Path, user_config_dir: Path) -> None:
    file = write(project / "mlflow.yml", "server:\n  credentials: mlflow_creds\n")
    write(
        user_config_dir / "credentials.yml", f"mlflow_creds:\n  MLFLOW_TRACKING_TOKEN: {SECRET}\n"
    )

    config = load_config(file)

    assert config.credentials is not None
    assert config.credentials.as_env() == {"MLFLOW_TRACKING_TOKEN": SECRET}
    _assert_masked(config)


def test_credential_values_become_strings(project: Path) -> None:
    file = write(project / "mlflow.yml", "server:\n  credentials: c\n")
    write(project / "credentials.yml", "c:\n  AWS_ACCESS_KEY_ID: 132456\n")

    config = load_config(file)

    assert config.credentials is not None
    assert config.credentials.as_env() == {"AWS_ACCESS_KEY_ID": "132456"}


def test_a_malformed_credentials_file_does_not_leak_secrets_in_the_error(project: Path) -> None:
    file = write(project / "mlflow.yml", "server:\n  credentials: c\n")
    write(project / "credentials.yml", f"c:\n  TOKEN: {SECRET}\n  TOKEN: {OTHER_SECRET}\n")

    error = load_error(file)

    assert SECRET not in str(error)
    assert OTHER_SECRET not in str(error)


# --------------------------------------------------------------------------------------------
# Project root: nearest pyproject.toml/.git at or above the config, never the CWD.


def test_root_is_the_nearest_folder_with_pyproject_above_the_config(project: Path) -> None:
    file = write(project / "configs" / "tracking" / "mlflow.yml", "ui:\n  port: 1\n")

    assert load_config(file).project_root == project


def test_root_is_the_nearest_folder_with_git_above_the_config(markerless: Path) -> None:
    repo = markerless / "repo"
    (repo / ".git").mkdir(parents=True)
    file = write(repo / "sub" / "mlflow.yml", "ui:\n  port: 1\n")

    assert load_config(file).project_root == repo


def test_the_nearest_marker_wins_over_one_further_up(project: Path) -> None:
    inner = project / "packages" / "inner"
    write(inner / "pyproject.toml", '[project]\nname = "inner"\n')
    file = write(inner / "mlflow.yml", "ui:\n  port: 1\n")

    assert load_config(file).project_root == inner


def test_without_markers_the_root_is_the_config_files_folder(markerless: Path) -> None:
    file = write(markerless / "experiments" / "mlflow.yml", "ui:\n  port: 1\n")

    assert load_config(file).project_root == markerless / "experiments"


def test_without_markers_a_conf_env_file_has_the_folder_above_conf_as_root(
    markerless: Path,
) -> None:
    file = write(markerless / "kproj" / "conf" / "local" / "mlflow.yml", "ui:\n  port: 1\n")

    assert load_config(file).project_root == markerless / "kproj"
    assert load_config(markerless / "kproj" / "conf").project_root == markerless / "kproj"
    assert load_config(markerless / "kproj").project_root == markerless / "kproj"


def test_loading_from_another_cwd_gives_the_same_config(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = write(
        project / "conf" / "local" / "mlflow.yml", "server:\n  mlflow_tracking_uri: runs\n"
    )
    first = load_config(file)
    elsewhere = tmp_path / "elsewhere"
    write(elsewhere / "pyproject.toml", '[project]\nname = "elsewhere"\n')
    monkeypatch.chdir(elsewhere)

    second = load_config(file)

    assert second == first
    assert second.project_root == first.project_root == project
    assert second.default_experiment_name == first.default_experiment_name == "proj"
    assert {k: str(v) for k, v in second.sources.items()} == {
        k: str(v) for k, v in first.sources.items()
    }


def test_a_relative_path_argument_gives_the_same_root_as_an_absolute_one(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = write(project / "conf" / "base" / "mlflow.yml", "ui:\n  port: 1\n")
    monkeypatch.chdir(project / "conf")

    config = load_config("base/mlflow.yml")

    assert config.project_root == project
    assert config.files == (file,)


def test_discovery_from_a_subfolder_finds_the_projects_conf_folder(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = write(project / "conf" / "local" / "mlflow.yml", "tracking:\n  run:\n    name: found\n")
    (project / "src" / "proj").mkdir(parents=True)
    monkeypatch.chdir(project / "src" / "proj")

    config = load_config()

    assert config.tracking.run.name == "found"
    assert config.files == (file,)
    assert config.project_root == project


def test_discovery_from_a_subfolder_finds_the_projects_mlflow_yml(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = write(project / "mlflow.yml", "tracking:\n  run:\n    name: found\n")
    (project / "notebooks").mkdir()
    monkeypatch.chdir(project / "notebooks")

    config = load_config()

    assert config.tracking.run.name == "found"
    assert config.files == (file,)
    assert config.project_root == project


def test_discovery_stops_at_the_project_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "mlflow.yml", "tracking:\n  run:\n    name: outside\n")
    inner = tmp_path / "inner"
    write(inner / "pyproject.toml", '[project]\nname = "inner"\n')
    (inner / "src").mkdir()
    monkeypatch.chdir(inner / "src")

    config = load_config()

    assert config.tracking.run.name is None
    assert config.files == ()
    assert config.project_root == inner


# --------------------------------------------------------------------------------------------
# A relative config path


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
# No config, no pyproject.toml, no .git


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
# Default experiment name.


def test_kedro_package_name_wins_over_project_name(tmp_path: Path) -> None:
    root = tmp_path / "folder-name"
    write(
        root / "pyproject.toml",
        '[project]\nname = "dist-name"\n\n[tool.kedro]\npackage_name = "kedro_pkg"\n',
    )
    file = write(root / "mlflow.yml", "ui:\n  port: 1\n")

    assert load_config(file).default_experiment_name == "kedro_pkg"


def test_project_name_is_the_default_experiment_name(tmp_path: Path) -> None:
    root = tmp_path / "folder-name"
    write(root / "pyproject.toml", '[project]\nname = "dist-name"\n')
    file = write(root / "mlflow.yml", "ui:\n  port: 1\n")

    assert load_config(file).default_experiment_name == "dist-name"


@pytest.mark.parametrize(
    "pyproject",
    [None, "[tool.black]\nline-length = 100\n", "this is [not toml"],
    ids=["no-pyproject", "no-name", "unreadable"],
)
def test_otherwise_the_root_folders_name_is_the_default_experiment_name(
    markerless: Path, pyproject: str | None
) -> None:
    root = markerless / "folder-name"
    (root / ".git").mkdir(parents=True)
    if pyproject is not None:
        write(root / "pyproject.toml", pyproject)
    file = write(root / "conf" / "local" / "mlflow.yml", "ui:\n  port: 1\n")

    config = load_config(file)

    assert config.default_experiment_name == "folder-name"
    assert config.tracking.experiment.name is None


# ---------------------------------------------------------------------------------------------
# Hostile input: whatever the YAML, env vars or overrides, load_config returns a config or
# raises ConfigError (never another exception, never hangs), and no run comes of it.


VALID = """\
server:
  mlflow_tracking_uri: mlruns
  credentials: null
  request_header_provider:
    type: null
    pass_context: false
    init_kwargs: {}
tracking:
  disable_tracking:
    pipelines: [a, b]
  experiment:
    name: exp
    create_experiment_kwargs:
      artifact_location: null
      tags: {team: x}
  run:
    id: null
    name: nightly
    nested: true
  params:
    dict_params:
      flatten: false
      recursive: true
      sep: "."
    long_params_strategy: fail
ui:
  port: "5000"
  host: 127.0.0.1
"""


FUZZ = settings(
    max_examples=int(os.environ.get("TRACKCFG_FUZZ_EXAMPLES", "120")),
    deadline=2000,  # a hang or a pathological slowdown fails the test
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@contextmanager
def fuzz_project(text: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        yield project_folder(Path(tmp), name="fuzz", config=text) / "mlflow.yml"


def load_or_config_error(file: Path, **kwargs: Any) -> TrackingConfig | ConfigError:
    try:
        return load_config(file, **kwargs)
    except ConfigError as exc:
        error = exc
    assert error.problems, "a ConfigError must name at least one problem"
    assert all(problem.message for problem in error.problems)
    return error


yaml_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=20),
)


yaml_values = st.recursive(
    yaml_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


env_names = st.sampled_from(
    ["TRACKCFG_" + "__".join(p.upper().split(".")) for p in sorted(SCHEMA)]
) | st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ_", min_size=1, max_size=25).map(
    lambda s: "TRACKCFG_" + s
)


@FUZZ
@given(st.text(max_size=300))
def test_random_text_is_a_config_or_a_config_error(text: str) -> None:
    with fuzz_project(text) as file:
        load_or_config_error(file)


@FUZZ
@given(st.data())
def test_mutated_valid_documents_are_a_config_or_a_config_error(data: st.DataObject) -> None:
    text = VALID
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(text)))
        action = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        chunk = data.draw(
            st.sampled_from(
                [
                    ":",
                    " ",
                    "\n",
                    "- ",
                    "{",
                    "]",
                    "'",
                    '"',
                    "&a",
                    "*a",
                    "!!python/object:os.system",
                    "\t",
                    "null",
                    "yes",
                    "-1",
                    "~",
                    "%",
                    "@",
                ]
            )
        )
        if action == "insert":
            text = text[:at] + chunk + text[at:]
        elif action == "delete":
            text = text[:at] + text[at + len(chunk) :]
        else:
            text = text[:at] + chunk + text[at + len(chunk) :]
    with fuzz_project(text) as file:
        load_or_config_error(file)


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(sorted(SCHEMA)) | st.text(max_size=30),
        yaml_values,
        max_size=4,
    )
)
@example({"server": []})  # once crashed the loader with a KeyError
def test_random_overrides_are_a_config_or_a_config_error(overrides: dict[str, Any]) -> None:
    with fuzz_project("") as file:
        load_or_config_error(file, overrides=overrides)


@FUZZ
@given(
    st.dictionaries(env_names, st.text(max_size=30).filter(lambda s: "\x00" not in s), max_size=4)
)
def test_random_env_vars_are_a_config_or_a_config_error(env: dict[str, str]) -> None:
    with fuzz_project(VALID) as file:
        load_or_config_error(file, environ={**os.environ, **env})


def test_python_tags_in_yaml_are_refused_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    file = tmp_path / "mlflow.yml"
    file.write_text(
        f"tracking:\n  run:\n    name: !!python/object/apply:os.system ['touch {marker}']\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(file)
    assert not marker.exists()
    assert f"{file}:3" in str(info.value)


def test_an_invalid_config_never_creates_a_run_or_a_store(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("")
    file = tmp_path / "mlflow.yml"
    file.write_text("tracking:\n  run:\n    nested: maybe\n")
    with pytest.raises(ConfigError):
        TrackingSession.from_yaml(file, name="x")
    assert not (tmp_path / "mlruns").exists()
