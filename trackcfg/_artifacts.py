"""The artifact calls' local part: paths checked before anything is sent, and what
``log_dict``, the buffered ``log_text``, ``log_figure`` and ``log_table`` write (the last two
write the file MLflow's own call would upload, into a folder the session gives them)."""

from __future__ import annotations

import contextlib
import json
import posixpath
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from .exceptions import RunError

__all__ = [
    "LOGGED_ARTIFACTS_TAG",
    "artifact_path_problem",
    "artifact_path_suggestion",
    "artifact_places",
    "check_artifact_path",
    "dict_text",
    "logged_tables_tag",
    "scratch_artifact",
    "table_frame",
    "write_figure",
    "write_table",
]

LOGGED_ARTIFACTS_TAG = "mlflow.loggedArtifacts"
"""The run tag where MLflow's ``log_table`` lists the run's tables (its UI reads it)."""


def check_artifact_path(call: str, argument: str, path: str) -> None:
    """Refuse, before anything is sent, a path MLflow would refuse (or that would leave the
    run's artifact folder): MLflow says so with an error code it also uses for failures."""
    problem = artifact_path_problem(path)
    if problem is not None:
        raise RunError(
            f"{call}: {argument} {path!r} {problem}; artifacts are stored under the run, at "
            f"a relative path such as {artifact_path_suggestion(path)!r}"
        )


def dict_text(data: Mapping[str, Any], artifact_file: str) -> str:
    """What MLflow's ``log_dict`` writes: YAML for ``.yml``/``.yaml``, else JSON (a value
    JSON has no type for, such as a date or a path, as its ``str``)."""
    if PurePosixPath(artifact_file).suffix in (".yml", ".yaml"):
        from io import StringIO

        from ruamel.yaml import YAML

        yaml = YAML(typ="safe", pure=True)
        yaml.default_flow_style = False
        out = StringIO()
        yaml.dump(dict(data), out)
        return out.getvalue()
    return json.dumps(dict(data), indent=2, default=str)  # what MLflow cannot, as a string


def artifact_places(texts: Mapping[str, str]) -> list[tuple[str, str | None, str]]:
    """``{artifact_file: text}`` as (file name, artifact folder or None, text)."""
    places = []
    for artifact_file, text in texts.items():
        path = PurePosixPath(artifact_file)
        folder = str(path.parent)
        places.append((path.name, None if folder in ("", ".") else folder, text))
    return places


def write_figure(figure: Any, target: Path) -> None:
    """Render ``figure`` into ``target`` as MLflow's ``log_figure`` does: a matplotlib figure
    through ``savefig`` (the format from the file name), a plotly one as HTML (plotly.js from
    its CDN) or, for ``.png``/``.jpeg``/``.webp``/``.svg``/``.pdf``, as an image."""
    # Only a library already imported can have made the figure: nothing is imported for it.
    if "matplotlib" in sys.modules:
        import matplotlib.figure

        if isinstance(figure, matplotlib.figure.Figure):
            figure.savefig(target)
            return
    if "plotly" in sys.modules:
        import plotly.graph_objects  # type: ignore[import-not-found, unused-ignore]

        if isinstance(figure, plotly.graph_objects.Figure):
            suffix = target.suffix
            if suffix == ".html":
                figure.write_html(target, include_plotlyjs="cdn", auto_open=False)
            elif suffix in (".png", ".jpeg", ".webp", ".svg", ".pdf"):
                figure.write_image(target)
            else:
                raise RunError(
                    f"log_figure: a plotly figure is saved as .html, .png, .jpeg, .webp, .svg "
                    f"or .pdf, not {target.name!r}"
                )
            return
    raise RunError(
        f"log_figure: {type(figure).__name__} is not a matplotlib or plotly figure "
        "(matplotlib.figure.Figure, plotly.graph_objects.Figure)"
    )


def table_frame(data: Any, artifact_file: str, earlier: Any = None) -> Any:
    """``data`` (a dict of columns or a pandas DataFrame) as the DataFrame MLflow's
    ``log_table`` writes: a dict of scalars is one row; after ``earlier`` (the table logged
    before under this name), whose rows it keeps, as MLflow appends to an existing table."""
    frame = _frame(data, artifact_file)
    if earlier is None:
        return frame
    import pandas as pd  # type: ignore[import-untyped, import-not-found, unused-ignore]

    return pd.concat([earlier, frame], ignore_index=True)


def _frame(data: Any, artifact_file: str) -> Any:
    if PurePosixPath(artifact_file).suffix not in (".json", ".parquet"):
        raise RunError(
            f"log_table: artifact_file {artifact_file!r} must end in .json or .parquet "
            "(the formats mlflow.load_table reads)"
        )
    try:
        import pandas as pd  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ImportError as exc:
        raise RunError("log_table needs pandas: pip install pandas") from exc
    if isinstance(data, pd.DataFrame):
        return data
    if not isinstance(data, Mapping):
        raise RunError(
            f"log_table: data is a {type(data).__name__}; pass a dict of columns "
            "({'column': [values]}) or a pandas DataFrame"
        )
    try:
        return pd.DataFrame(dict(data))
    except ValueError:  # "If using all scalar values, you must pass an index"
        try:
            return pd.DataFrame([dict(data)])
        except ValueError as exc:
            raise RunError(f"log_table: data is not a table: {exc}") from exc


def write_table(frame: Any, target: Path) -> None:
    """Write ``frame`` as MLflow's ``log_table`` does (``mlflow.load_table`` reads it back):
    JSON ``{"columns": [...], "data": [[...]]}``, or Parquet."""
    try:
        if target.suffix == ".parquet":
            frame.to_parquet(target, index=False)
        else:
            frame.to_json(target, orient="split", index=False, date_format="iso")
    except (TypeError, ValueError, OverflowError) as exc:
        raise RunError(f"log_table: cannot write the table as {target.name!r}: {exc}") from exc


def logged_tables_tag(tables: Iterable[str]) -> str:
    """The value MLflow's ``log_table`` gives ``mlflow.loggedArtifacts`` for these tables."""
    return json.dumps([{"path": path, "type": "table"} for path in tables])


@contextlib.contextmanager
def scratch_artifact(
    artifact_file: str, write: Callable[[Path], None]
) -> Iterator[tuple[Path, str | None]]:
    """The artifact ``artifact_file`` as ``write`` writes it now into a scratch file, for
    the block: yields the file and the run's folder it goes to (None: the top)."""
    import tempfile  # here: `trackcfg --help` imports no temporary-file module

    place = PurePosixPath(artifact_file)
    with tempfile.TemporaryDirectory(prefix="trackcfg-") as scratch:
        target = Path(scratch) / place.name
        write(target)
        folder = str(place.parent)
        yield target, None if folder in ("", ".") else folder


# ---------------------------------------------------------------------------------------------
# MLflow's rule for artifact paths


def artifact_path_problem(path: str) -> str | None:
    """Why ``path`` cannot name a place inside a run's artifacts, or None when it can.

    MLflow's rule (``mlflow.store.artifact.artifact_repo.verify_artifact_path`` and, on a
    server, ``mlflow.utils.uri.validate_path_is_safe``): a relative path in normal form that
    stays inside the run's artifact folder.  MLflow reports a break of it with an error code
    it also uses for unrelated failures, so trackcfg checks before sending.
    """
    if not isinstance(path, str):
        return f"is a {type(path).__name__}, not a string"
    if path in ("", "."):
        return "is empty"
    if path.startswith("/") or PureWindowsPath(path).is_absolute():
        return "is absolute"
    normal = posixpath.normpath(path)
    if normal == ".." or normal.startswith("../") or ".." in path.split("/"):
        return "goes out of the run's artifact folder ('..')"
    if normal != path:
        return f"is not in normal form (MLflow would read it as {normal!r})"
    return None


def artifact_path_suggestion(path: str) -> str:
    """A path inside the run's artifacts close to ``path`` (for messages)."""
    parts = [
        part for part in str(path).replace("\\", "/").split("/") if part not in ("", ".", "..")
    ]
    return "/".join(parts) or "file.txt"
