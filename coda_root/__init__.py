"""Coda: durable workflows in plain async Python.

`import coda` gives the SDK surface; the server lives in coda.flow, storage in
coda.storage, the gRPC API in coda.api, supervisors in coda.supervisor.
"""

from coda import errors
from coda.client.client import Client, SyncClient, WorkflowHandle
from coda.errors import CodaError

__all__ = ["Client", "CodaError", "SyncClient", "WorkflowHandle", "errors"]
__version__ = "0.1.0"
