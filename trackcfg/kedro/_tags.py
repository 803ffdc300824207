"""The run tags kedro-mlflow 2.0.3 writes, so that its users' saved searches and UI filters
(``tags.kedro_command LIKE '%run%'``, ``tags.pipeline_names = "['training']"``) keep finding
the runs after ``kedro trackcfg migrate``.

Written on every Kedro run, beside trackcfg's own ``kedro.*`` tags (the command line as typed,
the session id, the environment): every non-empty Kedro run parameter under its own name
(``run_id``, ``project_path``, ``env``, ``kedro_version``, ``pipeline_names``, ``tags``,
``runtime_params``, ...) as ``str(value)``, as MLflow's ``set_tags`` writes it, and
``kedro_command``, kedro-mlflow's rebuilt command (``kedro run --pipeline=training``).  A
runner instance's ``repr`` is written without its memory address.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["kedro_mlflow_tags"]

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")

# kedro-mlflow's command options, in its order: (run param, option).
_OPTIONS = (
    ("from_inputs", "--from-inputs"),
    ("from_nodes", "--from-nodes"),
    ("to_nodes", "--to-nodes"),
    ("node_names", "--node"),
    ("pipeline_names", "--pipeline"),
    ("tags", "--tag"),
)


def kedro_mlflow_tags(run_params: Mapping[str, Any]) -> dict[str, str]:
    tags = {str(key): _ADDRESS.sub("", str(value)) for key, value in run_params.items() if value}
    tags["kedro_command"] = kedro_mlflow_command(run_params)
    return tags


def kedro_mlflow_command(run_params: Mapping[str, Any]) -> str:
    """kedro-mlflow's ``kedro_command`` tag: ``kedro run`` and the filters of the run, each
    as ``--option=a,b``; the pipelines (``__default__`` when none was named)."""
    words = ["kedro", "run"]
    for key, option in _OPTIONS:
        values = run_params.get(key)
        if key == "pipeline_names" and not values:
            values = ["__default__"]
        if values:
            words.append(f"{option}={','.join(_texts(values))}")
    versions = run_params.get("load_versions") or {}
    if versions:
        listed = ",".join(f"{name}:{version}" for name, version in versions.items())
        words.append(f"--load-version={listed}")
    return " ".join(words)


def _texts(values: Iterable[Any] | str) -> list[str]:
    return [values] if isinstance(values, str) else [str(v) for v in values]
