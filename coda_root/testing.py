"""`coda.testing`: run workflows in-process for unit tests (see coda.client.testing)."""

from coda.client.testing import LocalRun, WorkflowFailedError, run_locally

__all__ = ["LocalRun", "WorkflowFailedError", "run_locally"]
