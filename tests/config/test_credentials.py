"""``server.credentials`` resolves the same through ``credentials.yml`` files (``load_config``)
and through an already-loaded mapping (``config_from_mapping``, what ``trackcfg.kedro``'s
``read_config`` passes from Kedro's ``credentials`` config): same values, same refusals, same
messages, never a value in them."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import write
from ruamel.yaml import YAML

from trackcfg import ConfigError, TrackingConfig, load_config
from trackcfg._loading import config_from_mapping

SECRET = f"tc-SECRET-{secrets.token_hex(12)}"
"""Random per test run: it cannot appear in a message by accident."""

Load = Callable[[Path], TrackingConfig]


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    """A project's ``conf`` folder whose ``mlflow.yml`` names the credentials entry ``db``;
    tests write ``conf/local/credentials.yml``."""
    project = tmp_path / "proj"
    write(project / "pyproject.toml", '[project]\nname = "proj"\n')
    write(project / "conf" / "base" / "mlflow.yml", "server:\n  credentials: db\n")
    (project / "conf" / "local").mkdir(parents=True)
    return project / "conf"


def _yaml(file: Path) -> dict[str, Any]:
    data: dict[str, Any] = YAML(typ="safe", pure=True).load(file.read_text(encoding="utf-8"))
    return data


def from_files(conf: Path) -> TrackingConfig:
    return load_config(conf)


def from_mapping(conf: Path) -> TrackingConfig:
    """What ``read_config`` does, with the mappings a YAML loader gives."""
    return config_from_mapping(
        _yaml(conf / "base" / "mlflow.yml"),
        file=conf / "base" / "mlflow.yml",
        root=conf.parent,
        credentials=_yaml(conf / "local" / "credentials.yml"),
    )


def from_kedro_loader(conf: Path) -> TrackingConfig:
    """The same, with Kedro's own config loader reading ``credentials``."""
    kedro_config = pytest.importorskip("kedro.config")
    loader = kedro_config.OmegaConfigLoader(
        conf_source=str(conf), base_env="base", default_run_env="local"
    )
    return config_from_mapping(
        _yaml(conf / "base" / "mlflow.yml"),
        file=conf / "base" / "mlflow.yml",
        root=conf.parent,
        credentials=loader["credentials"],
    )


ALL_WAYS = [from_files, from_mapping, from_kedro_loader]


def _error(load: Load, conf: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(conf)
    assert len(info.value.problems) == 1, info.value
    assert SECRET not in str(info.value)
    return info.value


@pytest.mark.parametrize("load", ALL_WAYS)
def test_the_same_entry_gives_the_same_variables_every_way(load: Load, conf: Path) -> None:
    write(
        conf / "local" / "credentials.yml",
        f"""
        db:
          PGPASSWORD: {SECRET}
          PGSSLCERT: null
          PGPORT: 5432
          RATIO: 1.5
          VERIFY: true
        """,
    )

    config = load(conf)

    assert config.credentials is not None
    assert config.credentials.name == "db"
    assert config.credentials.as_env() == {
        "PGPASSWORD": SECRET,
        "PGSSLCERT": "",
        "PGPORT": "5432",
        "RATIO": "1.5",
        "VERIFY": "True",
    }


def test_nested_values_are_refused_the_same_way_everywhere(conf: Path) -> None:
    write(
        conf / "local" / "credentials.yml",
        f"""
        db:
          PGPASSWORD: {SECRET}
          OPTIONS:
            sslmode: {SECRET}
          HOSTS: [{SECRET}, other]
        """,
    )

    problems = [_error(load, conf).problems[0] for load in ALL_WAYS]

    assert {(p.key, p.message) for p in problems} == {
        (
            "server.credentials",
            "credentials entry 'db': OPTIONS, HOSTS must be plain values, not mappings or lists",
        )
    }
    assert problems[0].where == str(conf / "local" / "credentials.yml")


def test_an_entry_that_is_not_a_mapping_is_refused_the_same_way_everywhere(conf: Path) -> None:
    write(conf / "local" / "credentials.yml", f"db: {SECRET}\n")

    messages = {_error(load, conf).problems[0].message for load in ALL_WAYS}

    assert messages == {"credentials entry 'db' must map variable names to values"}


@pytest.mark.parametrize("load", ALL_WAYS)
def test_a_missing_entry_lists_the_entries_that_exist_never_a_value(load: Load, conf: Path) -> None:
    write(
        conf / "local" / "credentials.yml",
        f"""
        warehouse:
          PGPASSWORD: {SECRET}
        s3_store:
          AWS_SECRET_ACCESS_KEY: {SECRET}
        """,
    )

    problem = _error(load, conf).problems[0]

    assert problem.key == "server.credentials"
    assert problem.message.startswith("no credentials entry named 'db'; looked in ")
    assert problem.message.endswith("; entries there: s3_store, warehouse")
    assert (problem.where or "").startswith(str(conf / "base" / "mlflow.yml"))
    assert "PGPASSWORD" not in problem.message  # keys of other entries are not shown either


def test_a_missing_entry_in_files_says_which_files_were_read(
    conf: Path, user_config_dir: Path
) -> None:
    write(conf / "local" / "credentials.yml", "warehouse:\n  PGPASSWORD: x\n")

    message = _error(from_files, conf).problems[0].message

    looked_in = [
        conf / "base" / "credentials.yml",
        conf / "local" / "credentials.yml",
        user_config_dir / "credentials.yml",
    ]
    assert f"looked in {', '.join(map(str, looked_in))};" in message
