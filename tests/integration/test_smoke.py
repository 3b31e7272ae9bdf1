"""A real three-node cluster answers the basic API through any node."""

import pytest

from coda.errors import AlreadyExists, InvalidArgument, NotFound

pytestmark = pytest.mark.cluster


def test_start_describe_list_through_every_node(make_cluster):
    cluster = make_cluster(shards=3)
    cluster.start()
    cluster.wait_leaders()
    started = {}
    for i in range(30):
        with cluster.client(node=i % 3) as c:
            handle = c.start_workflow("smoke", {"i": i}, workflow_id=f"wf-{i:02d}")
            assert handle.started
            started[handle.workflow_id] = handle.run_id
    for i, (workflow_id, run_id) in enumerate(sorted(started.items())):
        with cluster.client(node=(i + 1) % 3) as c:
            info = c.describe_workflow(workflow_id)
            assert (info["run_id"], info["status"], info["queued_on"]) == (run_id, "RUNNING", "wf/smoke")
    with cluster.client() as c:
        seen, token = [], b""
        while True:
            page, token = c.list_workflows(page_size=7, page_token=token)
            seen += [w["workflow_id"] for w in page]
            if not token:
                break
        assert seen == sorted(started)
        with pytest.raises(AlreadyExists):
            c.start_workflow("smoke", {}, workflow_id="wf-00")
        with pytest.raises(NotFound):
            c.describe_workflow("no-such-workflow")
        with pytest.raises(InvalidArgument):
            c.start_workflow("smoke", {}, workflow_id="bad\x00id")
    shards_used = {cluster.status()["shards"][s]["shard"] for s in range(3)}
    assert shards_used == {0, 1, 2}
