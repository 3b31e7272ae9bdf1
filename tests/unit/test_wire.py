"""How gRPC failures become CodaErrors: definite vs indeterminate matters to retries and
to Jepsen histories (fail vs info)."""

import grpc
import pytest

from coda import errors
from coda.flow import wire


class FakeRpcError(grpc.RpcError):
    def __init__(self, code, details="", trailers=()):
        self._code, self._details, self._trailers = code, details, trailers

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._trailers


def test_server_errors_round_trip_through_trailers():
    sent = errors.NotLeader("not the leader of shard 3", shard=3, leader_hint="10.0.0.2:7100")
    got = wire.error_from_rpc(FakeRpcError(wire.status_for(sent), sent.message,
                                           wire.error_trailers(sent)))
    assert isinstance(got, errors.NotLeader)
    assert (got.leader_hint, got.details["shard"], got.retryable, got.definite) == \
        ("10.0.0.2:7100", 3, True, True)


@pytest.mark.parametrize("code, details, cls, definite", [
    (grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; last error: "
     "Connection refused", errors.Unavailable, True),
    (grpc.StatusCode.UNAVAILABLE, "Socket closed", errors.Indeterminate, False),
    (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", errors.Indeterminate, False),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "too many", errors.ResourceExhausted, True),
    (grpc.StatusCode.INTERNAL, "boom", errors.Internal, False),
])
def test_transport_failures_are_classified(code, details, cls, definite):
    got = wire.error_from_rpc(FakeRpcError(code, details), target="127.0.0.1:1")
    assert type(got) is cls and got.definite is definite
    assert "127.0.0.1:1" in got.message
