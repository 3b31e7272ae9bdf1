"""The public surface of `import coda` is pinned (Trio's test_exports): adding or removing
a name is a decision, made here on purpose."""

import coda
import coda.context

PUBLIC = {"ChildWorkflowFailedError", "Client", "CodaError", "NonDeterminismError", "RetryPolicy", "ScheduleHandle", "SyncClient",
          "TaskFailedError", "WaitTimeout", "WorkflowCancelledError", "WorkflowError",
          "WorkflowFailedError", "WorkflowHandle", "WorkflowTerminatedError",
          "WorkflowTimedOutError", "context", "errors", "task", "testing", "workflow"}
CONTEXT = {"spawn_task", "spawn_workflow", "sleep", "sleep_until", "wait_for", "await_all", "gather", "now", "random", "uuid4",
           "workflow_id", "heartbeat", "idempotency_key", "task_info",
           # issue 5: talking to running workflows
           "set_state", "get_state", "get_broadcast", "wait_signal", "signal_workflow",
           # issue 9: long-lived workflows
           "continue_as_new", "patched", "deprecate_patch"}


def test_coda_exports_exactly_the_public_names():
    assert set(coda.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(coda, name) is not None


def test_coda_context_exports_exactly_the_workflow_api():
    assert set(coda.context.__all__) == CONTEXT
    for name in CONTEXT:
        assert callable(getattr(coda.context, name))


def test_task_context_calls_outside_a_task_say_where_they_belong():
    import pytest
    for call in (coda.context.task_info, coda.context.idempotency_key, coda.context.heartbeat):
        with pytest.raises(coda.errors.InvalidArgument, match="inside a running @coda.task"):
            call()
