"""The public modules' ``__all__`` stay honest: every name listed exists and says what it is,
and every class or function a public module defines for its users is listed."""

from __future__ import annotations

import importlib
import inspect

import pytest
from helpers import run_python

PUBLIC_MODULES = (
    "trackcfg",
    "trackcfg.exceptions",
    "trackcfg.kedro",
    "trackcfg.kedro.datasets",
    "trackcfg.testing",
)


def _own_doc(obj: object) -> str | None:
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    return doc.strip() if isinstance(doc, str) and doc.strip() else None


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_every_name_in_all_is_importable_and_documented(name: str) -> None:
    module = importlib.import_module(name)
    exported = module.__all__
    assert len(set(exported)) == len(exported), f"{name}.__all__ lists a name twice"
    assert list(exported) == sorted(exported), f"{name}.__all__ is not sorted"
    missing = [n for n in exported if not hasattr(module, n)]
    assert missing == [], f"{name}.__all__ names what it does not define: {missing}"
    undocumented = [n for n in exported if _own_doc(getattr(module, n)) is None]
    assert undocumented == [], f"{name}: no docstring for {undocumented}"
    done = run_python("-c", f"from {name} import *")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_every_public_class_and_function_is_in_all(name: str) -> None:
    """Defined in the module itself, or (the package) in one of trackcfg's private modules."""
    module = importlib.import_module(name)
    defined_here = [
        attribute
        for attribute, obj in vars(module).items()
        if not attribute.startswith("_")
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and (
            obj.__module__ == name
            or (name == "trackcfg" and obj.__module__.startswith("trackcfg."))
        )
    ]
    unlisted = sorted(set(defined_here) - set(module.__all__))
    assert unlisted == [], f"{name} defines public {unlisted} but leaves them out of __all__"


def test_the_package_exports_what_its_docstring_promises() -> None:
    """``import trackcfg`` gives every public name without importing mlflow."""
    code = (
        "import sys, trackcfg\n"
        "names = [n for n in trackcfg.__all__ if getattr(trackcfg, n, None) is None]\n"
        "print(names, 'mlflow' in sys.modules)\n"
    )
    done = run_python("-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]", "False"]
