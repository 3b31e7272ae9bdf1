"""Every error Coda raises, in one tree.

    CodaError                      root; .retryable, .definite, .code
    ├── InvalidArgument            the request itself is wrong (bad id, bad payload, bad flag)
    │   └── PayloadError           a payload that can't be msgpack-encoded or decoded
    ├── ConfigError                a server configuration that fails validation
    ├── NotFound                   unknown workflow id, run id, shard ...
    ├── AlreadyExists              e.g. a workflow id whose reuse policy forbids a new run
    ├── Aborted                    a conditional write found another version (if_version)
    ├── ResourceExhausted          a limit was hit (payload bytes, proposals in flight, ...)
    │   └── LimitExceeded          a run's own limit (history, state keys, signals): final
    ├── NotLeader                  this replica does not lead the shard; .leader_hint
    ├── Unavailable                no leader, no quorum, node unreachable
    ├── Indeterminate              the operation may or may not have happened
    │                              (timeout, leader change while in flight, lost connection)
    ├── Internal                   a bug: reported, never swallowed
    ├── WorkflowError              a run closed without a result (WorkflowHandle.result)
    │   ├── WorkflowFailedError        FAILED: its retry policy is exhausted
    │   ├── WorkflowCancelledError     CANCELLED
    │   ├── WorkflowTerminatedError    TERMINATED
    │   ├── WorkflowTimedOutError      TIMED_OUT: past its execution timeout
    │   └── WorkflowContinuedAsNewError  CONTINUED_AS_NEW: the result is the new run's
    └── WaitTimeout                result(timeout=...) passed while the run still ran

`definite` says whether the operation surely did not happen (True) or may have (False) —
the split a Jepsen history needs (fail vs info). `retryable` says whether the same request
may be sent again; retries must reuse the request id, so an indeterminate start retried
never creates two workflows.
"""

from __future__ import annotations

# Codes travel over the wire (gRPC trailing metadata and the shard's command results), so
# they are stable strings, not class names.
CODE_INVALID_ARGUMENT = "INVALID_ARGUMENT"
CODE_NOT_FOUND = "NOT_FOUND"
CODE_ALREADY_EXISTS = "ALREADY_EXISTS"
CODE_ABORTED = "ABORTED"
CODE_RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
CODE_LIMIT_EXCEEDED = "LIMIT_EXCEEDED"
CODE_NOT_LEADER = "NOT_LEADER"
CODE_UNAVAILABLE = "UNAVAILABLE"
CODE_INDETERMINATE = "INDETERMINATE"
CODE_INTERNAL = "INTERNAL"
CODE_CONFIG = "CONFIG"


class CodaError(Exception):
    code = CODE_INTERNAL
    retryable = False
    definite = True

    def __init__(self, message: str, **details):
        super().__init__(message)
        self.message = message
        self.details = details

    def to_wire(self) -> dict:
        return {"code": self.code, "message": self.message, "details": self.details}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class InvalidArgument(CodaError):
    code = CODE_INVALID_ARGUMENT


class PayloadError(InvalidArgument):
    pass


class ConfigError(CodaError):
    code = CODE_CONFIG


class NotFound(CodaError):
    code = CODE_NOT_FOUND


class AlreadyExists(CodaError):
    code = CODE_ALREADY_EXISTS


class Aborted(CodaError):
    """A conditional write (if_version) found another version: nothing changed."""
    code = CODE_ABORTED


class ResourceExhausted(CodaError):
    code = CODE_RESOURCE_EXHAUSTED
    retryable = True


class LimitExceeded(ResourceExhausted):
    """A workflow run reached one of its own limits (history, state keys, signals): the
    same request fails the same way until the run changes, so it is not retried."""
    code = CODE_LIMIT_EXCEEDED
    retryable = False


class NotLeader(CodaError):
    code = CODE_NOT_LEADER
    retryable = True

    @property
    def leader_hint(self) -> str | None:
        return self.details.get("leader_hint")


class Unavailable(CodaError):
    code = CODE_UNAVAILABLE
    retryable = True


class Indeterminate(CodaError):
    code = CODE_INDETERMINATE
    retryable = True
    definite = False


class Internal(CodaError):
    code = CODE_INTERNAL
    definite = False


_BY_CODE = {
    cls.code: cls
    for cls in (InvalidArgument, NotFound, AlreadyExists, Aborted, ResourceExhausted, LimitExceeded, NotLeader,
                Unavailable, Indeterminate, Internal, ConfigError)
}


def from_wire(wire: dict) -> CodaError:
    """Rebuild an error sent by `CodaError.to_wire` (unknown codes become Internal)."""
    cls = _BY_CODE.get(wire.get("code"), Internal)
    return cls(str(wire.get("message", "")), **dict(wire.get("details") or {}))


# --- outcomes of a workflow run, as seen by a client waiting for its result -------------
# Raised on the client (never sent over the wire): the run closed with this status. The
# details carry workflow_id, run_id, status and failure (the server's failure text).
CODE_WORKFLOW = "WORKFLOW_ERROR"
CODE_WORKFLOW_FAILED = "WORKFLOW_FAILED"
CODE_WORKFLOW_CANCELLED = "WORKFLOW_CANCELLED"
CODE_WORKFLOW_TERMINATED = "WORKFLOW_TERMINATED"
CODE_WORKFLOW_TIMED_OUT = "WORKFLOW_TIMED_OUT"
CODE_WORKFLOW_CONTINUED_AS_NEW = "WORKFLOW_CONTINUED_AS_NEW"
CODE_WAIT_TIMEOUT = "WAIT_TIMEOUT"


class WorkflowError(CodaError):
    """A workflow run closed without a result. Definite: waiting again gives the same."""
    code = CODE_WORKFLOW

    @property
    def workflow_id(self) -> str | None:
        return self.details.get("workflow_id")

    @property
    def run_id(self) -> str | None:
        return self.details.get("run_id")

    @property
    def failure(self) -> str | None:
        return self.details.get("failure")


class WorkflowFailedError(WorkflowError):
    code = CODE_WORKFLOW_FAILED


class WorkflowCancelledError(WorkflowError):
    code = CODE_WORKFLOW_CANCELLED


class WorkflowTerminatedError(WorkflowError):
    code = CODE_WORKFLOW_TERMINATED


class WorkflowTimedOutError(WorkflowError):
    code = CODE_WORKFLOW_TIMED_OUT


class WorkflowContinuedAsNewError(WorkflowError):
    code = CODE_WORKFLOW_CONTINUED_AS_NEW


class WaitTimeout(CodaError):
    """The caller's wait for a run to close ran out; the run goes on. Waiting again may
    succeed, but it is the caller's decision (retryable=False: nothing retries it)."""
    code = CODE_WAIT_TIMEOUT
