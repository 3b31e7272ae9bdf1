from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WorkflowIdReusePolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ALLOW_DUPLICATE: _ClassVar[WorkflowIdReusePolicy]
    ALLOW_DUPLICATE_FAILED_ONLY: _ClassVar[WorkflowIdReusePolicy]
    REJECT_DUPLICATE: _ClassVar[WorkflowIdReusePolicy]
    TERMINATE_IF_RUNNING: _ClassVar[WorkflowIdReusePolicy]
ALLOW_DUPLICATE: WorkflowIdReusePolicy
ALLOW_DUPLICATE_FAILED_ONLY: WorkflowIdReusePolicy
REJECT_DUPLICATE: WorkflowIdReusePolicy
TERMINATE_IF_RUNNING: WorkflowIdReusePolicy

class SignalWorkflowRequest(_message.Message):
    __slots__ = ("workflow_id", "run_id", "name", "payload", "request_id")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    run_id: str
    name: str
    payload: bytes
    request_id: str
    def __init__(self, workflow_id: _Optional[str] = ..., run_id: _Optional[str] = ..., name: _Optional[str] = ..., payload: _Optional[bytes] = ..., request_id: _Optional[str] = ...) -> None: ...

class SignalWorkflowResponse(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class GetWorkflowStateRequest(_message.Message):
    __slots__ = ("workflow_id", "run_id", "key")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    run_id: str
    key: str
    def __init__(self, workflow_id: _Optional[str] = ..., run_id: _Optional[str] = ..., key: _Optional[str] = ...) -> None: ...

class GetWorkflowStateResponse(_message.Message):
    __slots__ = ("run_id", "value")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    value: bytes
    def __init__(self, run_id: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...

class SetBroadcastRequest(_message.Message):
    __slots__ = ("name", "value", "delete", "if_version", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    IF_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: bytes
    delete: bool
    if_version: int
    request_id: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[bytes] = ..., delete: _Optional[bool] = ..., if_version: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class SetBroadcastResponse(_message.Message):
    __slots__ = ("version", "shard")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    version: int
    shard: int
    def __init__(self, version: _Optional[int] = ..., shard: _Optional[int] = ...) -> None: ...

class GetBroadcastRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class BroadcastValue(_message.Message):
    __slots__ = ("name", "version", "found", "value", "updated_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    UPDATED_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    found: bool
    value: bytes
    updated_ms: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., found: _Optional[bool] = ..., value: _Optional[bytes] = ..., updated_ms: _Optional[int] = ...) -> None: ...

class BroadcastKnown(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class WatchBroadcastsRequest(_message.Message):
    __slots__ = ("shard", "known")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    shard: int
    known: _containers.RepeatedCompositeFieldContainer[BroadcastKnown]
    def __init__(self, shard: _Optional[int] = ..., known: _Optional[_Iterable[_Union[BroadcastKnown, _Mapping]]] = ...) -> None: ...

class ScheduleSpec(_message.Message):
    __slots__ = ("cron", "interval_ms", "offset_ms", "timezone", "jitter_ms", "start_time_ms", "end_time_ms")
    CRON_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    OFFSET_MS_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    JITTER_MS_FIELD_NUMBER: _ClassVar[int]
    START_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    END_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    cron: str
    interval_ms: int
    offset_ms: int
    timezone: str
    jitter_ms: int
    start_time_ms: int
    end_time_ms: int
    def __init__(self, cron: _Optional[str] = ..., interval_ms: _Optional[int] = ..., offset_ms: _Optional[int] = ..., timezone: _Optional[str] = ..., jitter_ms: _Optional[int] = ..., start_time_ms: _Optional[int] = ..., end_time_ms: _Optional[int] = ...) -> None: ...

class ScheduleAction(_message.Message):
    __slots__ = ("workflow_type", "input", "execution_timeout_ms")
    WORKFLOW_TYPE_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    workflow_type: str
    input: bytes
    execution_timeout_ms: int
    def __init__(self, workflow_type: _Optional[str] = ..., input: _Optional[bytes] = ..., execution_timeout_ms: _Optional[int] = ...) -> None: ...

class SchedulePolicy(_message.Message):
    __slots__ = ("overlap", "catchup_window_ms", "pause_on_failure")
    OVERLAP_FIELD_NUMBER: _ClassVar[int]
    CATCHUP_WINDOW_MS_FIELD_NUMBER: _ClassVar[int]
    PAUSE_ON_FAILURE_FIELD_NUMBER: _ClassVar[int]
    overlap: str
    catchup_window_ms: int
    pause_on_failure: bool
    def __init__(self, overlap: _Optional[str] = ..., catchup_window_ms: _Optional[int] = ..., pause_on_failure: _Optional[bool] = ...) -> None: ...

class CreateScheduleRequest(_message.Message):
    __slots__ = ("schedule_id", "spec", "action", "policy", "paused", "note", "request_id", "allow_undeclared_type")
    SCHEDULE_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ALLOW_UNDECLARED_TYPE_FIELD_NUMBER: _ClassVar[int]
    schedule_id: str
    spec: ScheduleSpec
    action: ScheduleAction
    policy: SchedulePolicy
    paused: bool
    note: str
    request_id: str
    allow_undeclared_type: bool
    def __init__(self, schedule_id: _Optional[str] = ..., spec: _Optional[_Union[ScheduleSpec, _Mapping]] = ..., action: _Optional[_Union[ScheduleAction, _Mapping]] = ..., policy: _Optional[_Union[SchedulePolicy, _Mapping]] = ..., paused: _Optional[bool] = ..., note: _Optional[str] = ..., request_id: _Optional[str] = ..., allow_undeclared_type: _Optional[bool] = ...) -> None: ...

class UpdateScheduleRequest(_message.Message):
    __slots__ = ("schedule_id", "spec", "action", "policy", "request_id", "allow_undeclared_type")
    SCHEDULE_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ALLOW_UNDECLARED_TYPE_FIELD_NUMBER: _ClassVar[int]
    schedule_id: str
    spec: ScheduleSpec
    action: ScheduleAction
    policy: SchedulePolicy
    request_id: str
    allow_undeclared_type: bool
    def __init__(self, schedule_id: _Optional[str] = ..., spec: _Optional[_Union[ScheduleSpec, _Mapping]] = ..., action: _Optional[_Union[ScheduleAction, _Mapping]] = ..., policy: _Optional[_Union[SchedulePolicy, _Mapping]] = ..., request_id: _Optional[str] = ..., allow_undeclared_type: _Optional[bool] = ...) -> None: ...

class PatchScheduleRequest(_message.Message):
    __slots__ = ("schedule_id", "op", "note", "overlap", "start_time_ms", "end_time_ms", "request_id")
    SCHEDULE_ID_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_FIELD_NUMBER: _ClassVar[int]
    START_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    END_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    schedule_id: str
    op: str
    note: str
    overlap: str
    start_time_ms: int
    end_time_ms: int
    request_id: str
    def __init__(self, schedule_id: _Optional[str] = ..., op: _Optional[str] = ..., note: _Optional[str] = ..., overlap: _Optional[str] = ..., start_time_ms: _Optional[int] = ..., end_time_ms: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class DeleteScheduleRequest(_message.Message):
    __slots__ = ("schedule_id", "request_id")
    SCHEDULE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    schedule_id: str
    request_id: str
    def __init__(self, schedule_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class ScheduleResponse(_message.Message):
    __slots__ = ("schedule_id", "shard")
    SCHEDULE_ID_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    schedule_id: str
    shard: int
    def __init__(self, schedule_id: _Optional[str] = ..., shard: _Optional[int] = ...) -> None: ...

class DescribeScheduleRequest(_message.Message):
    __slots__ = ("schedule_id",)
    SCHEDULE_ID_FIELD_NUMBER: _ClassVar[int]
    schedule_id: str
    def __init__(self, schedule_id: _Optional[str] = ...) -> None: ...

class ScheduleRun(_message.Message):
    __slots__ = ("workflow_id", "nominal_time_ms", "closing")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    NOMINAL_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    CLOSING_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    nominal_time_ms: int
    closing: str
    def __init__(self, workflow_id: _Optional[str] = ..., nominal_time_ms: _Optional[int] = ..., closing: _Optional[str] = ...) -> None: ...

class ScheduleActionRecord(_message.Message):
    __slots__ = ("action", "nominal_time_ms", "at_ms", "source", "workflow_id", "status", "detail")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    NOMINAL_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    action: str
    nominal_time_ms: int
    at_ms: int
    source: str
    workflow_id: str
    status: str
    detail: str
    def __init__(self, action: _Optional[str] = ..., nominal_time_ms: _Optional[int] = ..., at_ms: _Optional[int] = ..., source: _Optional[str] = ..., workflow_id: _Optional[str] = ..., status: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class ScheduleInfo(_message.Message):
    __slots__ = ("schedule_id", "spec", "action", "policy", "paused", "note", "next_action_times_ms", "running", "buffered_times_ms", "recent", "started", "skipped", "missed", "created_ms", "updated_ms", "shard")
    SCHEDULE_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    NEXT_ACTION_TIMES_MS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    BUFFERED_TIMES_MS_FIELD_NUMBER: _ClassVar[int]
    RECENT_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    MISSED_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_MS_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    schedule_id: str
    spec: ScheduleSpec
    action: ScheduleAction
    policy: SchedulePolicy
    paused: bool
    note: str
    next_action_times_ms: _containers.RepeatedScalarFieldContainer[int]
    running: _containers.RepeatedCompositeFieldContainer[ScheduleRun]
    buffered_times_ms: _containers.RepeatedScalarFieldContainer[int]
    recent: _containers.RepeatedCompositeFieldContainer[ScheduleActionRecord]
    started: int
    skipped: int
    missed: int
    created_ms: int
    updated_ms: int
    shard: int
    def __init__(self, schedule_id: _Optional[str] = ..., spec: _Optional[_Union[ScheduleSpec, _Mapping]] = ..., action: _Optional[_Union[ScheduleAction, _Mapping]] = ..., policy: _Optional[_Union[SchedulePolicy, _Mapping]] = ..., paused: _Optional[bool] = ..., note: _Optional[str] = ..., next_action_times_ms: _Optional[_Iterable[int]] = ..., running: _Optional[_Iterable[_Union[ScheduleRun, _Mapping]]] = ..., buffered_times_ms: _Optional[_Iterable[int]] = ..., recent: _Optional[_Iterable[_Union[ScheduleActionRecord, _Mapping]]] = ..., started: _Optional[int] = ..., skipped: _Optional[int] = ..., missed: _Optional[int] = ..., created_ms: _Optional[int] = ..., updated_ms: _Optional[int] = ..., shard: _Optional[int] = ...) -> None: ...

class DescribeScheduleResponse(_message.Message):
    __slots__ = ("schedule",)
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    schedule: ScheduleInfo
    def __init__(self, schedule: _Optional[_Union[ScheduleInfo, _Mapping]] = ...) -> None: ...

class ListSchedulesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: bytes
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[bytes] = ...) -> None: ...

class ListSchedulesResponse(_message.Message):
    __slots__ = ("schedules", "next_page_token")
    SCHEDULES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    schedules: _containers.RepeatedCompositeFieldContainer[ScheduleInfo]
    next_page_token: bytes
    def __init__(self, schedules: _Optional[_Iterable[_Union[ScheduleInfo, _Mapping]]] = ..., next_page_token: _Optional[bytes] = ...) -> None: ...

class StartWorkflowRequest(_message.Message):
    __slots__ = ("workflow_id", "workflow_type", "input", "reuse_policy", "request_id", "execution_timeout_ms", "allow_undeclared_type", "wait_ms")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_TYPE_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    REUSE_POLICY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_UNDECLARED_TYPE_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    workflow_type: str
    input: bytes
    reuse_policy: WorkflowIdReusePolicy
    request_id: str
    execution_timeout_ms: int
    allow_undeclared_type: bool
    wait_ms: int
    def __init__(self, workflow_id: _Optional[str] = ..., workflow_type: _Optional[str] = ..., input: _Optional[bytes] = ..., reuse_policy: _Optional[_Union[WorkflowIdReusePolicy, str]] = ..., request_id: _Optional[str] = ..., execution_timeout_ms: _Optional[int] = ..., allow_undeclared_type: _Optional[bool] = ..., wait_ms: _Optional[int] = ...) -> None: ...

class StartWorkflowResponse(_message.Message):
    __slots__ = ("run_id", "started", "shard", "closed")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    started: bool
    shard: int
    closed: WorkflowInfo
    def __init__(self, run_id: _Optional[str] = ..., started: _Optional[bool] = ..., shard: _Optional[int] = ..., closed: _Optional[_Union[WorkflowInfo, _Mapping]] = ...) -> None: ...

class DescribeWorkflowRequest(_message.Message):
    __slots__ = ("workflow_id", "run_id")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    run_id: str
    def __init__(self, workflow_id: _Optional[str] = ..., run_id: _Optional[str] = ...) -> None: ...

class WorkflowInfo(_message.Message):
    __slots__ = ("workflow_id", "run_id", "workflow_type", "status", "start_time_ms", "close_time_ms", "attempt", "history_length", "shard", "result", "failure", "queued_on", "workflow_task_failure", "open_tasks", "cancel_requested", "continued_as_run_id", "continued_from_run_id", "history_bytes", "continue_as_new_suggested", "build_id")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    START_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    CLOSE_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    HISTORY_LENGTH_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    QUEUED_ON_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_TASK_FAILURE_FIELD_NUMBER: _ClassVar[int]
    OPEN_TASKS_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    CONTINUED_AS_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CONTINUED_FROM_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    HISTORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    CONTINUE_AS_NEW_SUGGESTED_FIELD_NUMBER: _ClassVar[int]
    BUILD_ID_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    run_id: str
    workflow_type: str
    status: str
    start_time_ms: int
    close_time_ms: int
    attempt: int
    history_length: int
    shard: int
    result: bytes
    failure: str
    queued_on: str
    workflow_task_failure: str
    open_tasks: int
    cancel_requested: bool
    continued_as_run_id: str
    continued_from_run_id: str
    history_bytes: int
    continue_as_new_suggested: bool
    build_id: str
    def __init__(self, workflow_id: _Optional[str] = ..., run_id: _Optional[str] = ..., workflow_type: _Optional[str] = ..., status: _Optional[str] = ..., start_time_ms: _Optional[int] = ..., close_time_ms: _Optional[int] = ..., attempt: _Optional[int] = ..., history_length: _Optional[int] = ..., shard: _Optional[int] = ..., result: _Optional[bytes] = ..., failure: _Optional[str] = ..., queued_on: _Optional[str] = ..., workflow_task_failure: _Optional[str] = ..., open_tasks: _Optional[int] = ..., cancel_requested: _Optional[bool] = ..., continued_as_run_id: _Optional[str] = ..., continued_from_run_id: _Optional[str] = ..., history_bytes: _Optional[int] = ..., continue_as_new_suggested: _Optional[bool] = ..., build_id: _Optional[str] = ...) -> None: ...

class PendingTask(_message.Message):
    __slots__ = ("key", "task_type", "state", "attempt", "scheduled_time_ms", "supervisor_id", "last_failure", "retry_time_ms")
    KEY_FIELD_NUMBER: _ClassVar[int]
    TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    SCHEDULED_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    SUPERVISOR_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_FAILURE_FIELD_NUMBER: _ClassVar[int]
    RETRY_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    key: str
    task_type: str
    state: str
    attempt: int
    scheduled_time_ms: int
    supervisor_id: str
    last_failure: str
    retry_time_ms: int
    def __init__(self, key: _Optional[str] = ..., task_type: _Optional[str] = ..., state: _Optional[str] = ..., attempt: _Optional[int] = ..., scheduled_time_ms: _Optional[int] = ..., supervisor_id: _Optional[str] = ..., last_failure: _Optional[str] = ..., retry_time_ms: _Optional[int] = ...) -> None: ...

class PendingTimer(_message.Message):
    __slots__ = ("key", "fire_time_ms")
    KEY_FIELD_NUMBER: _ClassVar[int]
    FIRE_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    key: str
    fire_time_ms: int
    def __init__(self, key: _Optional[str] = ..., fire_time_ms: _Optional[int] = ...) -> None: ...

class DescribeWorkflowResponse(_message.Message):
    __slots__ = ("workflow", "pending_tasks", "pending_timers", "pending_truncated")
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    PENDING_TASKS_FIELD_NUMBER: _ClassVar[int]
    PENDING_TIMERS_FIELD_NUMBER: _ClassVar[int]
    PENDING_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    workflow: WorkflowInfo
    pending_tasks: _containers.RepeatedCompositeFieldContainer[PendingTask]
    pending_timers: _containers.RepeatedCompositeFieldContainer[PendingTimer]
    pending_truncated: bool
    def __init__(self, workflow: _Optional[_Union[WorkflowInfo, _Mapping]] = ..., pending_tasks: _Optional[_Iterable[_Union[PendingTask, _Mapping]]] = ..., pending_timers: _Optional[_Iterable[_Union[PendingTimer, _Mapping]]] = ..., pending_truncated: _Optional[bool] = ...) -> None: ...

class ListWorkflowsRequest(_message.Message):
    __slots__ = ("statuses", "workflow_types", "page_size", "page_token", "build_ids", "workflow_id_prefix", "start_time_from_ms", "start_time_to_ms", "close_time_from_ms", "close_time_to_ms", "order_by")
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_TYPES_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    BUILD_IDS_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_ID_PREFIX_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FROM_MS_FIELD_NUMBER: _ClassVar[int]
    START_TIME_TO_MS_FIELD_NUMBER: _ClassVar[int]
    CLOSE_TIME_FROM_MS_FIELD_NUMBER: _ClassVar[int]
    CLOSE_TIME_TO_MS_FIELD_NUMBER: _ClassVar[int]
    ORDER_BY_FIELD_NUMBER: _ClassVar[int]
    statuses: _containers.RepeatedScalarFieldContainer[str]
    workflow_types: _containers.RepeatedScalarFieldContainer[str]
    page_size: int
    page_token: bytes
    build_ids: _containers.RepeatedScalarFieldContainer[str]
    workflow_id_prefix: str
    start_time_from_ms: int
    start_time_to_ms: int
    close_time_from_ms: int
    close_time_to_ms: int
    order_by: str
    def __init__(self, statuses: _Optional[_Iterable[str]] = ..., workflow_types: _Optional[_Iterable[str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[bytes] = ..., build_ids: _Optional[_Iterable[str]] = ..., workflow_id_prefix: _Optional[str] = ..., start_time_from_ms: _Optional[int] = ..., start_time_to_ms: _Optional[int] = ..., close_time_from_ms: _Optional[int] = ..., close_time_to_ms: _Optional[int] = ..., order_by: _Optional[str] = ...) -> None: ...

class ListWorkflowsResponse(_message.Message):
    __slots__ = ("workflows", "next_page_token")
    WORKFLOWS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    workflows: _containers.RepeatedCompositeFieldContainer[WorkflowInfo]
    next_page_token: bytes
    def __init__(self, workflows: _Optional[_Iterable[_Union[WorkflowInfo, _Mapping]]] = ..., next_page_token: _Optional[bytes] = ...) -> None: ...

class ListSupervisorsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SupervisorInfo(_message.Message):
    __slots__ = ("supervisor_id", "build_id", "workflow_types", "task_types", "registered_time_ms", "shards")
    SUPERVISOR_ID_FIELD_NUMBER: _ClassVar[int]
    BUILD_ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_TYPES_FIELD_NUMBER: _ClassVar[int]
    TASK_TYPES_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    supervisor_id: str
    build_id: str
    workflow_types: _containers.RepeatedScalarFieldContainer[str]
    task_types: _containers.RepeatedScalarFieldContainer[str]
    registered_time_ms: int
    shards: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, supervisor_id: _Optional[str] = ..., build_id: _Optional[str] = ..., workflow_types: _Optional[_Iterable[str]] = ..., task_types: _Optional[_Iterable[str]] = ..., registered_time_ms: _Optional[int] = ..., shards: _Optional[_Iterable[int]] = ...) -> None: ...

class ListSupervisorsResponse(_message.Message):
    __slots__ = ("supervisors", "unanswered_shards")
    SUPERVISORS_FIELD_NUMBER: _ClassVar[int]
    UNANSWERED_SHARDS_FIELD_NUMBER: _ClassVar[int]
    supervisors: _containers.RepeatedCompositeFieldContainer[SupervisorInfo]
    unanswered_shards: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, supervisors: _Optional[_Iterable[_Union[SupervisorInfo, _Mapping]]] = ..., unanswered_shards: _Optional[_Iterable[int]] = ...) -> None: ...

class CancelWorkflowRequest(_message.Message):
    __slots__ = ("workflow_id", "run_id", "reason", "request_id")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    run_id: str
    reason: str
    request_id: str
    def __init__(self, workflow_id: _Optional[str] = ..., run_id: _Optional[str] = ..., reason: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class CancelWorkflowResponse(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class TerminateWorkflowRequest(_message.Message):
    __slots__ = ("workflow_id", "run_id", "reason", "request_id")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    run_id: str
    reason: str
    request_id: str
    def __init__(self, workflow_id: _Optional[str] = ..., run_id: _Optional[str] = ..., reason: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class TerminateWorkflowResponse(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class GetWorkflowHistoryRequest(_message.Message):
    __slots__ = ("workflow_id", "run_id", "after_event_id", "page_size")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    run_id: str
    after_event_id: int
    page_size: int
    def __init__(self, workflow_id: _Optional[str] = ..., run_id: _Optional[str] = ..., after_event_id: _Optional[int] = ..., page_size: _Optional[int] = ...) -> None: ...

class GetWorkflowHistoryResponse(_message.Message):
    __slots__ = ("run_id", "events", "more")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    events: _containers.RepeatedScalarFieldContainer[bytes]
    more: bool
    def __init__(self, run_id: _Optional[str] = ..., events: _Optional[_Iterable[bytes]] = ..., more: _Optional[bool] = ...) -> None: ...

class WaitWorkflowRequest(_message.Message):
    __slots__ = ("workflow_id", "run_id", "wait_ms")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    run_id: str
    wait_ms: int
    def __init__(self, workflow_id: _Optional[str] = ..., run_id: _Optional[str] = ..., wait_ms: _Optional[int] = ...) -> None: ...

class GetClusterStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReplicaStatus(_message.Message):
    __slots__ = ("node_id", "address", "role", "term", "commit_index", "applied_index", "log_length", "leader", "reachable")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    COMMIT_INDEX_FIELD_NUMBER: _ClassVar[int]
    APPLIED_INDEX_FIELD_NUMBER: _ClassVar[int]
    LOG_LENGTH_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    REACHABLE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    role: str
    term: int
    commit_index: int
    applied_index: int
    log_length: int
    leader: str
    reachable: bool
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ..., role: _Optional[str] = ..., term: _Optional[int] = ..., commit_index: _Optional[int] = ..., applied_index: _Optional[int] = ..., log_length: _Optional[int] = ..., leader: _Optional[str] = ..., reachable: _Optional[bool] = ...) -> None: ...

class ShardStatus(_message.Message):
    __slots__ = ("shard", "leader", "replicas", "queue_depths")
    class QueueDepthsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    SHARD_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTHS_FIELD_NUMBER: _ClassVar[int]
    shard: int
    leader: str
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaStatus]
    queue_depths: _containers.ScalarMap[str, int]
    def __init__(self, shard: _Optional[int] = ..., leader: _Optional[str] = ..., replicas: _Optional[_Iterable[_Union[ReplicaStatus, _Mapping]]] = ..., queue_depths: _Optional[_Mapping[str, int]] = ...) -> None: ...

class GetClusterStatusResponse(_message.Message):
    __slots__ = ("shard_count", "shards", "answered_by")
    SHARD_COUNT_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_BY_FIELD_NUMBER: _ClassVar[int]
    shard_count: int
    shards: _containers.RepeatedCompositeFieldContainer[ShardStatus]
    answered_by: str
    def __init__(self, shard_count: _Optional[int] = ..., shards: _Optional[_Iterable[_Union[ShardStatus, _Mapping]]] = ..., answered_by: _Optional[str] = ...) -> None: ...

class GetShardMapRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetShardMapResponse(_message.Message):
    __slots__ = ("shard_count", "leaders")
    SHARD_COUNT_FIELD_NUMBER: _ClassVar[int]
    LEADERS_FIELD_NUMBER: _ClassVar[int]
    shard_count: int
    leaders: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, shard_count: _Optional[int] = ..., leaders: _Optional[_Iterable[str]] = ...) -> None: ...

class ListShardSchedulesRequest(_message.Message):
    __slots__ = ("shard", "after", "page_size")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    shard: int
    after: str
    page_size: int
    def __init__(self, shard: _Optional[int] = ..., after: _Optional[str] = ..., page_size: _Optional[int] = ...) -> None: ...

class ListShardSchedulesResponse(_message.Message):
    __slots__ = ("schedules", "resume_after", "exhausted")
    SCHEDULES_FIELD_NUMBER: _ClassVar[int]
    RESUME_AFTER_FIELD_NUMBER: _ClassVar[int]
    EXHAUSTED_FIELD_NUMBER: _ClassVar[int]
    schedules: _containers.RepeatedCompositeFieldContainer[ScheduleInfo]
    resume_after: str
    exhausted: bool
    def __init__(self, schedules: _Optional[_Iterable[_Union[ScheduleInfo, _Mapping]]] = ..., resume_after: _Optional[str] = ..., exhausted: _Optional[bool] = ...) -> None: ...

class DeliverOutboxRequest(_message.Message):
    __slots__ = ("shard", "entry")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    shard: int
    entry: bytes
    def __init__(self, shard: _Optional[int] = ..., entry: _Optional[bytes] = ...) -> None: ...

class DeliverOutboxResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListShardRequest(_message.Message):
    __slots__ = ("shard", "statuses", "workflow_types", "page_size", "build_ids", "after", "order_by", "workflow_id_prefix", "start_time_from_ms", "start_time_to_ms", "close_time_from_ms", "close_time_to_ms")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_TYPES_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    BUILD_IDS_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    ORDER_BY_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_ID_PREFIX_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FROM_MS_FIELD_NUMBER: _ClassVar[int]
    START_TIME_TO_MS_FIELD_NUMBER: _ClassVar[int]
    CLOSE_TIME_FROM_MS_FIELD_NUMBER: _ClassVar[int]
    CLOSE_TIME_TO_MS_FIELD_NUMBER: _ClassVar[int]
    shard: int
    statuses: _containers.RepeatedScalarFieldContainer[str]
    workflow_types: _containers.RepeatedScalarFieldContainer[str]
    page_size: int
    build_ids: _containers.RepeatedScalarFieldContainer[str]
    after: bytes
    order_by: str
    workflow_id_prefix: str
    start_time_from_ms: int
    start_time_to_ms: int
    close_time_from_ms: int
    close_time_to_ms: int
    def __init__(self, shard: _Optional[int] = ..., statuses: _Optional[_Iterable[str]] = ..., workflow_types: _Optional[_Iterable[str]] = ..., page_size: _Optional[int] = ..., build_ids: _Optional[_Iterable[str]] = ..., after: _Optional[bytes] = ..., order_by: _Optional[str] = ..., workflow_id_prefix: _Optional[str] = ..., start_time_from_ms: _Optional[int] = ..., start_time_to_ms: _Optional[int] = ..., close_time_from_ms: _Optional[int] = ..., close_time_to_ms: _Optional[int] = ...) -> None: ...

class ListShardResponse(_message.Message):
    __slots__ = ("workflows", "exhausted", "resume_after")
    WORKFLOWS_FIELD_NUMBER: _ClassVar[int]
    EXHAUSTED_FIELD_NUMBER: _ClassVar[int]
    RESUME_AFTER_FIELD_NUMBER: _ClassVar[int]
    workflows: _containers.RepeatedCompositeFieldContainer[WorkflowInfo]
    exhausted: bool
    resume_after: bytes
    def __init__(self, workflows: _Optional[_Iterable[_Union[WorkflowInfo, _Mapping]]] = ..., exhausted: _Optional[bool] = ..., resume_after: _Optional[bytes] = ...) -> None: ...

class ListShardSupervisorsRequest(_message.Message):
    __slots__ = ("shard",)
    SHARD_FIELD_NUMBER: _ClassVar[int]
    shard: int
    def __init__(self, shard: _Optional[int] = ...) -> None: ...

class GetLocalStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetLocalStatusResponse(_message.Message):
    __slots__ = ("node_id", "replicas")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaStatus]
    def __init__(self, node_id: _Optional[str] = ..., replicas: _Optional[_Iterable[_Union[ReplicaStatus, _Mapping]]] = ...) -> None: ...

class RunningItem(_message.Message):
    __slots__ = ("workflow_id", "run_id", "task_key", "attempt")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_KEY_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    run_id: str
    task_key: str
    attempt: int
    def __init__(self, workflow_id: _Optional[str] = ..., run_id: _Optional[str] = ..., task_key: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...

class SupervisorHello(_message.Message):
    __slots__ = ("supervisor_id", "build_id", "workflow_types", "task_types", "slots", "shard", "running", "upgradable_workflow_types")
    SUPERVISOR_ID_FIELD_NUMBER: _ClassVar[int]
    BUILD_ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_TYPES_FIELD_NUMBER: _ClassVar[int]
    TASK_TYPES_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    UPGRADABLE_WORKFLOW_TYPES_FIELD_NUMBER: _ClassVar[int]
    supervisor_id: str
    build_id: str
    workflow_types: _containers.RepeatedScalarFieldContainer[str]
    task_types: _containers.RepeatedScalarFieldContainer[str]
    slots: int
    shard: int
    running: _containers.RepeatedCompositeFieldContainer[RunningItem]
    upgradable_workflow_types: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, supervisor_id: _Optional[str] = ..., build_id: _Optional[str] = ..., workflow_types: _Optional[_Iterable[str]] = ..., task_types: _Optional[_Iterable[str]] = ..., slots: _Optional[int] = ..., shard: _Optional[int] = ..., running: _Optional[_Iterable[_Union[RunningItem, _Mapping]]] = ..., upgradable_workflow_types: _Optional[_Iterable[str]] = ...) -> None: ...

class Credit(_message.Message):
    __slots__ = ("slots",)
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    slots: int
    def __init__(self, slots: _Optional[int] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("sent_ms", "tasks")
    SENT_MS_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    sent_ms: int
    tasks: _containers.RepeatedCompositeFieldContainer[TaskHeartbeat]
    def __init__(self, sent_ms: _Optional[int] = ..., tasks: _Optional[_Iterable[_Union[TaskHeartbeat, _Mapping]]] = ...) -> None: ...

class TaskHeartbeat(_message.Message):
    __slots__ = ("workflow_id", "task_key", "attempt", "details", "run_id")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_KEY_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    task_key: str
    attempt: int
    details: bytes
    run_id: str
    def __init__(self, workflow_id: _Optional[str] = ..., task_key: _Optional[str] = ..., attempt: _Optional[int] = ..., details: _Optional[bytes] = ..., run_id: _Optional[str] = ...) -> None: ...

class Completion(_message.Message):
    __slots__ = ("request_id", "workflow_id", "run_id", "task_key", "attempt", "result", "failure", "workflow_commands", "then_workflow_task")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_KEY_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_COMMANDS_FIELD_NUMBER: _ClassVar[int]
    THEN_WORKFLOW_TASK_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    workflow_id: str
    run_id: str
    task_key: str
    attempt: int
    result: bytes
    failure: Failure
    workflow_commands: bytes
    then_workflow_task: ChainedWorkflowTask
    def __init__(self, request_id: _Optional[str] = ..., workflow_id: _Optional[str] = ..., run_id: _Optional[str] = ..., task_key: _Optional[str] = ..., attempt: _Optional[int] = ..., result: _Optional[bytes] = ..., failure: _Optional[_Union[Failure, _Mapping]] = ..., workflow_commands: _Optional[bytes] = ..., then_workflow_task: _Optional[_Union[ChainedWorkflowTask, _Mapping]] = ...) -> None: ...

class ChainedWorkflowTask(_message.Message):
    __slots__ = ("seen_event_id", "completed_time_ms", "workflow_commands", "workflow_attempt")
    SEEN_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_COMMANDS_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    seen_event_id: int
    completed_time_ms: int
    workflow_commands: bytes
    workflow_attempt: int
    def __init__(self, seen_event_id: _Optional[int] = ..., completed_time_ms: _Optional[int] = ..., workflow_commands: _Optional[bytes] = ..., workflow_attempt: _Optional[int] = ...) -> None: ...

class Failure(_message.Message):
    __slots__ = ("message", "error_type", "stack", "non_retryable")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_TYPE_FIELD_NUMBER: _ClassVar[int]
    STACK_FIELD_NUMBER: _ClassVar[int]
    NON_RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    message: str
    error_type: str
    stack: str
    non_retryable: bool
    def __init__(self, message: _Optional[str] = ..., error_type: _Optional[str] = ..., stack: _Optional[str] = ..., non_retryable: _Optional[bool] = ...) -> None: ...

class CompletionBatch(_message.Message):
    __slots__ = ("completions", "slots")
    COMPLETIONS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    completions: _containers.RepeatedCompositeFieldContainer[Completion]
    slots: int
    def __init__(self, completions: _Optional[_Iterable[_Union[Completion, _Mapping]]] = ..., slots: _Optional[int] = ...) -> None: ...

class SupervisorMessage(_message.Message):
    __slots__ = ("hello", "credit", "heartbeat", "completions")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    COMPLETIONS_FIELD_NUMBER: _ClassVar[int]
    hello: SupervisorHello
    credit: Credit
    heartbeat: Heartbeat
    completions: CompletionBatch
    def __init__(self, hello: _Optional[_Union[SupervisorHello, _Mapping]] = ..., credit: _Optional[_Union[Credit, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., completions: _Optional[_Union[CompletionBatch, _Mapping]] = ...) -> None: ...

class Dispatch(_message.Message):
    __slots__ = ("workflow_id", "run_id", "task_key", "type_name", "attempt", "lease_deadline_ms", "input", "history", "workflow_attempt", "start_time_ms", "idempotency_key", "heartbeat_details", "start_to_close_timeout_ms", "history_after_event_id", "heartbeat_timeout_ms")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_KEY_FIELD_NUMBER: _ClassVar[int]
    TYPE_NAME_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    LEASE_DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    START_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_DETAILS_FIELD_NUMBER: _ClassVar[int]
    START_TO_CLOSE_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_AFTER_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    run_id: str
    task_key: str
    type_name: str
    attempt: int
    lease_deadline_ms: int
    input: bytes
    history: bytes
    workflow_attempt: int
    start_time_ms: int
    idempotency_key: str
    heartbeat_details: bytes
    start_to_close_timeout_ms: int
    history_after_event_id: int
    heartbeat_timeout_ms: int
    def __init__(self, workflow_id: _Optional[str] = ..., run_id: _Optional[str] = ..., task_key: _Optional[str] = ..., type_name: _Optional[str] = ..., attempt: _Optional[int] = ..., lease_deadline_ms: _Optional[int] = ..., input: _Optional[bytes] = ..., history: _Optional[bytes] = ..., workflow_attempt: _Optional[int] = ..., start_time_ms: _Optional[int] = ..., idempotency_key: _Optional[str] = ..., heartbeat_details: _Optional[bytes] = ..., start_to_close_timeout_ms: _Optional[int] = ..., history_after_event_id: _Optional[int] = ..., heartbeat_timeout_ms: _Optional[int] = ...) -> None: ...

class Dispatches(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Dispatch]
    def __init__(self, items: _Optional[_Iterable[_Union[Dispatch, _Mapping]]] = ...) -> None: ...

class Rejection(_message.Message):
    __slots__ = ("request_id", "reason")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    reason: str
    def __init__(self, request_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CompletionAcks(_message.Message):
    __slots__ = ("request_ids", "rejected")
    REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    request_ids: _containers.RepeatedScalarFieldContainer[str]
    rejected: _containers.RepeatedCompositeFieldContainer[Rejection]
    def __init__(self, request_ids: _Optional[_Iterable[str]] = ..., rejected: _Optional[_Iterable[_Union[Rejection, _Mapping]]] = ...) -> None: ...

class SessionAccepted(_message.Message):
    __slots__ = ("lease_ms", "payload_bytes_max")
    LEASE_MS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_MAX_FIELD_NUMBER: _ClassVar[int]
    lease_ms: int
    payload_bytes_max: int
    def __init__(self, lease_ms: _Optional[int] = ..., payload_bytes_max: _Optional[int] = ...) -> None: ...

class FlowMessage(_message.Message):
    __slots__ = ("dispatches", "acks", "not_leader_hint", "accepted", "cancel")
    DISPATCHES_FIELD_NUMBER: _ClassVar[int]
    ACKS_FIELD_NUMBER: _ClassVar[int]
    NOT_LEADER_HINT_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    dispatches: Dispatches
    acks: CompletionAcks
    not_leader_hint: str
    accepted: SessionAccepted
    cancel: RunningItems
    def __init__(self, dispatches: _Optional[_Union[Dispatches, _Mapping]] = ..., acks: _Optional[_Union[CompletionAcks, _Mapping]] = ..., not_leader_hint: _Optional[str] = ..., accepted: _Optional[_Union[SessionAccepted, _Mapping]] = ..., cancel: _Optional[_Union[RunningItems, _Mapping]] = ...) -> None: ...

class RunningItems(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[RunningItem]
    def __init__(self, items: _Optional[_Iterable[_Union[RunningItem, _Mapping]]] = ...) -> None: ...
