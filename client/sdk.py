"""Declaring workflows and tasks: `@coda.workflow`, `@coda.task`, `coda.RetryPolicy`.

A decorator leaves the function callable as before and attaches its definition
(`fn.__coda_definition__`); a worker builds its registry from a module's definitions.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field

from coda.errors import InvalidArgument
from coda.flow import validate


@dataclass(frozen=True)
class RetryPolicy:
    """When a failed task or workflow is tried again (the names and defaults of DESIGN.md).

    initial_interval: seconds before the first retry; backoff_coefficient: growth per
    retry; maximum_interval: cap on the delay (default 100 x initial_interval);
    maximum_attempts: 0 means unlimited; non_retryable_errors: exception type names that
    end the retries at once.
    """
    initial_interval: float = 1.0
    backoff_coefficient: float = 2.0
    maximum_interval: float | None = None
    maximum_attempts: int = 0
    non_retryable_errors: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self):
        if not _positive(self.initial_interval):
            raise InvalidArgument("RetryPolicy.initial_interval must be a positive number of "
                                  f"seconds, got {self.initial_interval!r}", field="initial_interval")
        if not _number(self.backoff_coefficient) or self.backoff_coefficient < 1:
            raise InvalidArgument("RetryPolicy.backoff_coefficient must be >= 1, got "
                                  f"{self.backoff_coefficient!r}", field="backoff_coefficient")
        if self.maximum_interval is not None and (
                not _positive(self.maximum_interval) or self.maximum_interval < self.initial_interval):
            raise InvalidArgument("RetryPolicy.maximum_interval must be >= initial_interval, got "
                                  f"{self.maximum_interval!r}", field="maximum_interval")
        if not isinstance(self.maximum_attempts, int) or isinstance(self.maximum_attempts, bool) \
                or self.maximum_attempts < 0:
            raise InvalidArgument("RetryPolicy.maximum_attempts must be an integer >= 0 "
                                  f"(0 = unlimited), got {self.maximum_attempts!r}",
                                  field="maximum_attempts")
        names = tuple(self.non_retryable_errors)
        if not all(isinstance(n, str) and n for n in names):
            raise InvalidArgument("RetryPolicy.non_retryable_errors must be exception type names",
                                  field="non_retryable_errors")
        object.__setattr__(self, "non_retryable_errors", names)

    @property
    def maximum_interval_s(self) -> float:
        return self.maximum_interval if self.maximum_interval is not None else 100 * self.initial_interval

    def delay_s(self, attempt: int) -> float:
        """Seconds to wait after failed attempt `attempt` (1-based) before the next one."""
        assert attempt >= 1
        delay = self.initial_interval * self.backoff_coefficient ** (attempt - 1)
        return min(delay, self.maximum_interval_s)

    def retries_after(self, attempt: int, error_type: str) -> bool:
        """Whether failed attempt `attempt` is followed by another."""
        if error_type in self.non_retryable_errors:
            return False
        return self.maximum_attempts == 0 or attempt < self.maximum_attempts

    def to_wire(self) -> dict:
        return {"initial_interval": self.initial_interval,
                "backoff_coefficient": self.backoff_coefficient,
                "maximum_interval": self.maximum_interval_s,
                "maximum_attempts": self.maximum_attempts,
                "non_retryable_errors": list(self.non_retryable_errors)}


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive(value) -> bool:
    return _number(value) and value > 0


@dataclass(frozen=True)
class TaskDefinition:
    name: str
    fn: object
    retry: RetryPolicy
    start_to_close_timeout_s: float | None
    schedule_to_start_timeout_s: float | None
    heartbeat_timeout_s: float | None

    @functools.cached_property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)


@dataclass(frozen=True)
class WorkflowDefinition:
    name: str
    fn: object
    retry: RetryPolicy
    execution_timeout_s: float | None
    versioning: str = "pinned"


# How a workflow type's runs meet new code (docs/long-lived-workflows.md): "pinned" runs
# stay on the build they started on; "auto_upgrade" runs are taken by any build that
# declares the type (guard changes with coda.context.patched).
VERSIONING = ("pinned", "auto_upgrade")


DEFINITION_ATTR = "__coda_definition__"


def _timeout(value, field_name: str) -> float | None:
    if value is None:
        return None
    if not _positive(value):
        raise InvalidArgument(f"{field_name} must be a positive number of seconds, got {value!r}",
                              field=field_name)
    return float(value)


def task(name: str | None = None, *, retry: RetryPolicy | None = None,
         start_to_close_timeout: float | None = None,
         schedule_to_start_timeout: float | None = None,
         heartbeat_timeout: float | None = None):
    """Declare a task: a sync or async function run by workers, retried under `retry`."""
    def decorate(fn):
        task_name = validate.type_name(name or fn.__name__, "task name")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise InvalidArgument("retry must be a coda.RetryPolicy", field="retry")
        setattr(fn, DEFINITION_ATTR, TaskDefinition(
            task_name, fn, retry or RetryPolicy(),
            _timeout(start_to_close_timeout, "start_to_close_timeout"),
            _timeout(schedule_to_start_timeout, "schedule_to_start_timeout"),
            _timeout(heartbeat_timeout, "heartbeat_timeout")))
        return fn
    return decorate


def workflow(name: str | None = None, *, retry: RetryPolicy | None = None,
             execution_timeout: float | None = None, versioning: str = "pinned"):
    """Declare a workflow: an `async def` whose awaits go through `coda.context`.
    versioning: "pinned" (default; a run stays on the build it started on) or
    "auto_upgrade" (any build that declares the type runs it; guard changes with
    coda.context.patched)."""
    if versioning not in VERSIONING:
        raise InvalidArgument(f"versioning must be one of {', '.join(VERSIONING)}, got "
                              f"{versioning!r}", field="versioning")
    def decorate(fn):
        if not inspect.iscoroutinefunction(fn):
            raise InvalidArgument(f"workflow {fn.__name__} must be an async function",
                                  field="workflow")
        workflow_name = validate.type_name(name or fn.__name__, "workflow name")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise InvalidArgument("retry must be a coda.RetryPolicy", field="retry")
        setattr(fn, DEFINITION_ATTR, WorkflowDefinition(
            workflow_name, fn, retry or RetryPolicy(),
            _timeout(execution_timeout, "execution_timeout"), versioning))
        return fn
    return decorate


def definition_of(fn_or_name):
    """The TaskDefinition/WorkflowDefinition of a decorated function (None for a name)."""
    return getattr(fn_or_name, DEFINITION_ATTR, None)

