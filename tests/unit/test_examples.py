"""The examples/ workflows run to completion in-process (coda.testing.run_locally), with
the counts of task executions that prove replay: the weekly email's random 1/0 retries the
workflow, and no email is sent twice."""

import asyncio
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import coda  # noqa: E402
from examples import process_event, saga, weekly_email  # noqa: E402


def run(fn, args, **kwargs):
    return asyncio.run(coda.testing.run_locally(fn, args, **kwargs))


def test_process_event_runs_each_task_once():
    local = run(process_event.process_event,
                {"project_id": "p1", "event_data": {"event_id": "e-1", "Kind": "click"}})
    assert local.result == {"event": {"project_id": "p1", "event_id": "e-1", "kind": "click"},
                            "receipt": "stored e-1"}
    assert local.task_runs == {"normalize": 1, "store_event": 1}
    assert local.attempts == 1


def test_weekly_email_is_retried_by_replay_without_sending_twice():
    attempts = []
    for n in range(12):
        local = run(weekly_email.weekly_email, {"failure_rate": 0.5}, workflow_id=f"weekly-{n}")
        assert local.result == [f"sent to {org}" for org in weekly_email.ORGS]
        # However many attempts it took, every task ran exactly once.
        assert local.task_runs == {"get_all_orgs": 1, "send_weekly_email": len(weekly_email.ORGS)}
        attempts.append(local.attempts)
    assert max(attempts) > 1, f"no run hit the 1/0 (attempts {attempts}): the test proves nothing"


def test_weekly_email_gives_up_after_its_retry_policy():
    with pytest.raises(coda.testing.WorkflowFailedError, match="ZeroDivisionError") as info:
        run(weekly_email.weekly_email, {"failure_rate": 1.0})
    assert info.value.details["attempts"] == 20


def test_saga_books_or_compensates_in_reverse_order():
    booked = run(saga.book_trip, {"trip": "rome"})
    assert booked.result == {"booked": ["flight-rome", "hotel-rome", "car-rome"]}
    failed = run(saga.book_trip, {"trip": "peak-paris"})
    assert failed.result == {"failed": "SoldOut",
                             "compensated": ["cancelled hotel-peak-paris", "cancelled flight-peak-paris"]}
    assert failed.task_runs["book_car"] == 1, "SoldOut is non-retryable"


def test_hello_sleeps_on_a_skipped_durable_timer():
    from examples import hello
    done = run(hello.hello, {"name": "Ada"}, start_time_ms=5_000)
    assert done.result == {"greeting": "Hello, Ada!", "chars": 11}
    assert [e["type"] for e in done.history] == [
        "TaskScheduled", "TaskCompleted", "TimerStarted", "TimerFired", "TaskScheduled",
        "TaskCompleted", "StateSet"]
    fired = next(e for e in done.history if e["type"] == "TimerFired")
    assert fired["time_ms"] == 6_000  # the clock skipped the one-second sleep
    assert done.state == {"delivered": True}
    assert done.task_runs == {"make_greeting": 1, "deliver": 1}


@coda.workflow(name="t_clock")
async def t_clock():
    began = coda.context.now()
    short = coda.context.sleep(2)
    long_ = coda.context.sleep(30)
    await short
    after_short = (coda.context.now() - began).total_seconds()
    await long_
    try:
        await coda.context.wait_signal("never", timeout=60)
        got = "signal"
    except TimeoutError:
        got = "timeout"
    return [after_short, (coda.context.now() - began).total_seconds(), got]


def test_timers_fire_soonest_first_and_move_now():
    assert run(t_clock, {}).result == [2.0, 90.0, "timeout"]
