"""The config model: defaults, validators, provenance labels, masked credentials."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from trackcfg import LongParamsStrategy, TrackingConfig
from trackcfg._config import (
    Credentials,
    DictParamsConfig,
    InvalidFieldError,
    Source,
    UIConfig,
)


def test_defaults_in_code_are_the_schema_defaults_of_the_design() -> None:
    config = TrackingConfig()

    assert config.server.mlflow_tracking_uri == "mlruns"
    assert config.server.mlflow_registry_uri is None
    assert config.server.credentials is None
    assert config.tracking.disable_tracking.pipelines == ()
    assert config.tracking.experiment.name is None
    assert config.tracking.experiment.create is True
    assert config.tracking.experiment.restore_if_deleted is True
    assert config.tracking.run.id is None
    assert config.tracking.run.name is None
    assert config.tracking.run.nested is True
    assert config.tracking.params.dict_params.flatten is False
    assert config.tracking.params.dict_params.recursive is True
    assert config.tracking.params.dict_params.sep == "."
    assert config.tracking.params.long_params_strategy is LongParamsStrategy.FAIL
    assert config.ui.port is None
    assert config.ui.host is None


def test_kedro_mlflow_keys_default_to_kedro_mlflow_values() -> None:
    config = TrackingConfig()

    assert config.server.request_header_provider.type is None
    assert config.server.request_header_provider.pass_context is False
    assert dict(config.server.request_header_provider.init_kwargs) == {}
    assert config.tracking.disable_tracking.disable_autologging is True
    assert config.tracking.experiment.create_experiment_kwargs.artifact_location is None
    assert config.tracking.experiment.create_experiment_kwargs.tags is None


def test_config_built_in_code_has_no_loader_metadata() -> None:
    config = TrackingConfig()

    assert config.project_root is None
    assert config.default_experiment_name is None
    assert config.credentials is None
    assert dict(config.sources) == {}
    assert config.files == ()


def test_long_params_strategy_values_are_the_yaml_spellings() -> None:
    assert [s.value for s in LongParamsStrategy] == ["fail", "truncate", "tag"]


def test_config_is_frozen() -> None:
    config = TrackingConfig()

    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.ui.port = 5000  # type: ignore[misc]


def test_loader_metadata_does_not_take_part_in_equality(tmp_path: Path) -> None:
    with_metadata = attrs.evolve(
        TrackingConfig(), project_root=tmp_path, default_experiment_name="x"
    )

    assert with_metadata == TrackingConfig()


def test_empty_sep_is_refused_naming_the_field() -> None:
    with pytest.raises(InvalidFieldError, match="'sep' must not be empty") as info:
        DictParamsConfig(sep="")

    assert info.value.field == "sep"
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("port", [-1, 65536, 70000])
def test_ui_port_out_of_range_is_refused(port: int) -> None:
    with pytest.raises(InvalidFieldError, match=f"'port' must be between 0 and 65535, got {port}"):
        UIConfig(port=port)


@pytest.mark.parametrize("port", [0, 5000, 65535, None])
def test_ui_port_in_range_or_none_is_accepted(port: int | None) -> None:
    assert UIConfig(port=port).port == port


@pytest.mark.parametrize(
    ("source", "text"),
    [
        (Source("default"), "default"),
        (Source("file", "/p/conf/local/mlflow.yml", 12), "/p/conf/local/mlflow.yml:12"),
        (Source("file", "/p/mlflow.yml"), "/p/mlflow.yml"),
        (Source("env", "TRACKCFG_TRACKING__RUN__NAME"), "env TRACKCFG_TRACKING__RUN__NAME"),
        (Source("override", "tracking.run.name"), "override 'tracking.run.name'"),
    ],
)
def test_source_reads_as_where_the_value_came_from(source: Source, text: str) -> None:
    assert str(source) == text


SECRET = "s3cr3t-Value-9f2"  # must never be shown


def test_credentials_repr_and_str_mask_every_value() -> None:
    creds = Credentials(name="aws", values={"AWS_SECRET_ACCESS_KEY": SECRET, "TOKEN": SECRET + "2"})

    assert SECRET not in repr(creds)
    assert SECRET not in str(creds)
    assert repr(creds) == "Credentials(name='aws', {AWS_SECRET_ACCESS_KEY='***', TOKEN='***'})"


def test_credentials_values_are_read_through_as_env_and_keys() -> None:
    creds = Credentials(name="aws", values={"AWS_SECRET_ACCESS_KEY": SECRET})

    assert creds.keys() == ("AWS_SECRET_ACCESS_KEY",)
    assert creds.as_env() == {"AWS_SECRET_ACCESS_KEY": SECRET}


def test_config_repr_never_shows_credentials() -> None:
    creds = Credentials(name="aws", values={"AWS_SECRET_ACCESS_KEY": SECRET})
    config = attrs.evolve(TrackingConfig(), credentials=creds)

    assert SECRET not in repr(config)
    assert SECRET not in str(config)
