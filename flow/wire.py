"""CodaError <-> gRPC status, the same on both sides of the wire.

A failed call carries the gRPC status that fits the error class and trailing metadata
`coda-error-bin` = msgpack of CodaError.to_wire(), from which clients rebuild the exact
error (code, message, details such as leader_hint, retryable, definite).
"""

from __future__ import annotations

import grpc

from coda import errors
from coda.storage import codec

ERROR_METADATA_KEY = "coda-error-bin"
# Set on a request a node forwards to the shard leader: the receiver must not forward again.
FORWARDED_METADATA_KEY = "coda-forwarded"

STATUS_BY_CODE = {
    errors.CODE_INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    errors.CODE_CONFIG: grpc.StatusCode.INVALID_ARGUMENT,
    errors.CODE_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    errors.CODE_ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    errors.CODE_ABORTED: grpc.StatusCode.ABORTED,
    errors.CODE_RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.CODE_LIMIT_EXCEEDED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.CODE_NOT_LEADER: grpc.StatusCode.FAILED_PRECONDITION,
    errors.CODE_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    errors.CODE_INDETERMINATE: grpc.StatusCode.UNKNOWN,
    errors.CODE_INTERNAL: grpc.StatusCode.INTERNAL,
}


def error_trailers(error: errors.CodaError) -> tuple:
    return ((ERROR_METADATA_KEY, codec.pack(error.to_wire())),)


def status_for(error: errors.CodaError) -> grpc.StatusCode:
    return STATUS_BY_CODE.get(error.code, grpc.StatusCode.INTERNAL)


def never_sent(exc: grpc.RpcError) -> bool:
    """A call that failed because no connection could be made carried no request: it
    surely did not happen (definite), and is safe to send elsewhere."""
    return (exc.code() == grpc.StatusCode.UNAVAILABLE
            and "failed to connect" in (exc.details() or "").lower())


def error_from_rpc(exc: grpc.RpcError, *, target: str = "") -> errors.CodaError:
    """Rebuild the CodaError a server sent, or classify a transport failure."""
    trailers = exc.trailing_metadata() or ()
    for key, value in trailers:
        if key == ERROR_METADATA_KEY:
            try:
                return errors.from_wire(codec.unpack(value))
            except Exception:
                break
    code = exc.code()
    detail = exc.details() or code.name
    where = f" ({target})" if target else ""
    if code == grpc.StatusCode.UNAVAILABLE:
        if never_sent(exc):
            return errors.Unavailable(f"can't connect{where}: {detail}", target=target)
        # The request may have reached the server before the connection broke.
        return errors.Indeterminate(f"connection failed{where}: {detail}", target=target)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return errors.Indeterminate(f"deadline exceeded{where}: {detail}", target=target)
    if code == grpc.StatusCode.CANCELLED:
        # Without our trailers: cancelled by the transport, not by a Coda server. grpc
        # does this to a share of a large burst of concurrent calls on one channel
        # (~9% of 2,000 here, against a trivial server too): an unknown outcome.
        return errors.Indeterminate(f"cancelled by the transport{where}: {detail}",
                                    target=target)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return errors.ResourceExhausted(f"{detail}{where}", target=target)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return errors.InvalidArgument(f"{detail}{where}", target=target)
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return errors.InvalidArgument(f"not implemented{where}: {detail}", target=target)
    return errors.Internal(f"{code.name}{where}: {detail}", target=target)
