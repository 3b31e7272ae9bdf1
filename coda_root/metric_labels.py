"""Labelled Prometheus children, looked up once.

prometheus_client's `family.labels(*values)` validates the values and takes a lock on
every call: microseconds, paid per request and per item on hot paths (~4 % of a Flow
leader's event loop, ~8 % of a supervisor's samples under W-seq, #8). `LabelChildren`
remembers each child. It keys by the family object's identity, so one instance must
live no longer than the families it serves: Flow keeps one for its module-level
families, each SupervisorMetrics one for its own registry. Label sets are few and
bounded (each family's label values are, by design).
"""

from __future__ import annotations


class LabelChildren:
    def __init__(self):
        self._children: dict = {}

    def __call__(self, family, *label_values):
        """family.labels(*label_values), remembered."""
        key = (id(family), label_values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = family.labels(*label_values)
        return found
