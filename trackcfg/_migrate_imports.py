"""``kedro trackcfg migrate``'s work on the project's Python code: the imports of kedro-mlflow
names trackcfg has under the same name are pointed at trackcfg's modules.

- ``from kedro_mlflow.pipeline import pipeline_ml_factory`` (and ``kedro_mlflow.pipeline.
  pipeline_ml``, ``...pipeline_ml_factory``, ``kedro_mlflow.mlflow``, ``kedro_mlflow.mlflow.
  kedro_pipeline_model``) -> ``from trackcfg.kedro.pipeline import ...``;
- ``from kedro_mlflow.io.<artifacts|metrics|models>[.<module>] import Mlflow...Dataset`` ->
  ``from trackcfg.kedro.datasets import ...``.

Only the module path of a ``from ... import`` statement changes, and only when every name it
imports exists in trackcfg's module: the rest of the file (the names, ``as`` aliases,
parentheses, comments, line endings) stays byte for byte.  Found with ``tokenize``, so a
string or a comment that looks like an import is never touched.  Any other import of the
``kedro_mlflow`` package is reported (the caller lists it), never changed.
"""

from __future__ import annotations

import io
import re
import tokenize
from collections.abc import Mapping

import attrs

__all__ = ["ImportChange", "ImportLeftover", "rewrite_imports"]

PIPELINE = "trackcfg.kedro.pipeline"
DATASETS = "trackcfg.kedro.datasets"
PIPELINE_NAMES = frozenset(
    {
        "pipeline_ml_factory",
        "PipelineML",
        "KedroPipelineModel",
        "KedroMlflowPipelineMLError",
        "KedroPipelineModelError",
    }
)
_DATASET_MODULES = {
    "artifacts": ("mlflow_artifact_dataset",),
    "metrics": (
        "mlflow_metric_dataset",
        "mlflow_metric_history_dataset",
        "mlflow_metrics_history_dataset",
    ),
    "models": (
        "mlflow_model_tracking_dataset",
        "mlflow_model_local_filesystem_dataset",
        "mlflow_model_registry_dataset",
    ),
}
DATASET_NAMES = frozenset(
    {
        "MlflowArtifactDataset",
        "MlflowMetricDataset",
        "MlflowMetricHistoryDataset",
        "MlflowMetricsHistoryDataset",
        "MlflowModelTrackingDataset",
        "MlflowModelLocalFileSystemDataset",
        "MlflowModelRegistryDataset",
    }
)

MODULES: Mapping[str, tuple[str, frozenset[str]]] = {
    "kedro_mlflow.pipeline": (PIPELINE, PIPELINE_NAMES),
    "kedro_mlflow.pipeline.pipeline_ml": (PIPELINE, PIPELINE_NAMES),
    "kedro_mlflow.pipeline.pipeline_ml_factory": (PIPELINE, PIPELINE_NAMES),
    "kedro_mlflow.mlflow": (PIPELINE, PIPELINE_NAMES),
    "kedro_mlflow.mlflow.kedro_pipeline_model": (PIPELINE, PIPELINE_NAMES),
    **{
        f"kedro_mlflow.io.{package}{suffix}": (DATASETS, DATASET_NAMES)
        for package, modules in _DATASET_MODULES.items()
        for suffix in ("", *(f".{m}" for m in modules))
    },
}
"""kedro-mlflow's module -> trackcfg's module and the names trackcfg has there."""

_KEDRO_MLFLOW = re.compile(r"kedro_mlflow(\.|$)")


@attrs.frozen
class ImportChange:
    line: int
    old: str
    new: str


@attrs.frozen
class ImportLeftover:
    line: int
    statement: str


def rewrite_imports(text: str) -> tuple[str, list[ImportChange], list[ImportLeftover]]:
    """``text`` with its kedro-mlflow imports pointed at trackcfg; the imports of the
    ``kedro_mlflow`` package left as they are.  Unparsable code is left whole (no change,
    no leftover: ``tokenize`` fails, and so would Python)."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError):
        return text, [], []
    offsets = _line_offsets(text)
    replacements: list[tuple[int, int, str, str, int]] = []
    leftovers: list[ImportLeftover] = []
    starts_statement = True
    for index, token in enumerate(tokens):
        at_start = starts_statement
        if token.type in (tokenize.NEWLINE, tokenize.NL, tokenize.INDENT, tokenize.DEDENT):
            starts_statement = token.type != tokenize.NL or starts_statement
            continue
        if token.type == tokenize.COMMENT:
            continue
        starts_statement = token.type == tokenize.OP and token.string == ";"
        if not at_start or token.type != tokenize.NAME or token.string not in ("from", "import"):
            continue
        module, end = _dotted(tokens, index + 1)
        if not _KEDRO_MLFLOW.match(module):
            if token.string == "import" and _imports_kedro_mlflow(tokens, index + 1):
                leftovers.append(ImportLeftover(token.start[0], _line(text, token.start[0])))
            continue
        target = MODULES.get(module)
        names = _imported_names(tokens, end) if token.string == "from" else None
        if target is None or names is None or not names or not set(names) <= target[1]:
            leftovers.append(ImportLeftover(token.start[0], _line(text, token.start[0])))
            continue
        first, last = tokens[index + 1], tokens[end - 1]
        start = offsets[first.start[0] - 1] + first.start[1]
        stop = offsets[last.end[0] - 1] + last.end[1]
        replacements.append((start, stop, text[start:stop], target[0], first.start[0]))
    pieces: list[str] = []
    changes: list[ImportChange] = []
    done = 0
    for start, stop, old, new, line in replacements:
        pieces += [text[done:start], new]
        done = stop
        changes.append(ImportChange(line, old, new))
    pieces.append(text[done:])
    return "".join(pieces), changes, leftovers


def _dotted(tokens: list[tokenize.TokenInfo], index: int) -> tuple[str, int]:
    """The dotted name starting at ``tokens[index]`` (no spaces inside), and the index
    after it."""
    parts: list[str] = []
    while index < len(tokens):
        token = tokens[index]
        if token.type == tokenize.NAME or (token.type == tokenize.OP and token.string == "."):
            if parts and tokens[index - 1].end != token.start:
                break
            parts.append(token.string)
            index += 1
        else:
            break
    return "".join(parts), index


def _imported_names(tokens: list[tokenize.TokenInfo], index: int) -> list[str] | None:
    """The names of ``import a, b as c`` / ``import (a, b)`` after a ``from`` module (None
    for ``import *`` or anything unexpected)."""
    if index >= len(tokens) or tokens[index].string != "import":
        return None
    names: list[str] = []
    expect_name = True
    for token in tokens[index + 1 :]:
        if token.type in (tokenize.NEWLINE, tokenize.ENDMARKER) or token.string == ";":
            break
        if token.type in (tokenize.NL, tokenize.COMMENT) or token.string in ("(", ")"):
            continue
        if token.string == "*":
            return None
        if token.string == ",":
            expect_name = True
        elif token.string == "as":
            expect_name = False
        elif token.type == tokenize.NAME and expect_name:
            names.append(token.string)
            expect_name = False
    return names


def _imports_kedro_mlflow(tokens: list[tokenize.TokenInfo], index: int) -> bool:
    """Whether ``import x, kedro_mlflow.y as z`` names the ``kedro_mlflow`` package."""
    while index < len(tokens):
        module, index = _dotted(tokens, index)
        if _KEDRO_MLFLOW.match(module):
            return True
        while index < len(tokens) and tokens[index].string not in (",", ";", "\n", ""):
            if tokens[index].type in (tokenize.NEWLINE, tokenize.ENDMARKER):
                return False
            index += 1
        if index >= len(tokens) or tokens[index].string != ",":
            return False
        index += 1
    return False


def _line_offsets(text: str) -> list[int]:
    offsets = [0]
    for line in io.StringIO(text, newline=""):
        offsets.append(offsets[-1] + len(line))
    return offsets


def _line(text: str, number: int) -> str:
    lines = text.splitlines()
    return lines[number - 1].strip() if number <= len(lines) else ""
