"""Your first Coda workflow (the README's quick start): make a greeting, wait a second on
a durable timer, deliver it, and record that it was sent.

Run it under a supervisor (`coda supervisor run examples.hello`) and start it with
`coda workflow start hello --args '{"name": "Ada"}'`. Kill anything mid-way (the worker,
the supervisor, a Flow node): the run finishes, and a task whose result was recorded is
not run again.
"""

import coda


@coda.task(name="make_greeting")
def make_greeting(name):
    return f"Hello, {name}!"


@coda.task(name="deliver", retry=coda.RetryPolicy(maximum_attempts=5))
async def deliver(text):
    # A real task sends the email, writes the row or calls the API here; on a retry it
    # gets the same coda.context.idempotency_key() to pass along.
    return len(text)


@coda.workflow(name="hello")
async def hello(name):
    text = await coda.context.spawn_task(make_greeting, args={"name": name})
    await coda.context.sleep(1)  # a durable timer: no process waits meanwhile
    chars = await coda.context.spawn_task(deliver, args={"text": text})
    coda.context.set_state("delivered", True)  # readable with `coda workflow state`
    return {"greeting": text, "chars": chars}
