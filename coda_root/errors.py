"""Every error Coda raises, in one tree.

    CodaError                      root; .retryable, .definite, .code
    ├── InvalidArgument            the request itself is wrong (bad id, bad payload, bad flag)
    │   └── PayloadError           a payload that can't be msgpack-encoded or decoded
    ├── ConfigError                a server configuration that fails validation
    ├── NotFound                   unknown workflow id, run id, shard ...
    ├── AlreadyExists              e.g. a workflow id whose reuse policy forbids a new run
    ├── ResourceExhausted          a limit was hit (payload bytes, proposals in flight, ...)
    ├── NotLeader                  this replica does not lead the shard; .leader_hint
    ├── Unavailable                no leader, no quorum, node unreachable
    ├── Indeterminate              the operation may or may not have happened
    │                              (timeout, leader change while in flight, lost connection)
    └── Internal                   a bug: reported, never swallowed

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
CODE_RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
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


class ResourceExhausted(CodaError):
    code = CODE_RESOURCE_EXHAUSTED
    retryable = True


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
    for cls in (InvalidArgument, NotFound, AlreadyExists, ResourceExhausted, NotLeader,
                Unavailable, Indeterminate, Internal, ConfigError)
}


def from_wire(wire: dict) -> CodaError:
    """Rebuild an error sent by `CodaError.to_wire` (unknown codes become Internal)."""
    cls = _BY_CODE.get(wire.get("code"), Internal)
    return cls(str(wire.get("message", "")), **dict(wire.get("details") or {}))
