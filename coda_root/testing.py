"""`coda.testing`: run workflows in-process, and replay recorded histories."""

from coda.client.testing import (LocalRun, ReplayResult, WorkflowFailedError, load_history,
                                 replay, run_locally)

__all__ = ["LocalRun", "ReplayResult", "WorkflowFailedError", "load_history", "replay",
           "run_locally"]
