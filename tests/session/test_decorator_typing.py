"""@tracked keeps the wrapped function's type: checked by mypy (nox -s typing), run by pytest.

Each ``type: ignore[...]`` below must be needed: mypy --strict reports unused ignores, so if
@tracked lost the signature (returned ``Any``), these lines would fail the typing session.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from trackcfg import TrackingConfig, tracked

CONFIG = TrackingConfig(project_root=Path("/nonexistent"))


@tracked
def bare(lr: float, epochs: int = 3) -> dict[str, float]:
    return {"lr": lr * epochs}


@tracked("mlflow.yml")
def with_path(name: str, *, flag: bool = False) -> str:
    return name


@tracked(config=CONFIG, name="n", params=["a"], tags={"t": "x"})
async def coroutine(a: int) -> int:
    return a


@tracked(config=CONFIG, log_result=False)
def quiet(a: int) -> int:
    return a


class Model:
    @tracked(config=CONFIG)
    def fit(self, alpha: float) -> float:
        return alpha


def never_called() -> None:
    bare("not a float")  # type: ignore[arg-type]
    with_path("x", flag="yes")  # type: ignore[arg-type]
    text: str = bare(0.1)  # type: ignore[assignment]
    number: str = asyncio.run(coroutine(1))  # type: ignore[assignment]
    Model().fit()  # type: ignore[call-arg]
    quiet("1")  # type: ignore[arg-type]
    del text, number


def test_signatures_are_kept_for_the_type_checker() -> None:
    plain: Callable[[float, int], dict[str, float]] = bare
    awaitable: Callable[[int], Coroutine[Any, Any, int]] = coroutine
    method: Callable[[float], float] = Model().fit
    assert plain is bare
    assert awaitable is coroutine
    assert method.__name__ == "fit"
    assert asyncio.iscoroutinefunction(coroutine)
