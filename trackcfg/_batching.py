"""Planning requests: a call's params, tags and metric points cut into as few ``log_batch``
requests as MLflow's limits (``Limits``: entries per request and bytes) allow, params before
tags before metrics.  Pure: nothing here talks to MLflow; ``_delivery`` sends the batches."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs

from ._records import DEFAULT_LIMITS, Batch, Limits, MetricPoint

__all__ = ["plan_batches"]

_METRIC_OVERHEAD = 40
"""Rough bytes of a metric beyond its key: value, step and timestamp."""


@attrs.define
class _Room:
    """What is left of one batch's limits while it is being filled."""

    _limits: Limits
    _size: int = 0
    _count: int = 0

    def fill(self, costs: Sequence[int], start: int, most: int) -> int:
        """Take items from ``start`` while they fit; return the index of the first one left."""
        end = start
        while end < len(costs) and end - start < most and self._take(costs[end]):
            end += 1
        return end

    def _take(self, cost: int) -> bool:
        if self._count >= self._limits.entities_per_batch:
            return False
        # An empty batch takes anything, so an item over the budget still gets sent, alone.
        if self._count and self._size + cost > self._limits.request_bytes:
            return False
        self._size += cost
        self._count += 1
        return True


def plan_batches(
    *,
    params: Mapping[str, str] | None = None,
    tags: Mapping[str, str] | None = None,
    metrics: Sequence[MetricPoint] = (),
    limits: Limits | None = None,
) -> list[Batch]:
    """Split params, tags and metrics into as few ``log_batch`` requests as the limits allow.

    Each batch takes params first, then tags, then fills the room left with metrics, keeping
    each kind's order.  An item larger than ``request_bytes`` alone goes in a batch of its own.
    Params and tags come from mappings, so no key appears twice in a batch.
    """
    limits = limits or DEFAULT_LIMITS
    param_items = list((params or {}).items())
    tag_items = list((tags or {}).items())
    param_costs = [len(key) + len(value) for key, value in param_items]
    tag_costs = [len(key) + len(value) for key, value in tag_items]
    metric_costs = [len(point.key) + _METRIC_OVERHEAD for point in metrics]
    p = t = m = 0
    batches: list[Batch] = []
    while p < len(param_items) or t < len(tag_items) or m < len(metrics):
        room = _Room(limits)
        start_p, p = p, room.fill(param_costs, p, limits.params_per_batch)
        start_t, t = t, room.fill(tag_costs, t, limits.tags_per_batch)
        start_m, m = m, room.fill(metric_costs, m, limits.metrics_per_batch)
        batches.append(
            Batch(
                params=tuple(param_items[start_p:p]),
                tags=tuple(tag_items[start_t:t]),
                metrics=tuple(metrics[start_m:m]),
            )
        )
    return batches
