"""The artifact calls' local part: paths checked before anything is sent, and what
``log_dict`` and the buffered ``log_text`` write (pure functions, no I/O)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from ._params import artifact_path_problem, artifact_path_suggestion
from .exceptions import RunError

__all__ = ["artifact_places", "check_artifact_path", "dict_text"]


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
    """What MLflow's ``log_dict`` writes: YAML for ``.yml``/``.yaml``, else JSON."""
    if PurePosixPath(artifact_file).suffix in (".yml", ".yaml"):
        from io import StringIO

        from ruamel.yaml import YAML

        yaml = YAML(typ="safe", pure=True)
        yaml.default_flow_style = False
        out = StringIO()
        yaml.dump(dict(data), out)
        return out.getvalue()
    import json

    return json.dumps(dict(data), indent=2)


def artifact_places(texts: Mapping[str, str]) -> list[tuple[str, str | None, str]]:
    """``{artifact_file: text}`` as (file name, artifact folder or None, text)."""
    places = []
    for artifact_file, text in texts.items():
        path = PurePosixPath(artifact_file)
        folder = str(path.parent)
        places.append((path.name, None if folder in ("", ".") else folder, text))
    return places
