"""The suite's own set-up holds: what its speed and isolation depend on."""

from __future__ import annotations

import pytest


@pytest.mark.xdist_group("canary")
def test_xdist_groups_reach_the_scheduler(request: pytest.FixtureRequest) -> None:
    """Under ``--dist loadgroup`` (the project's test command), pytest-xdist keeps a group on
    one worker by naming each of its tests ``<id>@<group>`` in the worker.  A pytest and
    pytest-xdist pair that loses the name (pytest 9.2 with pytest-xdist 3.8) ignores every
    group in silence: each worker then builds the module fixtures (servers, Kedro project
    runs) that ``tests/conftest.py``'s ``ONE_WORKER_FIXTURES`` share, and the suite costs
    minutes more."""
    if not getattr(request.config.option, "loadgroup", False):  # set in pytest-xdist workers
        pytest.skip("runs under pytest-xdist's --dist loadgroup only (the project's command)")
    assert request.node.nodeid.endswith("@canary"), (
        f"pytest {pytest.__version__} and this pytest-xdist ignore xdist_group marks "
        f"({request.node.nodeid!r}): install the test dependency group of pyproject.toml"
    )
