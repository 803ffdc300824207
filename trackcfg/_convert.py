"""Structuring: the strict cattrs converter that turns merged plain data into the attrs
model, its structure hooks, and the translation of cattrs' grouped errors into
``(dotted.path, message)`` pairs.

cattrs is imported on first use, never at ``import trackcfg``: it is a third of that import's
cost otherwise.  The hooks accept what both YAML readers produce (ruamel's YAML 1.2 for files,
Kedro's YAML 1.1 through its config loader) and refuse everything else with "expected ...".
"""

from __future__ import annotations

import enum
import functools
import reprlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs

from ._config import InvalidFieldError

__all__ = ["cattrs_module", "converter", "error_paths", "make_converter"]


def _shown(value: Any) -> str:
    """``repr(value)`` for a message, bounded: a value may be megabytes, or a list whose
    parts are shared many times over (YAML aliases), whose whole repr would never end."""
    shorter = reprlib.Repr()
    shorter.maxlevel, shorter.maxlist, shorter.maxdict = 2, 5, 5
    shorter.maxstring = shorter.maxother = shorter.maxlong = 80
    try:
        return shorter.repr(value)
    except ValueError:  # an integer of more digits than repr() writes
        return f"a {type(value).__name__} too large to show"


def _expected(what: str, value: Any) -> ValueError:
    return ValueError(f"expected {what}, got {_shown(value)} ({type(value).__name__})")


_MAX_INT_DIGITS = 19
"""Digits of the longest integer written as text that is read as one (2**63 has 19)."""

_BOOL_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def _structure_bool(value: Any, _: type) -> bool:
    # YAML 1.2 reads yes/no/on/off as strings; Kedro's loader (YAML 1.1) as booleans.
    # Accept both so a kedro-mlflow file means the same here.
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
        return _BOOL_WORDS[value.strip().lower()]
    raise _expected("true or false", value)


def _structure_int(value: Any, _: type) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        digits = value.strip()
        if len(digits) > _MAX_INT_DIGITS:
            # int() of thousands of digits is a ValueError of its own; none is a setting.
            raise ValueError(f"expected an integer, got a number of {len(digits):,} digits")
        return int(digits)
    raise _expected("an integer", value)


def _structure_float(value: Any, _: type) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise _expected("a number", value)


def _structure_str(value: Any, _: type) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise _expected("a string", value)


def _structure_str_tuple(value: Any, _: type) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)):
        raise _expected("a list of strings", value)
    return tuple(_structure_str(v, str) for v in value)


def _structure_str_mapping(value: Any, _: type) -> Mapping[str, str]:
    if not isinstance(value, Mapping):
        raise _expected("a mapping", value)
    return {_structure_str(k, str): _structure_str(v, str) for k, v in value.items()}


def _structure_any_mapping(value: Any, _: type) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _expected("a mapping", value)
    return dict(value)


def _structure_enum(value: Any, cls: type[enum.Enum]) -> enum.Enum:
    if isinstance(value, cls):
        return value
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in cls)
        raise ValueError(f"must be one of {allowed}, got {_shown(value)}") from None


def _is_alias(alias: Any) -> Callable[[Any], bool]:
    def matches(tp: Any) -> bool:
        return bool(tp == alias)

    return matches


def _is_enum(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, enum.Enum)


def cattrs_module() -> Any:
    """cattrs, imported on first use: it is a third of ``import trackcfg``'s cost otherwise."""
    import cattrs

    return cattrs


@functools.cache
def converter() -> Any:
    """The strict converter, built once, on the first load (an immutable value)."""
    return make_converter()


def make_converter() -> Any:
    """A new strict converter: unknown keys refused, every failure collected."""
    cattrs = cattrs_module()
    from cattrs.gen import make_dict_structure_fn

    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    converter.register_structure_hook(bool, _structure_bool)
    converter.register_structure_hook(int, _structure_int)
    converter.register_structure_hook(float, _structure_float)
    converter.register_structure_hook(str, _structure_str)
    # Generic aliases are not classes: match them by equality.
    for alias, hook in (
        (tuple[str, ...], _structure_str_tuple),
        (Mapping[str, str], _structure_str_mapping),
        (Mapping[str, Any], _structure_any_mapping),
    ):
        converter.register_structure_hook_func(_is_alias(alias), hook)
    converter.register_structure_hook_func(_is_enum, _structure_enum)

    def section_hook(cls: type) -> Any:
        inner: Callable[[Any, Any], Any] = make_dict_structure_fn(
            cls, converter, _cattrs_forbid_extra_keys=True
        )

        def structure(value: Any, _: type) -> Any:
            if not isinstance(value, Mapping):
                raise _expected("a mapping", value)
            return inner(value, cls)

        return structure

    converter.register_structure_hook_factory(attrs.has, section_hook)
    return converter


def error_paths(
    exc: BaseException, path: str = "", *, suggest: Callable[[str], str]
) -> Iterator[tuple[str, str]]:
    """``(dotted.path, message)`` for every failure grouped in ``exc``, a structuring error.

    ``suggest`` completes "unknown key; ..." for a path: it is the loader's, which knows the
    schema's valid keys; this module only knows types.
    """

    def join(name: object) -> str:
        return f"{path}.{name}" if path else str(name)

    cattrs = cattrs_module()
    if isinstance(exc, cattrs.ClassValidationError):
        with_notes, without = exc.group_exceptions()
        for sub, note in with_notes:
            yield from error_paths(sub, join(note.name), suggest=suggest)
        for sub in without:
            yield from error_paths(sub, path, suggest=suggest)
    elif isinstance(exc, cattrs.IterableValidationError):
        inner = exc.group_exceptions()
        for sub, _note in inner[0]:
            yield from error_paths(sub, path, suggest=suggest)
        for sub in inner[1]:
            yield from error_paths(sub, path, suggest=suggest)
    elif isinstance(exc, cattrs.ForbiddenExtraKeysError):
        for name in sorted(exc.extra_fields):
            yield join(name), f"unknown key; {suggest(join(name))}"
    elif isinstance(exc, InvalidFieldError):
        yield join(exc.field), str(exc).split(" ", 1)[1]
    else:
        yield path, str(exc)
