"""The vision's weekly email: fetch every organisation, send each its email in parallel,
and fail now and then (a random 1/0). The workflow is retried by replay: emails already
sent are not sent again."""

import coda

ORGS = ["acme", "globex", "initech", "umbrella"]


@coda.task(name="get_all_orgs")
def get_all_orgs():
    return list(ORGS)


@coda.task(name="send_weekly_email", retry=coda.RetryPolicy(maximum_attempts=3))
async def send_weekly_email(org):
    return f"sent to {org}"


@coda.workflow(name="weekly_email", retry=coda.RetryPolicy(maximum_attempts=20, initial_interval=0.1))
async def weekly_email(failure_rate: float = 0.5):
    orgs = await coda.context.spawn_task(get_all_orgs, cache_key=["orgs"])
    sent = await coda.context.await_all([
        coda.context.spawn_task(send_weekly_email, args={"org": org}, cache_key=[org])
        for org in orgs])
    if coda.context.random() < failure_rate:
        1 / 0  # the seed's transient bug: this attempt fails, the next replays
    return sent
