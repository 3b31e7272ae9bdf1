"""Coda: durable workflows in plain async Python.

`import coda` gives the SDK surface; the server lives in coda.flow, storage in
coda.storage, the gRPC API in coda.api, supervisors in coda.supervisor.
"""

from coda import context, errors, testing
from coda.client.client import Client, SyncClient, WorkflowHandle
from coda.client.schedules import ScheduleHandle
from coda.client.sdk import RetryPolicy, task, workflow
from coda.client.workflow_runtime import (ChildWorkflowFailedError, NonDeterminismError,
                                         TaskFailedError)
from coda.errors import (CodaError, WaitTimeout, WorkflowCancelledError, WorkflowError,
                         WorkflowFailedError, WorkflowTerminatedError, WorkflowTimedOutError)

__all__ = ["ChildWorkflowFailedError", "Client", "CodaError", "NonDeterminismError", "RetryPolicy", "ScheduleHandle",
           "SyncClient",
           "TaskFailedError", "WaitTimeout", "WorkflowCancelledError", "WorkflowError",
           "WorkflowFailedError", "WorkflowHandle", "WorkflowTerminatedError",
           "WorkflowTimedOutError", "context", "errors", "task", "testing", "workflow"]
__version__ = "0.1.0"
