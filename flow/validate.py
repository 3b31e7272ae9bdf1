"""Validation of identifiers and names, shared by the API edge and the state machine.

Identifiers end up inside LMDB keys joined by NUL (see storage.keys), so NUL is refused;
lengths are bounded by flow.limits. Errors name the field and the limit.
"""

from __future__ import annotations

from coda.errors import InvalidArgument
from coda.flow import limits


def identifier(value, field: str, max_bytes: int) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{field} must be a string, got {type(value).__name__}", field=field)
    if not value:
        raise InvalidArgument(f"{field} must not be empty", field=field)
    if "\x00" in value:
        raise InvalidArgument(f"{field} must not contain NUL characters", field=field)
    size = len(value.encode())
    if size > max_bytes:
        raise InvalidArgument(f"{field} is {size} bytes, over the limit of {max_bytes} bytes",
                              field=field, size_bytes=size, limit_bytes=max_bytes)
    return value


def workflow_id(value) -> str:
    return identifier(value, "workflow_id", limits.workflow_id_bytes_max)


def type_name(value, field: str = "workflow_type") -> str:
    return identifier(value, field, limits.type_name_bytes_max)


def request_id(value) -> str:
    return identifier(value, "request_id", limits.request_id_bytes_max)


def run_id(value) -> str:
    return identifier(value, "run_id", limits.run_id_bytes_max)
