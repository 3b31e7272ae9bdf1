"""The Coda README's example: normalize an event, then store it; both tasks keyed by the
event id, so a retry or a replay never runs them twice for the same event."""

import coda


@coda.task(name="normalize", retry=coda.RetryPolicy(maximum_attempts=5), start_to_close_timeout=30)
async def normalize_event(project_id, event_data):
    return {"project_id": project_id, **{k.lower(): v for k, v in event_data.items()}}


@coda.task(name="store_event", retry=coda.RetryPolicy(maximum_attempts=5))
def store_event(event):
    # A real one writes to a database, passing coda's idempotency key along.
    return f"stored {event['event_id']}"


@coda.workflow(name="process_event")
async def process_event(project_id, event_data):
    data = await coda.context.spawn_task(normalize_event,
                                         args={"project_id": project_id, "event_data": event_data},
                                         cache_key=[event_data["event_id"]])
    receipt = await coda.context.spawn_task(store_event, args={"event": data},
                                            cache_key=[event_data["event_id"]])
    return {"event": data, "receipt": receipt}
