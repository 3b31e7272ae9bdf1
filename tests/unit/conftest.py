"""The scripted state machine tests (modules using test_execution_sm.Sim) run twice: with
entries applied as commands, and with every entry also replicated as the write set a
leader computes (speculation_twin), whose state must come out identical."""

from __future__ import annotations

import pytest

FORMS = ("commands", "write_sets")


def _uses_sim(module) -> bool:
    return getattr(module, "Sim", None) is not None


def pytest_generate_tests(metafunc):
    if "entry_form" in metafunc.fixturenames and _uses_sim(metafunc.module):
        metafunc.parametrize("entry_form", FORMS, indirect=True)


@pytest.fixture(autouse=True)
def entry_form(request, monkeypatch):
    form = getattr(request, "param", "commands")
    if form != "write_sets":
        yield form
        return
    import speculation_twin
    import test_execution_sm
    monkeypatch.setattr(test_execution_sm, "Applier", speculation_twin.TwinApplier)
    speculation_twin.TwinApplier.created.clear()
    yield form
    twins, speculation_twin.TwinApplier.created[:] = list(speculation_twin.TwinApplier.created), []
    try:
        for twin in twins:
            twin.verify()
        assert sum(t.write_sets for t in twins) > 0 or not twins, "nothing went as a write set"
        assert sum(t.own_write_sets for t in twins) > 0 or sum(t.write_sets for t in twins) < 4, \
            "no write set was applied the way a leader applies its own"
    finally:
        for twin in twins:
            twin.close()
