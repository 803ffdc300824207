"""Hostile input: whatever the YAML, env vars or overrides, load_config returns a config or
raises ConfigError (never another exception, never hangs), and no run comes of it."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from helpers import project_folder
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from trackcfg import ConfigError, TrackingConfig, TrackingSession, load_config
from trackcfg._loading import SCHEMA

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
def project(text: str) -> Iterator[Path]:
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


@FUZZ
@given(st.text(max_size=300))
def test_random_text_is_a_config_or_a_config_error(text: str) -> None:
    with project(text) as file:
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
    with project(text) as file:
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
    with project("") as file:
        load_or_config_error(file, overrides=overrides)


env_names = st.sampled_from(
    ["TRACKCFG_" + "__".join(p.upper().split(".")) for p in sorted(SCHEMA)]
) | st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ_", min_size=1, max_size=25).map(
    lambda s: "TRACKCFG_" + s
)


@FUZZ
@given(
    st.dictionaries(env_names, st.text(max_size=30).filter(lambda s: "\x00" not in s), max_size=4)
)
def test_random_env_vars_are_a_config_or_a_config_error(env: dict[str, str]) -> None:
    with project(VALID) as file:
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
