"""Names shared by the server, the SDK and the CLI: workflow statuses and reuse policies."""

RUNNING = "RUNNING"
COMPLETED = "COMPLETED"
FAILED = "FAILED"
CANCELLED = "CANCELLED"
TERMINATED = "TERMINATED"
TIMED_OUT = "TIMED_OUT"
CONTINUED_AS_NEW = "CONTINUED_AS_NEW"

WORKFLOW_STATUSES = (RUNNING, COMPLETED, FAILED, CANCELLED, TERMINATED, TIMED_OUT,
                     CONTINUED_AS_NEW)
CLOSED_STATUSES = tuple(s for s in WORKFLOW_STATUSES if s != RUNNING)
# Closed without success: ALLOW_DUPLICATE_FAILED_ONLY lets these be started again.
UNSUCCESSFUL_STATUSES = (FAILED, CANCELLED, TERMINATED, TIMED_OUT)

# Workflow-id reuse policies (Temporal's names and meaning). Applied when a start names a
# workflow id that already has a run.
ALLOW_DUPLICATE = "ALLOW_DUPLICATE"                      # new run if the last one closed
ALLOW_DUPLICATE_FAILED_ONLY = "ALLOW_DUPLICATE_FAILED_ONLY"  # ... and did not complete
REJECT_DUPLICATE = "REJECT_DUPLICATE"                    # never a second run
TERMINATE_IF_RUNNING = "TERMINATE_IF_RUNNING"            # end a running one, start anew
REUSE_POLICIES = (ALLOW_DUPLICATE, ALLOW_DUPLICATE_FAILED_ONLY, REJECT_DUPLICATE,
                  TERMINATE_IF_RUNNING)
