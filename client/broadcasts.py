"""`client.broadcast`: broadcast variables from outside workflows (coda.Client's side).

    version = await client.broadcast.set("pricing", {"eur": 1.08})
    value = await client.broadcast.get("pricing")           # linearizable
    version, value = await client.broadcast.get_versioned("pricing")
    await client.broadcast.set("pricing", new, if_version=version)   # Aborted if it moved
    await client.broadcast.delete("pricing")

Each name lives on the shard its name hashes to. `get` reads after a log barrier on that
shard's leader (linearizable); workflows and tasks read supervisor caches instead
(coda.context.get_broadcast, docs/state-and-signals.md).
"""

from __future__ import annotations

import uuid

from coda.api import flow_pb2 as pb
from coda.client.runtime_state import MISSING
from coda.errors import InvalidArgument, NotFound
from coda.flow import limits, validate
from coda.storage import codec


def broadcast_name(name) -> str:
    return validate.identifier(name, "broadcast name", limits.broadcast_name_bytes_max)


def _if_version(if_version) -> dict:
    if if_version is None:
        return {}
    if not isinstance(if_version, int) or isinstance(if_version, bool) or if_version < 0:
        raise InvalidArgument(f"if_version must be an integer >= 0, got {if_version!r}",
                              field="if_version")
    return {"if_version": if_version}


class Broadcasts:
    def __init__(self, client):
        self._client = client

    async def set(self, name: str, value, *, if_version: int | None = None,
                  request_id: str | None = None) -> int:
        """Store a new version; returns its number. `if_version`: only if the current
        version is that one (0: not set yet), else Aborted and nothing changes."""
        name = broadcast_name(name)
        payload = codec.encode_payload(value, what=f"value of broadcast {name!r}",
                                       limit_bytes=self._client.payload_bytes_max)
        return await self._set(pb.SetBroadcastRequest(
            name=name, value=payload, request_id=request_id or uuid.uuid4().hex,
            **_if_version(if_version)))

    async def delete(self, name: str, *, if_version: int | None = None) -> int:
        """Remove the value (readers get NotFound); the version still moves on."""
        return await self._set(pb.SetBroadcastRequest(
            name=broadcast_name(name), delete=True, request_id=uuid.uuid4().hex,
            **_if_version(if_version)))

    async def _set(self, request) -> int:
        answer = await self._client._call("SetBroadcast", request, retry_indeterminate=True,
                                          workflow_id=request.name)
        return answer.version

    async def get_versioned(self, name: str) -> tuple[int, object]:
        """(version, value); NotFound if it is not set (never, or deleted)."""
        name = broadcast_name(name)
        answer = await self._client._call("GetBroadcast", pb.GetBroadcastRequest(name=name),
                                          retry_indeterminate=True, workflow_id=name)
        if not answer.found:
            raise NotFound(f"broadcast variable {name!r} is not set (version "
                           f"{answer.version})", name=name, version=answer.version)
        return answer.version, codec.decode_payload(answer.value, what=f"broadcast {name!r}")

    async def get(self, name: str, default=MISSING):
        try:
            return (await self.get_versioned(name))[1]
        except NotFound:
            if default is MISSING:
                raise
            return default


class SyncBroadcasts:
    def __init__(self, sync_client, broadcasts: Broadcasts):
        self._run = sync_client._run
        self._async = broadcasts

    def set(self, *args, **kwargs) -> int:
        return self._run(self._async.set(*args, **kwargs))

    def delete(self, *args, **kwargs) -> int:
        return self._run(self._async.delete(*args, **kwargs))

    def get_versioned(self, name: str) -> tuple[int, object]:
        return self._run(self._async.get_versioned(name))

    def get(self, name: str, default=MISSING):
        return self._run(self._async.get(name, default))
