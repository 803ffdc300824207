"""Small helpers shared by test modules (import them: ``from helpers import write``)."""

from __future__ import annotations

import textwrap
from pathlib import Path


def write(path: Path, text: str) -> Path:
    """Write dedented YAML; line 1 of the file is the first line of ``text``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def line_of(path: Path, needle: str) -> int:
    """1-based number of the first line of ``path`` containing ``needle``."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in {path}")


HEADER_PROVIDERS = '''
"""Request header providers for trackcfg's tests (server.request_header_provider)."""
from mlflow.tracking.request_header.abstract_request_header_provider import RequestHeaderProvider


class TeamHeader(RequestHeaderProvider):
    def __init__(self, team="none", kedro_context=None):
        self.team = team
        self.project = None if kedro_context is None else kedro_context.project_path.name

    def in_context(self):
        return True

    def request_headers(self):
        headers = {"X-Team": self.team}
        if self.project is not None:
            headers["X-Kedro-Project"] = self.project
        return headers


class Broken(RequestHeaderProvider):
    def __init__(self, **kwargs):
        raise RuntimeError("no token in the vault")

    def in_context(self):
        return True

    def request_headers(self):
        return {}


class NotAProvider:
    pass
'''


def header_providers_module(folder: Path) -> Path:
    """Write the module ``trackcfg_test_headers`` into ``folder``; returns ``folder`` (for
    ``monkeypatch.syspath_prepend``)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "trackcfg_test_headers.py").write_text(HEADER_PROVIDERS, encoding="utf-8")
    return folder
