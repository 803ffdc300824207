"""Project discovery: which ``mlflow.yml`` file(s) and conf folders a load reads, the project
root they belong to, and the project's name (the default experiment name).

Rules:

- the project root is the nearest folder at or above a config holding ``pyproject.toml`` or
  ``.git``, else the config's own folder; for ``conf/<env>/`` it is counted from above ``conf``;
- a ``conf/`` folder gives ``base/mlflow.yml`` then ``<env>/mlflow.yml``; credentials are
  looked for in the same folders;
- without a path, the current folder and its parents are searched, stopping at the project
  root;
- a relative path is taken from the current folder, as ``open()`` takes it: a missing one is
  reported with the folder it was looked for in and how to find the project's file instead;
- an ``mlflow.yml`` (or ``credentials.yml``) that is there but cannot be read (a folder, a
  symlink loop, a dangling link) is found all the same, and the reader reports it: a broken
  file is never skipped for the defaults, found or named.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import attrs

from .exceptions import ConfigError, ConfigProblem

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "CONFIG_NAMES",
    "CREDENTIALS_NAMES",
    "DEFAULT_ENV",
    "ROOT_MARKERS",
    "Located",
    "find_project_root",
    "first_existing",
    "locate",
    "project_name",
    "root_for",
    "user_config_dir",
]

CONFIG_NAMES = ("mlflow.yml", "mlflow.yaml")
CREDENTIALS_NAMES = ("credentials.yml", "credentials.yaml")
ROOT_MARKERS = ("pyproject.toml", ".git")
DEFAULT_ENV = "local"


def find_project_root(start: Path) -> Path | None:
    """The nearest folder at or above ``start`` holding ``pyproject.toml`` or ``.git``."""
    start = start.resolve()
    for folder in (start, *start.parents):
        if any((folder / marker).exists() for marker in ROOT_MARKERS):
            return folder
    return None


def root_for(config_folder: Path) -> Path:
    """Project root of a config file's folder (for ``conf/<env>/``, count from above ``conf``)."""
    found = find_project_root(config_folder)
    if found is not None:
        return found
    return config_folder.resolve()


def project_name(root: Path) -> str:
    """Kedro's ``package_name``, else ``[project].name``, else the root folder's name."""
    pyproject = root / "pyproject.toml"
    try:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        data = {}
    kedro = data.get("tool", {}).get("kedro", {})
    name = kedro.get("package_name") or data.get("project", {}).get("name")
    return str(name) if name else root.name


def user_config_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_config_dir("trackcfg", appauthor=False))


def first_existing(folder: Path, names: Sequence[str]) -> Path | None:
    """The first of ``names`` present in ``folder``: a file, or anything else standing there
    under that name (a folder, a symlink loop, a dangling link), which the reader then
    refuses; a broken config file is an error, never skipped for the defaults."""
    for name in names:
        if os.path.lexists(folder / name):
            return folder / name
    return None


def _resolved(path: Path) -> Path:
    """``path.resolve()``, or the absolute path when it cannot be resolved (a symlink loop:
    the reader reports it, with this path)."""
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):
        return path.absolute()
    # A dangling link is reported under its own name, not its missing target's.
    return resolved if resolved.exists() else path.absolute()


def _is_file_like(path: Path) -> bool:
    """``path`` names a config file, readable or not: a file; anything there but a folder
    (a symlink loop, a dangling link); a folder named like a config file."""
    if path.is_dir():
        return path.name in CONFIG_NAMES
    return os.path.lexists(path)


@attrs.frozen
class Located:
    """What a load reads: the config files (lowest priority first), the project root, and the
    folders where ``credentials.yml`` is looked for."""

    files: tuple[Path, ...]
    root: Path
    credential_folders: tuple[Path, ...]


def _conf_files(conf: Path, env: str) -> Located:
    folders = [conf / "base"] + ([conf / env] if env != "base" else [])
    files = tuple(f for f in (first_existing(d, CONFIG_NAMES) for d in folders) if f)
    return Located(files, root_for(conf.parent), tuple(folders))


def _is_conf_folder(folder: Path, env: str) -> bool:
    return folder.name == "conf" or (folder / "base").is_dir() or (folder / env).is_dir()


def _not_found(given: Path, cwd: Path) -> ConfigError:
    """A missing ``path``: where it was looked for, and the ways to name the right file."""
    if given.is_absolute():
        message = (
            f"no such file or folder: {given}; pass the right path, or no path to find the "
            "project's mlflow.yml from the current folder upward"
        )
    else:
        folder = cwd.resolve()
        message = (
            f"no such file or folder: {folder / given} (a relative path is taken from the "
            f"current folder, {folder}, as open() takes it); to find the project's mlflow.yml "
            "from the current folder upward pass no path (load_config(), "
            "TrackingSession.from_yaml(None), a trackcfg command without PATH), or pass an "
            f'absolute path such as Path(__file__).parent / "{given.as_posix()}"'
        )
    return ConfigError([ConfigProblem("", message)])


def locate(path: Path | None, env: str, cwd: Path) -> Located | None:
    """The files ``path`` (a file, a conf folder or a project folder; relative to ``cwd``)
    stands for; without ``path``, those found from ``cwd`` upward (``None``: nothing found)."""
    if path is None:
        return _discover(cwd, env)
    given, path = path, path if path.is_absolute() else cwd / path
    if _is_file_like(path):
        file = _resolved(path)
        folder = file.parent
        if folder.parent.name == "conf":
            return Located((file,), root_for(folder.parent.parent), (folder,))
        return Located((file,), root_for(folder), (folder,))
    if path.is_dir():
        if _is_conf_folder(path, env):
            return _conf_files(path.resolve(), env)
        if (path / "conf").is_dir():
            return _conf_files((path / "conf").resolve(), env)
        found = first_existing(path, CONFIG_NAMES)
        if found is not None:
            return Located((_resolved(found),), root_for(path), (path.resolve(),))
        raise ConfigError(
            [
                ConfigProblem(
                    "",
                    f"no conf/ folder or mlflow.yml in {path.resolve()}; write one with "
                    "`trackcfg init` there, or pass the right path",
                )
            ]
        )
    raise _not_found(given, cwd)


def _discover(cwd: Path, env: str) -> Located | None:
    """From ``cwd`` upward, stopping at the project root: a ``conf/`` with an ``mlflow.yml``
    for the environment (or base), else an ``mlflow.yml``."""
    cwd = cwd.resolve()
    for folder in (cwd, *cwd.parents):
        conf = folder / "conf"
        if conf.is_dir():
            located = _conf_files(conf, env)
            if located.files:
                return located
        file = first_existing(folder, CONFIG_NAMES)
        if file is not None:
            return Located((file,), root_for(folder), (folder,))
        if any((folder / marker).exists() for marker in ROOT_MARKERS):
            break
    return None
