"""Environment variables set for a while, and given back exactly."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping

import attrs

__all__ = ["EnvSnapshot", "exported"]


@contextlib.contextmanager
def exported(variables: Mapping[str, str]) -> Iterator[None]:
    """Set ``variables`` in ``os.environ`` for the block, then put back exactly those (other
    changes made meanwhile are kept)."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


@attrs.define
class EnvSnapshot:
    """The prior values of variables about to be set, to put back exactly by ``restore``."""

    saved: dict[str, str | None] = attrs.field(factory=dict)

    def remember(self, *names: str) -> None:
        for name in names:
            self.saved.setdefault(name, os.environ.get(name))

    def set(self, name: str, value: str) -> None:
        self.remember(name)
        os.environ[name] = value

    def unset(self, name: str) -> None:
        self.remember(name)
        if name in os.environ:
            del os.environ[name]

    def restore(self) -> None:
        for name, value in self.saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self.saved.clear()
